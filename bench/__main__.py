"""``python -m bench [--smoke] [--cases a,b] [--repeats N] [--threads N] [--out DIR]``: run the benchmark
cases side by side with their baselines and write results.json and results.md."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from bench import data_check, ensemble, gpu, loading, map_store, prediction, report, rle, training
from bench.harness import Case, Settings
from carvana.workers import available_cpus

CASES: dict[str, Callable[[Settings], Case]] = {
    "training": training.run,
    "loading": loading.run,
    "prediction": prediction.run,
    "rle": rle.run,
    "map_store": map_store.run,
    "ensemble": ensemble.run,
    "gpu": gpu.run,
    "data_check": data_check.run,
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks, not timings")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--repeats", type=int, help="timed runs of each variant (default 3; 1 with --smoke)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads; 0 = the CPUs other jobs leave idle (at least 1)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for results.json/.md (default bench/; a new temp folder with --smoke)",
    )
    args = parser.parse_args(argv)
    args.cases = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case {', '.join(unknown)}; cases are {', '.join(CASES)}")
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 3
    if args.repeats < 1 or args.threads < 0:
        parser.error("--repeats must be >= 1 and --threads >= 0")
    if args.out is None:
        args.out = (
            Path(tempfile.mkdtemp(prefix="carvana-bench-smoke-")) if args.smoke else Path(__file__).parent
        )
    return args


def idle_cpus() -> int:
    """CPUs of this process's allocation, at most the machine's not busy with other jobs. On an oversubscribed
    machine every extra OpenMP thread makes each parallel region wait for a descheduled peer: with a load of 7
    on 2 CPUs a training step took 4x longer with 2 threads than with 1."""
    machine = os.cpu_count() or 1
    return max(1, min(available_cpus(), machine - round(os.getloadavg()[0])))


def quiet() -> None:
    """Lightning's banners and hints would bury the figures."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning|lightning|torch.utils.data")


def summary(case: Case) -> str:
    """One console line per case."""
    if case.skipped:
        return case.skipped
    parts = []
    for c in case.comparisons:
        goal = f", goal {c.goal_op} {c.goal:g}: {'met' if c.met else 'NOT MET'}" if c.goal is not None else ""
        parts.append(f"{c.label}: {c.ratio:.3f}{goal}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    quiet()
    torch.set_num_threads(args.threads or idle_cpus())
    info = {**report.machine(), "smoke": args.smoke, "argv": "".join(f" {a}" for a in argv)}
    start = time.perf_counter()
    cases = []
    with tempfile.TemporaryDirectory(prefix="carvana-bench-") as scratch:
        for name in args.cases:
            settings = Settings(args.smoke, args.repeats, Path(scratch) / name)
            settings.scratch.mkdir()
            began = time.perf_counter()
            case = CASES[name](settings)
            case.seconds = time.perf_counter() - began
            cases.append(case)
            print(f"{name} [{case.seconds:.0f} s]: {summary(case)}", flush=True)
    info["load_end"] = [round(x, 2) for x in os.getloadavg()]
    info["seconds"] = time.perf_counter() - start
    json_path, md_path = report.write(args.out, cases, info)
    print(f"results: {json_path} {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
