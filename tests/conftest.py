"""Shared fixtures: the real competition files beside the checkout, and W&B kept offline."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CARVANA_SHARED", REPO.parent / "shared" / "carvana"))


@pytest.fixture(scope="session")
def shared_full() -> Path:
    """72 real 1918x1280 train pairs, 13 test images, full metadata and sample submission."""
    root = SHARED / "full"
    assert root.is_dir(), f"real data missing at {root}; set CARVANA_SHARED"
    return root


@pytest.fixture(scope="session")
def shared_small512() -> Path:
    """254 real cars x 16 angles at 512x512."""
    root = SHARED / "small512"
    assert root.is_dir(), f"real data missing at {root}; set CARVANA_SHARED"
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """5 synthetic cars x 16 views at 96x64 (a multiple of 32: no padding), so 4 cars train."""
    from carvana.data import synthetic

    root = tmp_path_factory.mktemp("data") / "cars"
    return synthetic.generate(root, cars=5, test_cars=0, width=96, height=64)


@pytest.fixture(autouse=True)
def _wandb_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """The run folder of a real ``train.py`` run: LinkNet-18, one epoch on 90x60 synthetic cars (padded to
    96x64), 16 test images; shared by the prediction and OOF tests, which copy it before writing into it."""
    root = tmp_path_factory.mktemp("trained")
    overrides = [
        "+experiment=quickstart", f"paths.output_root={root}/outputs", f"paths.cache_dir={root}/cache",
        "model=linknet18", "data.synthetic.cars=5", "data.synthetic.test_cars=1", "data.synthetic.width=90",
        "data.synthetic.height=60", "data.geometry.mode=pad", "data.num_workers=0", "trainer.max_epochs=1",
        "logger=none", "fold=0", "oof=false",  # the OOF tests predict the maps themselves
    ]  # fmt: skip
    done = subprocess.run([sys.executable, "train.py", *overrides], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "outputs" / "quickstart" / "fold0"


@pytest.fixture
def one_thread():
    """Tiny tensors: with 2 threads on a shared 2-core CPU, OpenMP waits cost 10-100x the work itself."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
