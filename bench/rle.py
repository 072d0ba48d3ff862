"""Case 4: ``carvana.rle.encode`` against the classic Kaggle encoder on the real full-resolution masks."""

from __future__ import annotations

import numpy as np

from bench.data import as_bool_masks, real_samples
from bench.harness import Case, Settings, compare, interleave, rate
from carvana.submit import rle


def kaggle_encode(mask: np.ndarray) -> str:
    """The encoder of the public Kaggle kernels, verbatim: flatten, pad with zeros, diff, subtract."""
    pixels = mask.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def run(settings: Settings) -> Case:
    masks = as_bool_masks(real_samples(4 if settings.smoke else None))
    case = Case("rle", "RLE encoding of real 1918x1280 masks")
    case.setup = {"masks": len(masks), "input": "bool (H, W), as submission.write thresholds them"}
    case.checks["identical_strings"] = all(rle.encode(m) == kaggle_encode(m) for m in masks)
    mine, theirs = "carvana.rle.encode", "Kaggle numpy encoder"
    runs = interleave(
        {
            mine: lambda: rate(len(masks), lambda: [rle.encode(m) for m in masks]),
            theirs: lambda: rate(len(masks), lambda: [kaggle_encode(m) for m in masks]),
        },
        settings,
    )
    head = compare("vs classic Kaggle encoder", "masks/s", runs, mine, theirs, 3.0)
    case.comparisons.append(head)
    case.notes.append(
        f"per mask: {1e3 / head.project:.2f} ms against {1e3 / head.baseline:.2f} ms; all 100,064 test masks "
        f"in {100_064 / head.project / 60:.1f} min against {100_064 / head.baseline / 60:.1f} min on one CPU"
    )
    return case
