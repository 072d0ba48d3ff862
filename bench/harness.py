"""Timing and result records shared by the cases.

The machine is shared, so no single timing means much: every variant of a case runs ``repeats`` times, in
an order that rotates each repeat (A B C, B C A, ...), after one untimed warm-up run; a figure is the
median of its runs and a ratio the median of the per-repeat ratios, so that a burst of load hits both sides.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal


@dataclass(frozen=True)
class Settings:
    """What every case gets: smoke mode (seconds, correctness only), repeats, and a scratch folder."""

    smoke: bool
    repeats: int
    scratch: Path

    @property
    def warmup(self) -> bool:
        """Smoke runs skip the untimed warm-up run: their timings are not read anyway."""
        return not self.smoke


@dataclass
class Comparison:
    """One project figure against one baseline figure; ``ratio`` is project / baseline (median of pairs)."""

    label: str
    unit: str
    project: float
    baseline: float
    baseline_name: str
    ratio: float
    goal: float | None = None
    goal_op: Literal[">=", "<="] = ">="
    runs: dict[str, list[float]] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.goal is None:
            return None
        return self.ratio >= self.goal if self.goal_op == ">=" else self.ratio <= self.goal

    def to_dict(self) -> dict:
        return {**asdict(self), "met": self.met}


@dataclass
class Case:
    """A benchmark case: its comparisons (the first is the headline), correctness checks, and notes."""

    name: str
    title: str
    comparisons: list[Comparison] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    setup: dict[str, object] = field(default_factory=dict)
    skipped: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        head = self.comparisons[0] if self.comparisons else None
        return {
            "name": self.name,
            "title": self.title,
            "status": "skipped" if self.skipped else "ok",
            "reason": self.skipped,
            "project": head.project if head else None,
            "baseline": head.baseline if head else None,
            "ratio": head.ratio if head else None,
            "goal": f"{head.goal_op} {head.goal}" if head and head.goal is not None else None,
            "met": head.met if head else None,
            "comparisons": [c.to_dict() for c in self.comparisons],
            "checks": self.checks,
            "notes": self.notes,
            "setup": self.setup,
            "seconds": round(self.seconds, 1),
        }


def interleave(variants: Mapping[str, Callable[[], float]], settings: Settings) -> dict[str, list[float]]:
    """Run each variant (it returns its own figure, e.g. images/s) once untimed, then ``repeats`` times in
    a rotating order; returns every variant's figures in repeat order."""
    names = list(variants)
    if settings.warmup:
        for name in names:
            variants[name]()
    runs: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(settings.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            runs[name].append(variants[name]())
    return runs


def compare(
    label: str,
    unit: str,
    runs: Mapping[str, list[float]],
    project: str,
    baseline: str,
    goal: float | None = None,
    goal_op: Literal[">=", "<="] = ">=",
) -> Comparison:
    """The Comparison of two variants of ``interleave``'s result."""
    mine, theirs = runs[project], runs[baseline]
    return Comparison(
        label=label,
        unit=unit,
        project=statistics.median(mine),
        baseline=statistics.median(theirs),
        baseline_name=baseline,
        ratio=statistics.median(a / b for a, b in zip(mine, theirs, strict=True)),
        goal=goal,
        goal_op=goal_op,
        runs={project: mine, baseline: theirs},
    )


def rate(count: int, fn: Callable[[], object]) -> float:
    """``count`` units divided by the wall time of ``fn()``: units per second."""
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)
