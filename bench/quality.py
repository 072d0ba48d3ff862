"""Quality per CPU-minute: the ``cpu_small512`` recipe against the plain PyTorch loop a user would write,
for the same wall time, one after the other in one run, on the same real cars, with one scorer.

    python -m bench.quality --minutes 40          # the README's figures (about 90 minutes in all)
    python -m bench.quality --minutes 1 --cars 20  # a smoke run
    python -m bench.quality --minutes 5 --ablation  # the recipe without each main choice: ablation.md

Both train on fold 0's training cars of the project's car-grouped split (``carvana.data.folds``) of
``--root`` and are scored on fold 0's validation cars at 512x512: per-image Dice of map > 127 of an 8-bit
probability map against the true mask, the mean over images (Kaggle's metric). The plain loop: smp
Linknet34 from scratch, 256x256 input, hflip, BCE + soft Dice, Adam 1e-3 with cosine decay over the wall
time, batch 8, fp32, no validation, predicting at 256 and resizing the logits to 512. The recipe:
``python train.py +experiment=cpu_small512 fold=0 trainer.max_time.minutes=M`` in a subprocess, scored from
the out-of-fold maps its own pass writes (that pass is timed apart from the budget, as the plain loop's
prediction is). First, the training step itself is timed (``step_speed``).
Writes ``quality.md`` and ``quality.json`` into ``--out``; ``--ablation`` trains the recipe and its variants
(``ABLATION``) for the same budget each and writes ``ablation.md`` and ``ablation.json`` instead.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from bench import report
from carvana import runs
from carvana.config import native_cpu_bf16
from carvana.data import folds
from carvana.data.kaggle import Sample, read_image, read_mask, train_samples
from carvana.metrics import dice

REPO = Path(__file__).resolve().parent.parent
ROOT = os.environ.get("CARVANA_SMALL512", "../shared/carvana/small512")
SIZE, BATCH, LR = 256, 8, 1e-3


def subset(root: Path, cars: int, work: Path) -> Path:
    """A Kaggle-layout folder of links to the first ``cars`` cars of ``root`` (smoke runs)."""
    samples = train_samples(root)
    keep = sorted({s.car for s in samples})[:cars]
    for sample in samples:
        if sample.car in keep:
            for path in (sample.image, sample.mask):
                link = work / path.parent.name / path.name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path.resolve())
    return work


def split(root: Path, cache_dir: str) -> tuple[list[Sample], list[Sample]]:
    """Fold 0's training and validation samples of the project's split of ``root``."""
    samples = train_samples(root)
    table = folds.assign(folds.car_areas(samples, cache_dir), 5)
    return [s for s in samples if table[s.car] != 0], [s for s in samples if table[s.car] == 0]


def score(maps: Callable[[Sample], np.ndarray], samples: Sequence[Sample]) -> float:
    """The one scorer: mean per-image Dice of ``maps(sample) > 127`` (uint8 maps) against the true masks."""
    return float(np.mean([dice(maps(s) > np.uint8(127), read_mask(s.mask)) for s in samples]))


class PlainPairs(Dataset):
    """What a user writes: decode, resize to 256, flip half the time."""

    def __init__(self, samples: Sequence[Sample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = cv2.resize(read_image(sample.image), (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(read_mask(sample.mask), (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)
        if np.random.rand() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        return (image - 0.5) / 0.25, torch.from_numpy(np.ascontiguousarray(mask))[None].float()


def plain_loop(train: Sequence[Sample], val: Sequence[Sample], minutes: float) -> dict:
    """Train the plain loop for ``minutes`` of wall time, then score it."""
    torch.manual_seed(0)
    net = smp.Linknet("resnet34", encoder_weights=None, classes=1)
    optimizer = torch.optim.Adam(net.parameters(), lr=LR)
    soft_dice = smp.losses.DiceLoss("binary")
    loader = DataLoader(
        PlainPairs(train), BATCH, shuffle=True, drop_last=True, num_workers=2, persistent_workers=True
    )
    budget, steps, start = minutes * 60, 0, time.monotonic()
    net.train()
    while time.monotonic() - start < budget:
        for image, mask in loader:
            elapsed = time.monotonic() - start
            if elapsed >= budget:
                break
            for group in optimizer.param_groups:
                group["lr"] = LR * 0.5 * (1 + math.cos(math.pi * elapsed / budget))
            logits = net(image)
            loss = F.binary_cross_entropy_with_logits(logits, mask) + soft_dice(logits, mask)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if steps % 50 == 0:
                print(
                    f"plain loop: {steps} steps, {elapsed / 60:.1f} of {minutes} min, loss {loss:.4f}",
                    flush=True,
                )
    trained = time.monotonic() - start
    net.eval()

    @torch.no_grad()
    def predict(sample: Sample) -> np.ndarray:
        image = read_image(sample.image)
        height, width = image.shape[:2]
        small = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        x = (torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255 - 0.5) / 0.25
        logits = F.interpolate(net(x), size=(height, width), mode="bilinear", align_corners=False)
        return (logits.sigmoid()[0, 0] * 255).round().to(torch.uint8).numpy()

    start = time.monotonic()
    dice_value = score(predict, val)
    return {
        "dice": dice_value,
        "train_s": trained,
        "steps": steps,
        "images": steps * BATCH,
        "predict_and_score_s": time.monotonic() - start,
    }


def recipe(
    root: Path, val: Sequence[Sample], minutes: float, out: Path, overrides: Sequence[str] = ()
) -> dict:
    """Run the recipe's ``train.py`` (with ``overrides``) for ``minutes`` of training, then score its
    out-of-fold maps."""
    command = [
        sys.executable,
        "train.py",
        "+experiment=cpu_small512",
        "fold=0",
        "logger=none",
        f"trainer.max_time.minutes={minutes}",
        f"data.root={root}",
        f"paths.output_root={out}",
        *overrides,
    ]
    start = time.monotonic()
    subprocess.run(command, check=True, cwd=REPO)
    wall = time.monotonic() - start
    run_dir = runs.fold_dir(out / "cpu_small512", 0)

    def oof_maps(sample: Sample) -> np.ndarray:
        return runs.read_map(runs.map_path(run_dir / runs.OOF, sample.image_id))

    dice_value = score(oof_maps, val)
    steps = runs.read_heartbeat(run_dir)["step"]
    result = {"dice": dice_value, "process_wall_s": wall, "steps": steps, "images": steps * BATCH}
    if not overrides:  # the same weights without TTA: what the hflip pass adds
        oof_command = [sys.executable, "-m", "carvana", "oof", str(run_dir), "--tta", "none"]
        subprocess.run(oof_command, check=True, cwd=REPO)
        result["dice_no_tta"] = score(oof_maps, val)
    return result


ABLATION = {
    "no progressive resizing (256 px throughout)": ["~callbacks.progressive_resize"],
    "fp32, NCHW weights (no bf16, no channels_last)": [
        "trainer.precision=32-true",
        "~callbacks.channels_last",
    ],
    "no LR warm-up": ["callbacks.lr_budget.warmup=0"],
    # not in the recipe: without the decay's warm-up, 0.516 against 0.988 at 10 minutes on the EPYC
    # (bench/ema_epyc.json); this row measures the warmed-up EMA
    "with EMA of the weights (decay 0.999, warmed up, from the start)": [
        "+callbacks.ema._target_=carvana.train.callbacks.EMA",
        "+callbacks.ema.decay=0.999",
        "+callbacks.ema.start=0.0",
        "+callbacks.ema.warmup=true",
    ],
}


def ablation(root: Path, val: Sequence[Sample], minutes: float, work: Path) -> dict[str, dict]:
    """The recipe, then the recipe without each of its main choices, each for ``minutes``."""
    rows = {"cpu_small512 recipe": recipe(root, val, minutes, work / "recipe")}
    for index, (name, overrides) in enumerate(ABLATION.items()):
        rows[name] = recipe(root, val, minutes, work / f"ablation{index}", overrides)
    return rows


def step_speed(repeats: int = 3) -> dict[str, float]:
    """ms per training image of the LinkNet-34 step, batch 8: at 256 px in fp32, fp32 + channels_last and,
    where the CPU has it natively, bf16 autocast with and without channels_last; at 128 and 192 px with the
    recipe's precision and channels_last (its progressive resizing)."""
    bf16 = native_cpu_bf16()
    best = "bf16+channels_last" if bf16 else "fp32+channels_last"
    variants = [("fp32", False, False, SIZE), ("fp32+channels_last", False, True, SIZE)]
    if bf16:  # emulated elsewhere: ~14x slower than fp32, minutes for these few steps
        variants += [("bf16", True, False, SIZE), ("bf16+channels_last", True, True, SIZE)]
    variants += [(f"{best} {size} px", bf16, True, size) for size in (128, 192)]
    results = {}
    for name, autocast, channels_last, size in variants:
        torch.manual_seed(0)
        net = smp.Linknet("resnet34", encoder_weights=None, classes=1)
        optimizer = torch.optim.Adam(net.parameters(), LR)
        x, y = torch.randn(BATCH, 3, size, size), (torch.rand(BATCH, 1, size, size) > 0.5).float()
        if channels_last:
            net, x = net.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
        times = []
        for i in range(repeats + 1):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = net(x)
            loss = F.binary_cross_entropy_with_logits(logits.float(), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if i:  # the first step warms oneDNN's kernel caches
                times.append(time.perf_counter() - start)
        results[name] = 1000 * float(np.median(times)) / BATCH
    return results


def markdown(data: dict) -> str:
    plain, ours, speed = data["plain"], data["recipe"], data["step_ms_per_image"]
    bf16_note = "" if "bf16" in speed else "; no bf16 rows: this CPU has neither AVX-512 BF16 nor AMX"
    lines = [
        "# Quality per CPU-minute: plain PyTorch loop vs the cpu_small512 recipe",
        "",
        f"{data['date']}, {data['machine']['cpu']}, {data['machine']['cpus']} CPUs, torch "
        f"{data['machine']['versions']['torch']}; budget {data['minutes']} min of training each, "
        "one after the other; "
        f"{data['train_images']} training and {data['val_images']} validation images (fold 0 of "
        f"{data['root']}), scored at 512x512, mean per-image Dice of map > 127.",
        "",
        "| | mean Dice, fold-0 val cars | training images seen | training time |",
        "|---|---|---|---|",
        f"| plain loop (fp32, 256 px, batch 8) | {plain['dice']:.5f} | {plain['images']} | "
        f"{plain['train_s'] / 60:.1f} min |",
        f"| `cpu_small512` recipe | {ours['dice']:.5f} | {ours.get('images', '?')} | "
        f"{data['minutes']} min budget, process {ours['process_wall_s'] / 60:.1f} min incl. start, final "
        f"validation and OOF pass |",
        "",
        f"Difference (recipe - plain): **{ours['dice'] - plain['dice']:+.5f}**.",
        "",
    ]
    if speed:
        lines += [
            f"LinkNet-34 training step, batch 8, ms per image (median of the timed steps){bf16_note}:",
            "",
            "| step | ms per image | vs fp32 at 256 px |",
            "|---|---|---|",
            *(f"| {name} | {ms:.1f} | {speed['fp32'] / ms:.2f}x |" for name, ms in speed.items()),
            "",
        ]
    return "\n".join(lines)


def ablation_markdown(data: dict) -> str:
    rows = data["rows"]
    base = rows["cpu_small512 recipe"]
    lines = [
        "# Ablation of the cpu_small512 recipe",
        "",
        f"{data['date']}, {data['machine']['cpu']}, {data['machine']['cpus']} CPUs; {data['minutes']} min of "
        f"training per row, one after the other; fold 0 of {data['root']} ({data['train_images']} training, "
        f"{data['val_images']} validation images at 512x512), mean per-image Dice of map > 127.",
        "",
        "| variant | mean Dice | vs recipe | training images seen |",
        "|---|---|---|---|",
        f"| cpu_small512 recipe | {base['dice']:.5f} | | {base['images']} |",
        f"| same weights, no hflip TTA | {base['dice_no_tta']:.5f} | "
        f"{base['dice_no_tta'] - base['dice']:+.5f} | {base['images']} |",
    ]
    for name, row in rows.items():
        if row is not base:
            lines.append(
                f"| {name} | {row['dice']:.5f} | {row['dice'] - base['dice']:+.5f} | {row['images']} |"
            )
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=40.0, help="training wall time of each")
    parser.add_argument("--root", type=Path, default=Path(ROOT), help="a Kaggle-layout folder (small512)")
    parser.add_argument("--cars", type=int, help="use only the first N cars (smoke runs)")
    parser.add_argument("--out", type=Path, default=REPO / "bench")
    parser.add_argument("--step-repeats", type=int, default=3, help="timed steps per variant; 0 skips them")
    parser.add_argument(
        "--ablation", action="store_true", help="the recipe without each main choice (ablation.md, .json)"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    cache_dir = os.environ.get("CARVANA_CACHE", str(Path.home() / ".cache" / "carvana"))
    with tempfile.TemporaryDirectory(prefix="quality-") as work:
        root = subset(args.root, args.cars, Path(work) / "data") if args.cars else args.root
        train, val = split(root, cache_dir)
        data: dict = {
            "date": datetime.date.today().isoformat(),
            "machine": report.machine(),
            "minutes": args.minutes,
            "root": str(args.root),
            "train_images": len(train),
            "val_images": len(val),
            "cars": args.cars,
        }
        if args.ablation:
            data["rows"] = ablation(root, val, args.minutes, Path(work) / "runs")
            runs.write_json(args.out / "ablation.json", data)
            (args.out / "ablation.md").write_text(ablation_markdown(data))
            print(ablation_markdown(data))
            return 0
        data["step_ms_per_image"] = step_speed(args.step_repeats) if args.step_repeats else {}
        print(f"step ms/image: {data['step_ms_per_image']}", flush=True)
        data["plain"] = plain_loop(train, val, args.minutes)
        print(f"plain loop: Dice {data['plain']['dice']:.5f}", flush=True)
        data["recipe"] = recipe(root, val, args.minutes, Path(work) / "runs")
    print(f"recipe: Dice {data['recipe']['dice']:.5f}", flush=True)
    data["difference"] = data["recipe"]["dice"] - data["plain"]["dice"]
    runs.write_json(args.out / "quality.json", data)
    (args.out / "quality.md").write_text(markdown(data))
    print(markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
