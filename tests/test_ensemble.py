"""carvana.ensemble on small random prediction folders: mean, weights, vote, missing images, resuming, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from carvana import runs
from carvana.errors import CarvanaError
from carvana.runs import read_map
from carvana.submit.ensemble import average, combined_mask, total
from carvana.workers import imap_unordered
from tests.conftest import REPO

IDS = [f"0a1b2c3d4e5f_{angle:02d}" for angle in range(1, 7)]
SHAPE = (48, 64)


def read(path: Path) -> np.ndarray:
    """A map file (.png or .zst) as written."""
    if path.suffix == ".zst":
        return read_map(path)
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None, path
    return image


@pytest.fixture
def folders(tmp_path) -> list[Path]:
    """Three prediction folders of random maps; every value 0-255, 127 and 128 included, appears."""
    rng = np.random.default_rng(0)
    result = []
    for k in range(3):
        folder = tmp_path / f"model{k}"
        folder.mkdir()
        for image_id in IDS:
            prob = rng.integers(0, 256, SHAPE, dtype=np.uint8)
            prob[0, :] = rng.choice([127, 128], SHAPE[1])  # right at the vote threshold
            assert cv2.imwrite(str(folder / f"{image_id}.png"), prob)
        (folder / "manifest.json").write_text(json.dumps({"model": k}))
        result.append(folder)
    return result


def stack(folders: list[Path], image_id: str) -> np.ndarray:
    return np.stack([read(folder / f"{image_id}.png") for folder in folders]).astype(np.float64)


def test_mean_equals_numpy(folders, tmp_path):
    out = average(folders, tmp_path / "out", workers=1)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{i}.zst" for i in IDS] + ["manifest.json"])
    for image_id in IDS:
        got = read(out / f"{image_id}.zst").astype(np.float64)
        assert np.abs(got - stack(folders, image_id).mean(0)).max() <= 0.5 + 1e-6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"] == [str(f.resolve()) for f in folders]
    assert manifest["weights"] == pytest.approx([1 / 3] * 3) and manifest["vote"] is False
    assert manifest["input_manifests"] == [{"model": 0}, {"model": 1}, {"model": 2}]


def test_equal_weights_round_exact_ties_up(tmp_path):
    """Equal weights sum in integers: a mean of exactly v + 0.5 is always v + 1, as the rule says (float32
    sums of 0.1 rounded 80 of these 255 ties down)."""
    values = np.arange(255, dtype=np.uint8)[None].repeat(4, 0)
    folders = []
    for k in range(10):
        folders.append(tmp_path / f"model{k}")
        folders[-1].mkdir()
        assert cv2.imwrite(str(folders[-1] / f"{IDS[0]}.png"), values if k < 5 else values + 1)
    out = average(folders, tmp_path / "out", workers=1)
    np.testing.assert_array_equal(read(out / f"{IDS[0]}.zst"), values + 1)


@pytest.mark.parametrize("count", [1, 2, 3, 10, 11, 257, 258, 259])
def test_total_is_the_exact_sum_at_every_count(tmp_path, count):
    """Pairs, an odd map left over, the uint16 sum up to 257 maps of 255 and int32 beyond; maps of two sizes
    one after the other, so that the kept buffers must follow the size."""
    rng = np.random.default_rng(count)
    for shape in (SHAPE, (SHAPE[0] + 3, SHAPE[1] - 5)):
        maps = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(count)]
        for prob in maps:
            prob[0, 0] = 255
        paths = [
            runs.write_map(tmp_path / f"{shape[0]}_{k}", IDS[0], prob, ("zst", "png")[k % 2])
            for k, prob in enumerate(maps)
        ]
        expected = np.sum(np.stack(maps).astype(np.int64), axis=0)
        np.testing.assert_array_equal(total(paths).astype(np.int64), expected)
        mean = (2 * expected + count) // (2 * count)  # rounded half up
        np.testing.assert_array_equal(combined_mask(paths, [1 / count] * count, False, 127), mean > 127)


def _blurred_sum(seed: int) -> int:
    prob = np.random.default_rng(seed).integers(0, 256, (256, 256), dtype=np.uint8)
    return int(cv2.GaussianBlur(prob, (0, 0), 3).sum())


@pytest.mark.timeout(60)
def test_worker_pool_after_opencv_threads_ran_here():
    """OpenCV's thread count changed inside a forked worker, once this process has run OpenCV's threads,
    hangs: the pool sets it here instead, and gives it back."""
    threads = cv2.getNumThreads()
    expected = sorted(_blurred_sum(seed) for seed in range(4))  # runs OpenCV's threads in this process
    assert sorted(imap_unordered(_blurred_sum, list(range(4)), workers=2)) == expected
    assert cv2.getNumThreads() == threads


def test_weights_are_normalised_and_zero_means_ignored(folders, tmp_path):
    out = average(folders, tmp_path / "out", weights=[2, 4, 0], workers=1)
    for image_id in IDS:
        maps = stack(folders, image_id)
        expected = (maps[0] + 2 * maps[1]) / 3
        assert np.abs(read(out / f"{image_id}.zst") - expected).max() <= 0.5 + 1e-6
    assert json.loads((out / "manifest.json").read_text())["weights"] == pytest.approx([1 / 3, 2 / 3, 0])


@pytest.mark.parametrize("weights", [None, [1, 1, 2]])
def test_vote_is_the_weighted_majority(folders, tmp_path, weights):
    out = average(folders, tmp_path / "out", weights=weights, vote=True, workers=1)
    w = np.array(weights or [1, 1, 1], np.float64)[:, None, None]
    for image_id in IDS:
        votes = (stack(folders, image_id) / 255 >= 0.5) * w
        expected = np.where(votes.sum(0) >= w.sum() / 2, 255, 0)  # [1, 1, 2]: ties count as car
        np.testing.assert_array_equal(read(out / f"{image_id}.zst"), expected)


def test_two_folder_vote_tie_is_car(folders, tmp_path):
    a, b = folders[0] / f"{IDS[0]}.png", folders[1] / f"{IDS[0]}.png"
    assert cv2.imwrite(str(a), np.full(SHAPE, 128, np.uint8))
    assert cv2.imwrite(str(b), np.full(SHAPE, 127, np.uint8))
    out = average(folders[:2], tmp_path / "out", vote=True, workers=1)
    assert (read(out / f"{IDS[0]}.zst") == 255).all()


def test_missing_image_is_an_error_and_writes_nothing(folders, tmp_path):
    (folders[2] / f"{IDS[3]}.png").unlink()
    (folders[2] / f"{IDS[4]}.png").unlink()
    with pytest.raises(CarvanaError, match=rf"2 of 6 images .* missing from .*model2, first: {IDS[3]}"):
        average(folders, tmp_path / "out", workers=1)
    assert not (tmp_path / "out").exists()


def test_subset_keeps_the_shared_images(folders, tmp_path):
    (folders[1] / f"{IDS[0]}.png").unlink()
    (folders[2] / f"{IDS[5]}.png").unlink()
    out = average(folders, tmp_path / "out", subset=True, workers=1)
    assert sorted(p.stem for p in out.glob("*.zst")) == IDS[1:5]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["subset"] is True and manifest["images"] == 4


def test_resume_rewrites_only_what_is_missing(folders, tmp_path):
    out = average(folders, tmp_path / "out", workers=1)
    old = 1_000_000_000  # seconds: any rewrite gets a later mtime
    for path in out.glob("*.zst"):
        os.utime(path, (old, old))
    before = (out / f"{IDS[2]}.zst").read_bytes()
    (out / f"{IDS[2]}.zst").unlink()
    average(folders, out, workers=1)
    mtimes = {p.stem: p.stat().st_mtime for p in out.glob("*.zst")}
    assert sorted(mtimes) == IDS
    assert [i for i, t in mtimes.items() if t != old] == [IDS[2]]
    assert (out / f"{IDS[2]}.zst").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(CarvanaError, match="already holds other predictions"):
        average(folders, out, weights=[1, 2, 3], workers=1)


def test_workers_give_the_same_bytes(folders, tmp_path):
    one = average(folders, tmp_path / "one", workers=1)
    two = average(folders, tmp_path / "two", workers=2)
    for image_id in IDS:
        assert (one / f"{image_id}.zst").read_bytes() == (two / f"{image_id}.zst").read_bytes()


def test_bad_inputs(folders, tmp_path):
    assert cv2.imwrite(str(folders[1] / f"{IDS[1]}.png"), np.zeros((SHAPE[0], SHAPE[1] + 1), np.uint8))
    with pytest.raises(CarvanaError, match=f"{IDS[1]}: .*model1.* is 65x48"):
        average(folders, tmp_path / "out", workers=2)
    for weights, match in (
        ([1, 2], "2 weights for 3"),
        ([1, -1, 1], ">= 0"),
        ([0, 0, 0], "all zero"),
        ([1, float("nan"), 1], "finite"),
    ):
        with pytest.raises(CarvanaError, match=match):
            average(folders, tmp_path / "out2", weights=weights)
    with pytest.raises(CarvanaError, match="also an input"):
        average(folders, folders[0])
    with pytest.raises(CarvanaError, match="does not exist"):
        average([folders[0], tmp_path / "nope"], tmp_path / "out3")


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "carvana", "ensemble", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli(folders, tmp_path):
    done = run_cli(tmp_path / "out", *folders, "--weights", 1, 1, 2, "--vote", "--workers", 1)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["vote"] is True
    bad = run_cli(tmp_path / "bad", *folders, "--weights", 1, 2)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error: 2 weights for 3") and len(bad.stderr.splitlines()) == 1
