"""The benchmark harness: ``python -m bench --smoke`` runs every case and its outputs agree with the
baselines'. Correctness only: smoke timings are not asserted."""

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from bench import gpu, harness
from bench.__main__ import CASES
from bench.training import InMemory
from tests.conftest import REPO

COMPARISON_FIELDS = {
    "label",
    "unit",
    "project",
    "baseline",
    "baseline_name",
    "ratio",
    "goal",
    "goal_op",
    "met",
}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str]:
    """results.json and results.md of one smoke run, written to a temp folder."""
    out = tmp_path_factory.mktemp("bench")
    committed = REPO / "bench" / "results.json"
    before = committed.stat().st_mtime_ns if committed.exists() else None
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    after = committed.stat().st_mtime_ns if committed.exists() else None
    assert before == after, "a smoke run must not overwrite bench/results.json"
    return json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


def test_every_case_reports_project_baseline_and_ratio(smoke):
    results, markdown = smoke
    assert set(results["cases"]) == set(CASES)
    assert results["machine"]["smoke"] is True and results["machine"]["cpu"]
    for name, case in results["cases"].items():
        assert name in markdown
        if case["status"] == "skipped":
            assert case["reason"] and case["project"] is None
            continue
        assert case["comparisons"], name
        head = case["comparisons"][0]
        assert (case["project"], case["baseline"], case["ratio"]) == (
            head["project"],
            head["baseline"],
            head["ratio"],
        )
        for comparison in case["comparisons"]:
            assert set(comparison) >= COMPARISON_FIELDS, (name, comparison)
            assert comparison["project"] > 0 and comparison["baseline"] > 0
            # one repeat: the median of the paired ratios is the ratio of the figures
            assert comparison["ratio"] == pytest.approx(comparison["project"] / comparison["baseline"])
            assert comparison["met"] in (True, False, None)


def test_gpu_case_is_skipped_with_a_reason_without_cuda(smoke):
    case = smoke[0]["cases"]["gpu"]
    if torch.cuda.is_available():
        assert case["status"] == "ok"
    else:
        assert case["status"] == "skipped" and case["reason"].startswith("not run: no GPU")


@pytest.mark.parametrize(
    ("case", "checks"),
    [
        ("training", {"same_losses"}),
        ("loading", {"images_equal_flip0", "masks_equal_flip0", "images_equal_flip1", "masks_equal_flip1"}),
        ("prediction", {"tta_equals_ttach", "maps_equal_ttach"}),
        ("rle", {"identical_strings"}),
        ("map_store", {"lossless"}),
        ("ensemble", {"zst_rows_equal_reference", "png_rows_equal_reference"}),
        ("data_check", {"no_problems_on_real_files", "one_problem_naming_truncated_jpeg"}),
    ],
)
def test_outputs_agree_with_the_baselines(smoke, case, checks):
    """Identical RLE strings and submission rows, TTA maps equal to ttach's, dataset tensors equal to the
    PIL + albumentations pipeline's, the same losses from Lightning and the plain loop."""
    assert smoke[0]["cases"][case]["checks"] == dict.fromkeys(checks, True)


def test_interleave_rotates_the_order_after_a_warm_up(tmp_path):
    calls = []
    variants = {name: (lambda name=name: calls.append(name) or 1.0) for name in "abc"}
    runs = harness.interleave(variants, harness.Settings(smoke=False, repeats=3, scratch=tmp_path))
    assert "".join(calls) == "abc" + "abc" + "bca" + "cab"
    assert runs == {name: [1.0] * 3 for name in "abc"}


def test_gpu_measurement_runs_on_the_cpu():
    """The GPU case's code path (bf16-mixed, channels_last, Lightning) at a tiny size on the CPU."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3, padding=1))
    loader = DataLoader(InMemory((32, 64), 2, 4), batch_size=2)
    speed, peak = gpu.measure(net, loader, "cpu", "bf16-mixed", True, warmup=1)
    assert speed > 0 and peak is None


@pytest.mark.slow  # ~65 s on a 2-core EPYC: two trainings, two scorings, the recipe through train.py
def test_quality_smoke_trains_both_on_the_same_real_cars(tmp_path, shared_small512):
    """``bench.quality`` for 6 s each on 10 real cars (the step timing left out): both scored on the same
    fold-0 cars by one scorer."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.quality", "--minutes", "0.1", "--cars", "10", "--root",
         str(shared_small512), "--out", str(tmp_path), "--step-repeats", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "quality.json").read_text())
    assert data["train_images"] + data["val_images"] == 10 * 16 and data["val_images"] > 0
    assert 0 <= data["plain"]["dice"] <= 1 and 0 <= data["recipe"]["dice"] <= 1
    assert data["difference"] == pytest.approx(data["recipe"]["dice"] - data["plain"]["dice"])
    assert data["plain"]["steps"] > 0 and data["recipe"]["steps"] > 0
    assert "plain loop" in (tmp_path / "quality.md").read_text()
