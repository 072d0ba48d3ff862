"""The model zoo at a glance: parameters and CPU forward time at full Carvana resolution, per model config.

    python bench/model_zoo.py                 # every conf/model/*.yaml, writes bench/model_zoo.md
    python bench/model_zoo.py unet dinknet    # some of them, printed only

Every network is built from its config exactly as training builds it (weights random: nothing downloads),
and timed on one 1280x1920 image (Kaggle's 1918 padded to a multiple of 32), fp32, under torch.no_grad:
the median of 3 forward passes after a warm-up pass.
"""

from __future__ import annotations

import argparse
import platform
import re
import statistics
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import carvana.config  # noqa: F401  (registers the `eq` resolver of the logger config)
from carvana.config import build_model
from carvana.files import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SIZE = (1280, 1920)
REPEATS = 3


def model_config(name: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"model={name}", "model.encoder_weights=null"]).model


def team(name: str) -> str:
    """Who used it: the parenthesised note in the config's first comment line, preferring a '... place'."""
    first = (CONF / "model" / f"{name}.yaml").read_text().splitlines()[0]
    notes = re.findall(r"\(([^()]*)\)", first)
    return ([note for note in notes if "place" in note] or notes or [""])[-1]


@torch.no_grad()
def forward_seconds(net: torch.nn.Module, channels: int, repeats: int = REPEATS) -> float:
    """Median wall time of ``repeats`` forward passes of one image, after a warm-up that checks the output."""
    x = torch.zeros(1, channels, *SIZE)
    shape = tuple(net(x).shape)
    if shape != (1, 1, *SIZE):
        raise SystemExit(f"{type(net).__name__}: output {shape} for a {SIZE} input")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        net(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(name: str) -> str:
    cfg = model_config(name)
    net = build_model(cfg).eval()
    params = sum(p.numel() for p in net.parameters())
    seconds = forward_seconds(net, cfg.in_channels)
    encoder = cfg.get("encoder_name") or "own, from scratch"
    cells = [
        f"`{name}`",
        type(net).__name__,
        encoder,
        f"{params / 1e6:.1f} M",
        f"{seconds:.1f} s",
        team(name),
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("models", nargs="*", help="config names (default: all, and write bench/model_zoo.md)")
    models = parser.parse_args().models
    header = [
        "| model | architecture | encoder | parameters | forward 1280x1920 | used by |",
        "|---|---|---|---|---|---|",
    ]
    rows = []
    for name in models or sorted(path.stem for path in (CONF / "model").glob("*.yaml")):
        rows.append(row(name))
        print(rows[-1], flush=True)
    if models:
        return
    note = (
        f"Forward time: batch 1, fp32, `torch.no_grad`, median of {REPEATS} after a warm-up, with "
        f"{torch.get_num_threads()} threads on a shared {platform.machine()} CPU (torch {torch.__version__}) "
        "that other jobs were using at the same time: compare rows with each other, not with other machines. "
        "Regenerate with `python bench/model_zoo.py`."
    )
    text = "\n".join(["# Model zoo", "", *header, *rows, "", note, ""])
    atomic_write_text(REPO / "bench" / "model_zoo.md", text)


if __name__ == "__main__":
    main()
