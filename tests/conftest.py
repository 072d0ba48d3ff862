"""Shared fixtures: the real competition files beside the checkout, and W&B kept offline."""

import os
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


@pytest.fixture(autouse=True)
def _wandb_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
