"""PNG copies of a prediction folder's maps, for people to look at: ``carvana export-png FOLDER``.

Stages write maps as .zst (``carvana.runs``), which image viewers do not open. The export writes
``<folder>_png/<id>.png`` (8-bit greyscale, the same values) in worker processes, each file whole; a rerun
continues where an interrupted one stopped, and ``manifest.json`` comes last, naming the source and its
manifest, so the export is a prediction folder of its own that every stage reads.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

from carvana import runs
from carvana.errors import CarvanaError, check_workers, run_command
from carvana.progress import track
from carvana.workers import imap_unordered

FORMAT = "png"


def _export(job: tuple[str, str], out: str) -> str:
    image_id, path = job
    runs.write_map(out, image_id, runs.read_map(path), FORMAT)
    return image_id


def export_png(folder: str | os.PathLike, out: str | os.PathLike | None = None, workers: int = 0) -> Path:
    """Write every map of ``folder`` as a PNG into ``out`` (default ``<folder>_png``); returns ``out``."""
    folder = Path(folder)
    source = folder.resolve()
    out = Path(out) if out is not None else source.parent / f"{source.name}_{FORMAT}"
    check_workers(workers)
    files = runs.input_maps(folder)
    manifest = runs.finished_manifest(folder, list(files))
    if out.resolve() == folder.resolve():
        raise CarvanaError(f"the export of {folder} must go to another folder (--out)")
    if runs.folder_format(out) not in (None, FORMAT):
        raise CarvanaError(f"{out} holds {runs.folder_format(out)} maps: export to a new folder")
    done = runs.written_ids(out, FORMAT)
    jobs = [(image_id, str(path)) for image_id, path in files.items() if image_id not in done]
    out.mkdir(parents=True, exist_ok=True)
    export = functools.partial(_export, out=str(out))
    for _ in track(imap_unordered(export, jobs, workers), len(jobs), f"export-png {out}"):
        pass
    record = {"stage": "export-png", "source": str(folder.resolve()), "source_manifest": manifest}
    runs.write_json(out / runs.MANIFEST, {**record, "format": FORMAT, "images": len(files)})
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI: ``FOLDER [--out DIR] [--workers N]``; a CarvanaError is one ``error:`` line, exit 2."""
    parser = argparse.ArgumentParser(prog="carvana export-png", description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a prediction folder")
    parser.add_argument("--out", type=Path, help="where the PNGs go (default: <folder>_png)")
    parser.add_argument("--workers", type=int, default=0, help="processes; 0 = one per CPU")
    args = parser.parse_args(argv)

    def action() -> str:
        out = export_png(args.folder, args.out, args.workers)
        return f"{out}: PNG maps of {args.folder} written"

    return run_command(action)


if __name__ == "__main__":
    sys.exit(main())
