"""Case 6: training on a GPU, bf16-mixed + channels_last against fp32, at full resolution (1280x1920).

The project's GPU recipe (``trainer=gpu``) trains in bf16-mixed; this case measures what that buys on the
card at hand: images/s and peak memory of LinkNet-34 training steps under each setting, same data and
batch. Without CUDA it is recorded as not run.
"""

from __future__ import annotations

import copy

import segmentation_models_pytorch as smp
import torch
from torch.utils.data import DataLoader

from bench.harness import Case, Comparison, Settings, compare, interleave
from bench.training import InMemory, StepClock, images_per_second, lightning


def measure(
    net: torch.nn.Module,
    loader: DataLoader,
    accelerator: str,
    precision: str,
    channels_last: bool,
    warmup: int,
) -> tuple[float, float | None]:
    """(images/s, peak device memory in GB, None off CUDA) of training ``net`` for one pass of ``loader``."""
    net = copy.deepcopy(net)
    if channels_last:  # the uint8 NHWC batches already arrive as channels_last floats
        net = net.to(memory_format=torch.channels_last)
    cuda = accelerator == "gpu"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    clock = StepClock()
    lightning(net, loader, len(loader), clock, accelerator, precision)
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return images_per_second(clock.times, warmup, loader.batch_size or 1), peak


def run(settings: Settings) -> Case:
    case = Case("gpu", "GPU training step: bf16-mixed + channels_last against fp32 at 1280x1920")
    if not torch.cuda.is_available():
        case.skipped = "not run: no GPU (torch.cuda.is_available() is False)"
        return case
    size, batch, steps, warmup = ((256, 384), 2, 3, 1) if settings.smoke else ((1280, 1920), 4, 12, 2)
    torch.manual_seed(0)
    net = smp.Linknet("resnet34", encoder_weights=None, classes=1)
    loader = DataLoader(InMemory(size, 4, steps * batch), batch_size=batch, pin_memory=True)
    peaks: dict[str, float | None] = {}

    def timed(name: str, precision: str, channels_last: bool) -> float:
        speed, peaks[name] = measure(net, loader, "gpu", precision, channels_last, warmup)
        return speed

    fast, plain = "bf16-mixed + channels_last", "fp32"
    runs = interleave(
        {fast: lambda: timed(fast, "bf16-mixed", True), plain: lambda: timed(plain, "32-true", False)},
        settings,
    )
    case.comparisons.append(compare("vs fp32", "images/s", runs, fast, plain))
    if peaks[fast] and peaks[plain]:
        case.comparisons.append(
            Comparison(
                "peak memory vs fp32", "GB", peaks[fast], peaks[plain], plain, peaks[fast] / peaks[plain]
            )
        )
    case.setup = {
        "card": torch.cuda.get_device_name(0),
        "model": "smp Linknet resnet34 (random init)",
        "input": f"{size[0]}x{size[1]} uint8, batch {batch}, {steps} steps ({warmup} untimed)",
    }
    return case
