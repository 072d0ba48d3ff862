"""results.json and results.md: what ran, on which machine and under what load, and every figure."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import PIL
import pytorch_lightning as pl
import torch

from bench.harness import Case, Comparison
from carvana.files import atomic_write_text


def cpu_model() -> str:
    """The first ``model name`` of /proc/cpuinfo (the processor() of other systems)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, object]:
    """The machine and library versions, plus the load average now (1, 5, 15 minutes)."""
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "pytorch_lightning": pl.__version__,
            "opencv": cv2.__version__,
            "pillow": PIL.__version__,
            "albumentations": A.__version__,
            "numpy": np.__version__,
        },
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }


def _figure(value: float) -> str:
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def _goal(comparison: Comparison) -> str:
    if comparison.goal is None:
        return "-"
    met = "met" if comparison.met else "**not met**"
    return f"{comparison.goal_op} {comparison.goal:g}: {met}"


def _row(case: Case, comparison: Comparison) -> str:
    return (
        f"| {case.name} | {comparison.label} | {_figure(comparison.project)} {comparison.unit} | "
        f"{_figure(comparison.baseline)} {comparison.unit} ({comparison.baseline_name}) | "
        f"{comparison.ratio:.3f} | {_goal(comparison)} |"
    )


def load_line(info: dict) -> str:
    """What else the CPUs were doing: the load average before the first case says whether other jobs ran
    (the benchmark's own processes raise it after that)."""
    others = info["load_start"][0] >= 1
    return (
        ("The CPUs were **shared with other jobs**: " if others else "The CPUs were otherwise idle: ")
        + f"load average {info['load_start']} at the start and {info['load_end']} at the end (1, 5, 15 min), "
        f"{info['seconds']:.0f} s in all."
    )


def markdown(cases: list[Case], info: dict) -> str:
    """The human-readable report: machine and load, one table of every comparison, then each case."""
    lines = [
        "# carvana benchmarks"
        + (" (smoke run: correctness only, timings meaningless)" if info["smoke"] else ""),
        "",
        f"`python -m bench{info['argv']}` on {info['started']}: {info['cpu']}, {info['cpus']} CPUs "
        f"({info['torch_threads']} torch threads), GPU: {info['cuda'] or 'none'}.",
        load_line(info),
        "",
        (
            "One run of each variant, no warm-up. "
            if info["smoke"]
            else "Every variant ran once untimed, then "
        )
        + "the repeats alternated project and baseline runs so that both saw the same load; figures are "
        "medians, and *ratio* is the median of the per-repeat ratios project / baseline (so it can differ a "
        "little from the ratio of the medians).",
        "",
        "| case | comparison | project | baseline | ratio | goal |",
        "|---|---|---|---|---|---|",
    ]
    for case in cases:
        if case.skipped:
            lines.append(f"| {case.name} | {case.title} | not run | | | {case.skipped} |")
        lines += [_row(case, comparison) for comparison in case.comparisons]
    for case in cases:
        lines += ["", f"## {case.name}: {case.title}", ""]
        if case.skipped:
            lines.append(f"{case.skipped[0].upper()}{case.skipped[1:]}.")
        if case.setup:
            lines.append("Setup: " + "; ".join(f"{key} {value}" for key, value in case.setup.items()) + ".")
        if case.checks:
            lines.append(
                "Checks: "
                + ", ".join(f"{k} {'ok' if v else '**FAILED**'}" for k, v in case.checks.items())
                + "."
            )
        lines += [f"- {note}" for note in case.notes]
        for comparison in (c for c in case.comparisons if c.runs):
            runs = "; ".join(
                f"{name}: {', '.join(_figure(v) for v in values)}" for name, values in comparison.runs.items()
            )
            lines.append(f"- runs ({comparison.unit}) {runs}")
    return "\n".join(lines) + "\n"


def write(out_dir: Path, cases: list[Case], info: dict) -> tuple[Path, Path]:
    """results.json and results.md in ``out_dir``, each written whole (temp file, then rename)."""
    data = {"machine": info, "cases": {case.name: case.to_dict() for case in cases}}
    json_path = atomic_write_text(out_dir / "results.json", json.dumps(data, indent=2) + "\n")
    md_path = atomic_write_text(out_dir / "results.md", markdown(cases, info))
    return json_path, md_path
