"""The probability-map store: .zst and PNG folders of the same maps read the same through every reader,
damaged files are one error naming them, and folders mixing formats are read as their manifest says."""

import json
import subprocess
import sys
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import zstandard

from carvana import runs
from carvana.data import datasets
from carvana.data.kaggle import MASKS_DIR, Sample, image_path, mask_path, read_mask
from carvana.errors import CarvanaError
from carvana.evaluate.gallery import gallery
from carvana.predict.export import export_png
from carvana.submit import ensemble, postprocess, pseudo, submission
from tests.conftest import REPO

SHAPE = (40, 60)
IDS = [f"0a1b2c3d4e5f_{angle:02d}" for angle in range(1, 6)]
FORMATS = list(runs.MAP_FORMATS)


def maps(seed: int) -> dict[str, np.ndarray]:
    """Soft, car-like maps: a confident block on a confident background with a ramp between, and noise."""
    rng = np.random.default_rng(seed)
    out = {}
    for n, image_id in enumerate(IDS):
        prob = np.full(SHAPE, 3, np.uint8)
        prob[8 + n : 32, 10:50] = 250
        prob[8 + n, 10:50] = np.linspace(0, 255, 40).astype(np.uint8)  # every kind of value at the edge
        noise = rng.integers(0, 3, SHAPE, dtype=np.uint8)
        out[image_id] = prob - np.minimum(prob, noise)
    return out


def folder_of(path: Path, probs: dict[str, np.ndarray], fmt: str, manifest: bool = True) -> Path:
    for image_id, prob in probs.items():
        runs.write_map(path, image_id, prob, fmt)
    if manifest:
        samples = [Sample(image_id, Path(f"{image_id}.jpg")) for image_id in probs]
        assert runs.write_manifest(path, samples, {"stage": "test"}, fmt)
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Two models' maps in both formats, and a Kaggle-layout folder of their images and masks."""
    root = tmp_path_factory.mktemp("store")
    data = root / "data"
    rng = np.random.default_rng(9)
    for n, image_id in enumerate(IDS):
        for folder in ("train", "test"):
            jpeg = image_path(data / folder, image_id)
            jpeg.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(jpeg), rng.integers(0, 256, (*SHAPE, 3), dtype=np.uint8))
        truth = np.zeros(SHAPE, bool)
        truth[9 + n : 32, 11:50] = True
        gif = mask_path(data / MASKS_DIR, image_id)
        gif.parent.mkdir(parents=True, exist_ok=True)
        gif.write_bytes(pseudo.mask_gif(truth))
    (data / "sample_submission.csv").write_text(
        "img,rle_mask\n" + "".join(f"{i}.jpg,1 1\n" for i in IDS[::-1])
    )
    models = [maps(0), maps(1)]
    folders = {
        fmt: [folder_of(root / f"{fmt}{k}", probs, fmt) for k, probs in enumerate(models)] for fmt in FORMATS
    }
    return {"root": root, "data": data, "models": models, "folders": folders}


def test_map_round_trip_is_lossless(tmp_path):
    prob = maps(0)[IDS[0]]
    for fmt in FORMATS:
        path = runs.write_map(tmp_path, "a", prob, fmt)
        assert path.suffix == runs.MAP_FORMATS[fmt]
        np.testing.assert_array_equal(runs.read_map(path), prob)
        assert runs.map_size(path) == SHAPE
        assert runs.read_map(path).flags.writeable
    # Any zstd reader gets the raw bytes of a .zst: its header is a skippable frame, which zstd passes over.
    zst = runs.map_path(tmp_path, "a", "zst")
    raw = zstandard.ZstdDecompressor().stream_reader(zst.read_bytes(), read_across_frames=True).read()
    assert raw == prob.tobytes()


def test_read_map_fills_a_buffer_only_where_it_fits(tmp_path):
    prob = maps(0)[IDS[0]]
    zst, png = (runs.write_map(tmp_path, "a", prob, fmt) for fmt in ("zst", "png"))
    fits = np.zeros(SHAPE, np.uint8)
    assert runs.read_map(zst, fits) is fits
    np.testing.assert_array_equal(fits, prob)
    for other in (np.zeros((SHAPE[0] + 1, SHAPE[1]), np.uint8), np.zeros(SHAPE, np.uint16), fits.T, None):
        got = runs.read_map(zst, other)
        assert got is not other
        np.testing.assert_array_equal(got, prob)
    assert runs.read_map(png, fits) is not fits  # a PNG decodes into its own array


def test_every_reader_gives_the_same_result_from_png_and_zst(world, tmp_path):
    data, folders = world["data"], world["folders"]
    results = {}
    for fmt in FORMATS:
        first, second = folders[fmt]
        files = runs.input_maps(first)
        assert list(files) == IDS and {path.suffix for path in files.values()} == {runs.MAP_FORMATS[fmt]}
        out = tmp_path / fmt
        average = ensemble.average([first, second], out / "mean", workers=1)
        csv = submission.write([first, second], data / "sample_submission.csv", out / "sub.csv", workers=1)
        kept = pseudo.select_and_write(first, data / "test", out / "pseudo", max_uncertain=0.2, workers=1)
        samples = [Sample(i, image_path(data / "test", i)) for i in IDS]
        stacked = datasets.StackedDataset(
            samples, datasets.test_maps([first, second], samples), A.Compose([])
        )
        worst, _, _ = gallery(first, data / MASKS_DIR, k=2, out_dir=out / "gallery", workers=1)
        results[fmt] = {
            "read": {i: runs.read_map(path) for i, path in files.items()},
            "mean": {i: runs.read_map(path) for i, path in runs.map_files(average).items()},
            "submission": csv.read_text(),
            "postprocess": postprocess.evaluate(first, data / MASKS_DIR, {}, workers=1),
            "pseudo": (kept, [read_mask(mask_path(out / "pseudo" / MASKS_DIR, i)).tolist() for i in kept]),
            "stacked": [stacked.load_image(i) for i in range(len(samples))],
            "gallery": [(w.image_id, w.dice) for w in worst],
            "export": {
                i: runs.read_map(p) for i, p in runs.map_files(export_png(first, out / "png")).items()
            },
        }
    png, zst = results["png"], results["zst"]
    assert len(zst["pseudo"][0]) == len(IDS) and zst["submission"].count("\n") == len(IDS) + 1
    for name in png:
        if isinstance(png[name], dict):
            assert png[name].keys() == zst[name].keys(), name
            for image_id in png[name]:
                np.testing.assert_array_equal(png[name][image_id], zst[name][image_id], err_msg=name)
        elif name == "stacked":
            for a, b in zip(png[name], zst[name], strict=True):
                np.testing.assert_array_equal(a, b)
        else:
            assert png[name] == zst[name], name
    for image_id, prob in world["models"][0].items():  # and both are the maps that were written
        np.testing.assert_array_equal(zst["read"][image_id], prob)
        np.testing.assert_array_equal(zst["export"][image_id], prob)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("damage", ["truncated", "corrupt", "empty", "not a map"])
def test_damaged_map_is_one_error_naming_it(tmp_path, fmt, damage):
    path = runs.write_map(tmp_path, IDS[0], maps(0)[IDS[0]], fmt)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) - 7]
    elif damage == "corrupt":  # inside the compressed data, past both formats' headers
        data[len(data) // 2 + 10] ^= 0x40
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"GIF89a" + bytes(60))
    path.write_bytes(bytes(data))
    with pytest.raises(CarvanaError, match=str(path)) as error:
        runs.read_map(path)
    assert "\n" not in str(error.value)
    if damage != "corrupt":  # the header and the length, checked before a stage writes anything
        with pytest.raises(CarvanaError, match=str(path)):
            runs.map_size(path)


def test_the_manifest_decides_what_a_mixed_folder_holds(tmp_path):
    probs = maps(0)
    folder = folder_of(tmp_path / "pred", probs, "zst")
    runs.write_map(folder, IDS[0], np.zeros(SHAPE, np.uint8), "png")  # a PNG beside, e.g. by hand
    assert runs.map_files(folder)[IDS[0]].suffix == ".zst" and len(runs.map_files(folder)) == len(IDS)
    np.testing.assert_array_equal(ensemble.combine([runs.map_files(folder)[IDS[0]]], [1.0]), probs[IDS[0]])

    # A folder of an older version: a manifest without a format held PNGs, so its .zst files are not maps.
    old = folder_of(tmp_path / "old", probs, "png")
    manifest = json.loads((old / runs.MANIFEST).read_text())
    del manifest["format"]
    (old / runs.MANIFEST).write_text(json.dumps(manifest))
    runs.write_map(old, "0a1b2c3d4e5f_16", probs[IDS[0]], "zst")
    assert list(runs.map_files(old)) == IDS and runs.folder_format(old) == "png"

    # No manifest (made by hand, or unfinished): both formats are maps, but an id may have only one.
    loose = tmp_path / "loose"
    for n, (image_id, prob) in enumerate(probs.items()):
        runs.write_map(loose, image_id, prob, FORMATS[n % 2])
    assert {path.suffix for path in runs.map_files(loose).values()} == {".zst", ".png"}
    out = ensemble.average([loose, folder], tmp_path / "mean", workers=1)
    for image_id, path in runs.map_files(out).items():
        np.testing.assert_array_equal(runs.read_map(path), probs[image_id])
    assert runs.map_files(loose)[IDS[1]].suffix == ".png"
    runs.write_map(loose, IDS[1], probs[IDS[1]], "zst")
    with pytest.raises(CarvanaError, match=rf"holds {IDS[1]}\.\w+ and {IDS[1]}\.\w+, and no manifest.json"):
        runs.map_files(loose)


def test_a_folder_is_continued_in_its_own_format(tmp_path):
    probs = maps(0)
    folder = folder_of(tmp_path / "pred", dict(list(probs.items())[:2]), "png", manifest=False)
    assert runs.writing_format(folder) == "png"  # resuming a folder of PNGs keeps it all PNG
    assert runs.writing_format(tmp_path / "new") == runs.MAP_FORMAT == "zst"
    assert runs.writing_format(tmp_path / "new", "png") == "png"
    samples = [Sample(image_id, Path(f"{image_id}.jpg")) for image_id in probs]
    assert [s.image_id for s in runs.pending(samples, folder, fmt="png")] == IDS[2:]
    with pytest.raises(CarvanaError, match="unknown map format 'tiff'"):
        runs.writing_format(folder, "tiff")


def test_export_png_cli_and_its_errors(world, tmp_path):
    source = world["folders"]["zst"][0]
    done = subprocess.run(
        [sys.executable, "-m", "carvana", "export-png", str(source), "--out", str(tmp_path / "png")],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pngs = sorted(tmp_path.glob("png/*.png"))
    assert [p.stem for p in pngs] == IDS and all(
        cv2.imread(str(p), cv2.IMREAD_UNCHANGED) is not None for p in pngs
    )
    manifest = json.loads((tmp_path / "png" / runs.MANIFEST).read_text())
    assert manifest["format"] == "png" and manifest["source_manifest"]["stage"] == "test"
    with pytest.raises(CarvanaError, match="another folder"):
        export_png(source, source)
    with pytest.raises(CarvanaError, match="holds zst maps"):
        export_png(source, world["folders"]["zst"][1])
