"""Kills that cost nothing: training killed (SIGKILL, SIGUSR1, a NaN loss) at seeded points, then the same
command, ends with the weights of a run never interrupted; the data order is the same with or without
DataLoader workers; a checkpoint save killed half-way never leaves a broken file to resume from.

Faults land at exact points through ``tests/kill_switch.py``: after the N-th ``training_step`` call of a
process, before that step's backward pass.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import kill_switch
import pytest
import torch

from carvana.files import temp_files
from carvana.runs import BEST, FOLD_SCORE, LAST, checkpoint

STEP = "carvana.train.segmentation_module:SegmentationModule.training_step"
STEPS_PER_EPOCH = 16  # 4 training cars x 16 angles, batch 4
EPOCHS = 2
RNG = random.Random(12)  # the kill points: seeded, drawn once per session


def overrides(root: Path, cache: Path, *extra: str) -> list[str]:
    return [
        f"paths.output_root={root}", f"paths.cache_dir={cache}", "trainer=cpu", "model=linknet18",
        "model.encoder_weights=null", "+model.encoder_depth=3", f"trainer.max_epochs={EPOCHS}",
        "data.synthetic.cars=5", "data.synthetic.test_cars=1", "data.synthetic.width=100",
        "data.synthetic.height=70", "data.batch_size=4", "logger=none", "oof=false",
        "trainer.deterministic=true", *extra,
    ]  # fmt: skip


def train(
    root: Path, cache: Path, *extra: str, fault: tuple[int, str] | None = None
) -> subprocess.CompletedProcess:
    """``train.py`` as a user runs it, with ``fault`` = (N, action) injected after the N-th training step."""
    return kill_switch.run(["train.py", *overrides(root, cache, *extra)], (STEP, *fault) if fault else None)


def run_dir(root: Path) -> Path:
    return root / "linknet18" / "fold0"


def weights(root: Path, name: str = LAST) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint(run_dir(root), name), map_location="cpu", weights_only=True)["state_dict"]


def step_of(root: Path, name: str = LAST) -> int:
    return torch.load(checkpoint(run_dir(root), name), map_location="cpu", weights_only=True)["global_step"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def score(root: Path) -> float:
    return json.loads((run_dir(root) / FOLD_SCORE).read_text())["best"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache) -> Path:
    """A run never interrupted, with DataLoader workers (the default, ``data.num_workers=2``)."""
    root = tmp_path_factory.mktemp("reference")
    done = train(root, cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert step_of(root) == STEPS_PER_EPOCH * EPOCHS
    return root


def test_workers_on_and_off_train_the_same_weights(reference, cache, tmp_path):
    done = train(tmp_path, cache, "data.num_workers=0")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(weights(tmp_path), weights(reference))
    assert score(tmp_path) == score(reference)


def killed(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]


def test_sigkill_twice_then_rerun_ends_with_the_uninterrupted_weights(reference, cache, tmp_path):
    """Epoch-end checkpoints only (``checkpoint.every_minutes`` 30): the first kill lands in epoch 1 after
    epoch 0's checkpoint, the second inside the resumed epoch 1, which is replayed from its start."""
    first, second = RNG.randint(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH), RNG.randint(1, STEPS_PER_EPOCH)
    killed(train(tmp_path, cache, fault=(first, "KILL")))
    assert step_of(tmp_path) == STEPS_PER_EPOCH
    killed(train(tmp_path, cache, fault=(second, "KILL")))
    assert step_of(tmp_path) == STEPS_PER_EPOCH
    done = train(tmp_path, cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from" in done.stderr + done.stdout
    assert_same_weights(weights(tmp_path), weights(reference))
    assert score(tmp_path) == score(reference)


def test_kills_inside_epochs_resume_from_the_timed_checkpoint_mid_epoch(reference, cache, tmp_path):
    """``checkpoint.every_minutes=0``: last.ckpt after every step, so each kill loses only its own step and
    the resumed run continues mid-epoch, in the same batch order."""
    first, second = RNG.randint(2, STEPS_PER_EPOCH // 2), RNG.randint(2, STEPS_PER_EPOCH // 2)
    timed = "checkpoint.every_minutes=0"
    killed(train(tmp_path, cache, timed, fault=(first, "KILL")))
    assert step_of(tmp_path) == first - 1  # inside epoch 0
    killed(train(tmp_path, cache, timed, fault=(second, "KILL")))
    resumed_at = first - 1 + second - 1
    assert step_of(tmp_path) == resumed_at and resumed_at % STEPS_PER_EPOCH
    assert not temp_files(checkpoint(run_dir(tmp_path)).parent)
    done = train(tmp_path, cache, timed)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not resumable" not in done.stderr  # Lightning's warning for a loader that would restart its epoch
    assert_same_weights(weights(tmp_path), weights(reference))
    assert score(tmp_path) == score(reference)


def test_sigusr1_saves_the_resume_point_before_exiting(reference, cache, tmp_path):
    """SLURM's warning signal inside epoch 0: the step in flight finishes, last.ckpt is saved there."""
    at = RNG.randint(2, STEPS_PER_EPOCH - 1)
    stopped = train(tmp_path, cache, fault=(at, "USR1"))
    assert stopped.returncode != -signal.SIGKILL and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    assert step_of(tmp_path) == at
    done = train(tmp_path, cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(weights(tmp_path), weights(reference))


def test_a_nan_loss_stops_with_one_line_and_keeps_the_good_checkpoints(cache, tmp_path):
    at = RNG.randint(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH)
    done = train(tmp_path, cache, fault=(at, "nan"))
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "Traceback" not in done.stderr
    assert f"train/loss is nan at step {at - 1}, epoch 1" in errors[0]
    for name in (BEST, LAST):  # both from the end of epoch 0, finite: the resume point and the best
        assert step_of(tmp_path, name) == STEPS_PER_EPOCH
        assert all(
            value.isfinite().all() for value in weights(tmp_path, name).values() if value.is_floating_point()
        )


SAVE_LOOP = """
import sys, torch
from carvana.train.checkpoint_io import AtomicCheckpointIO
io, version = AtomicCheckpointIO(), 0
while True:
    version += 1
    io.save_checkpoint({"version": version, "weights": torch.full((4_000_000,), float(version))}, sys.argv[1])
    print(version, flush=True)
"""


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_one_whole(tmp_path):
    """A 16 MB checkpoint saved over and over, killed at seeded moments (most land inside a save)."""
    path = tmp_path / "checkpoints" / LAST
    rng = random.Random(7)
    for _ in range(2):
        saver = subprocess.Popen(
            [sys.executable, "-c", SAVE_LOOP, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert saver.stdout.readline()  # one save completed
        time.sleep(rng.uniform(0.05, 0.5))
        saver.kill()
        saver.wait()
        saved = torch.load(path, weights_only=True)
        assert torch.equal(saved["weights"], torch.full((4_000_000,), float(saved["version"])))
