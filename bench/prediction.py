"""Case 3: full-resolution hflip-TTA prediction, maps written, against its bare compute and against ttach.

Project: ``carvana.predict.prediction_module.predict_missing`` (``PredictionModule`` with batched hflip
TTA, ``MapWriter`` threads writing .zst maps) under ``trainer.predict``, with ``conf/predict.yaml``'s batch
size, workers and writer threads. Bare: only the two forward passes per batch (plain and flipped) on tensors
already decoded, normalised and in memory. ttach: the loop a user writes with ``ttach.SegmentationTTAWrapper``
over the same DataLoader, saving each PNG with cv2.imwrite as it comes. All three are timed from the end of
their first batch to the last map on disk (or the last pass), so worker start-up and the first oneDNN kernels
are outside the window.

On this CPU a full-resolution pass of a real network takes seconds per image, so the network is
``bench.data.conv_net``: the overheads (decode, TTA arithmetic, restoring, map encoding) weigh more against
it than against a real model, which makes the ratios conservative.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytorch_lightning as pl
import torch
import ttach
from torch import nn
from torch.utils.data import DataLoader

from bench.data import (
    MEAN,
    SMALL,
    STD,
    TINY,
    bare_trainer,
    conv_net,
    full_root,
    normalise,
    real_samples,
    scaled_copies,
)
from bench.harness import Case, Comparison, Settings, compare, interleave
from carvana import runs
from carvana.data.datasets import CarvanaDataset
from carvana.data.geometry import Geometry
from carvana.data.kaggle import Sample, test_samples
from carvana.models import NetworkInput
from carvana.predict.map_writer import MapWriter
from carvana.predict.prediction_module import PredictionModule, predict_missing

BATCH, WORKERS, WRITER_THREADS = (
    2,
    2,
    2,
)  # conf/predict.yaml: data.batch_size, data.num_workers, writer_threads


class BatchClock(pl.Callback):
    """The time at the end of each batch, and at the end of predict: listed after the MapWriter, it runs
    after the writer has drained its threads, i.e. once every map is on disk."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        module: pl.LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self.times.append(time.perf_counter())

    def on_predict_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.times.append(time.perf_counter())


def after_first_batch(count: int, first: float, last: float) -> float:
    """Images per second of everything after the first batch."""
    return (count - BATCH) / (last - first)


def project(net: nn.Module, samples: list[Sample], out: Path) -> float:
    """The project's prediction path, exactly as predict.py drives it."""
    module = PredictionModule([net], Geometry(), list(MEAN), list(STD), hflip=True)
    writer, clock = MapWriter(out, threads=WRITER_THREADS), BatchClock()
    trainer = bare_trainer(callbacks=[writer, clock])
    predict_missing(trainer, module, samples, writer, 0.0, BATCH, WORKERS)
    return after_first_batch(len(samples), clock.times[0], clock.times[-1])


def loader(samples: list[Sample]) -> DataLoader:
    """The project's prediction DataLoader, for the baselines."""
    dataset = CarvanaDataset(samples, A.Compose(Geometry().eval()))
    return DataLoader(dataset, batch_size=BATCH, num_workers=WORKERS)


@torch.inference_mode()
def with_ttach(net: nn.Module, samples: list[Sample], out: Path) -> float:
    """What a user writes with ttach: wrap the network, loop, crop, save each PNG."""
    model = ttach.SegmentationTTAWrapper(nn.Sequential(net, nn.Sigmoid()), ttach.aliases.hflip_transform())
    out.mkdir(parents=True, exist_ok=True)
    times = []
    for batch in loader(samples):
        probs = model(normalise(batch["image"]))
        for image_id, prob, height, width in zip(
            batch["id"], probs, batch["height"], batch["width"], strict=True
        ):
            prob = (prob[0, :height, :width] * 255).round().to(torch.uint8)
            cv2.imwrite(str(out / f"{image_id}.png"), prob.numpy())
        times.append(time.perf_counter())
    return after_first_batch(len(samples), times[0], times[-1])


@torch.inference_mode()
def bare(net: nn.Module, batches: list[torch.Tensor]) -> float:
    """The two forward passes of every batch, nothing else."""
    times = []
    for x in batches:
        net(x)
        net(x.flip(-1))
        times.append(time.perf_counter())
    return after_first_batch(BATCH * len(batches), times[0], times[-1])


@torch.inference_mode()
def agree(net: nn.Module, samples: list[Sample], project_dir: Path, ttach_dir: Path) -> dict[str, bool]:
    """The project's TTA equals ttach's on the same batch, and both wrote the same maps (to rounding)."""
    batch = next(iter(loader(samples)))
    mine = PredictionModule([net], Geometry(), list(MEAN), list(STD))(batch["image"])
    model = ttach.SegmentationTTAWrapper(nn.Sequential(net, nn.Sigmoid()), ttach.aliases.hflip_transform())
    theirs = model(normalise(batch["image"]))
    pairs = [(runs.map_path(project_dir, s.image_id), ttach_dir / f"{s.image_id}.png") for s in samples]
    written = all(a.is_file() and b.is_file() for a, b in pairs)
    same = written and all(
        np.abs(runs.read_map(a).astype(int) - cv2.imread(str(b), 0)).max() <= 1 for a, b in pairs
    )
    return {"tta_equals_ttach": torch.allclose(mine, theirs, atol=1e-6), "maps_equal_ttach": same}


def peak_memory(folder: Path, counts: tuple[int, int], repeats: int) -> Comparison:
    """Peak RSS of fresh processes predicting ``counts[0]`` and ``counts[1]`` images of ``folder``
    (bench.memory_probe), a pair per repeat."""
    names = [f"{count} images" for count in counts]
    figures: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        # Side by side: a process's peak RSS does not depend on what runs beside it.
        probes = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.memory_probe", str(folder), str(count)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for count in counts
        ]
        for name, probe in zip(names, probes, strict=True):
            out, err = probe.communicate()
            if probe.returncode:
                raise RuntimeError(f"{' '.join(probe.args)} failed ({probe.returncode}): {err[-2000:]}")
            figures[name].append(json.loads(out.splitlines()[-1])["peak_rss_mb"])
    return compare(f"peak RSS, {names[1]} vs {names[0]}", "MB", figures, names[1], names[0], 1.1, "<=")


@torch.inference_mode()
def input_cost(images: list[torch.Tensor]) -> float:
    """Seconds per image of what the project does to a uint8 batch besides the passes: the normalised float
    input (``carvana.models.NetworkInput``) and its flipped copy. Median of three rounds."""
    prepare = NetworkInput(MEAN, STD)
    rounds = []
    for _ in range(3):
        start = time.perf_counter()
        for image in images:
            prepare(image).flip(-1)
        rounds.append((time.perf_counter() - start) / (BATCH * len(images)))
    return statistics.median(rounds)


def run(settings: Settings) -> Case:
    case = Case("prediction", "Prediction: hflip TTA at 1280x1920 (padded 1918x1280), maps written")
    if settings.smoke:
        scaled = scaled_copies(real_samples(4), settings.scratch / "small", (320, 480))
        samples = [Sample(s.image_id, s.image) for s in scaled]
    else:
        samples = test_samples(full_root())[:10]
    widths = TINY if settings.smoke else SMALL
    net = conv_net(widths)
    dataset = loader(samples).dataset
    images = [
        torch.stack([dataset[i]["image"] for i in range(start, start + BATCH)])
        for start in range(0, len(samples) - BATCH + 1, BATCH)
    ]
    batches = [normalise(image) for image in images]
    outputs: dict[str, Path] = {}  # each run writes to a new folder; the last one of each is checked
    fresh = itertools.count()

    def writing(name: str, predict: Callable[[nn.Module, list[Sample], Path], float]) -> float:
        outputs[name] = settings.scratch / f"{name}{next(fresh)}"
        return predict(net, samples, outputs[name])

    mine, passes, theirs = "PredictionModule + MapWriter", "two bare forward passes", "ttach loop"
    figures = interleave(
        {
            mine: lambda: writing("project", project),
            passes: lambda: bare(net, batches),
            theirs: lambda: writing("ttach", with_ttach),
        },
        settings,
    )
    case.checks = agree(net, samples, outputs["project"], outputs["ttach"])
    head = compare("vs bare forward passes", "images/s", figures, mine, passes, 0.97)
    case.comparisons += [head, compare("vs ttach", "images/s", figures, mine, theirs)]
    counts, size = ((4, 12), (160, 256)) if settings.smoke else ((50, 500), (640, 960))
    scaled = scaled_copies(real_samples(8 if settings.smoke else 24), settings.scratch / "scaled", size)
    folder = scaled[0].image.parent
    memory = peak_memory(folder, counts, settings.repeats)
    case.comparisons.append(memory)
    case.notes.append(
        f"peak RSS: {memory.baseline:,.0f} MB for {counts[0]} images, {memory.project:,.0f} MB for "
        f"{counts[1]}; maps are written as they come and none is kept, and the predicting process maps "
        "its large buffers on their own (carvana.data.buffers.unmap_large_buffers), so the heap does not "
        "fragment"
    )
    overhead = 1 / head.project - 1 / head.baseline
    prepare = input_cost(images)
    case.notes.append(
        f"per image: {1e3 / head.project:.0f} ms for the project against {1e3 / head.baseline:.0f} ms for "
        f"the bare passes, {1e3 * overhead:.0f} ms more; normalising the uint8 batch and making its flipped "
        f"copy take {1e3 * prepare:.0f} ms on the compute thread, timed on their own. JPEG decoding "
        "(DataLoader workers) and map encoding (writer threads) run beside the passes."
    )
    fraction = "a fortieth" if settings.smoke else "a tenth"
    case.setup = {
        "network": f"bench.data.conv_net{widths}, {fraction} of LinkNet-18's FLOPs",
        "images": f"{len(samples)} at 320x480"
        if settings.smoke
        else f"{len(samples)} real test JPEGs, 1918x1280",
        "batch": f"{BATCH} and its flipped copy; {WORKERS} loader workers; {WRITER_THREADS} writer threads",
        "memory": f"{size[0]}x{size[1]} copies of real images (full resolution would take too long), each "
        "count in a fresh process; peak = VmHWM of the predicting process (DataLoader workers excluded)",
    }
    return case
