"""``python -m bench.memory_probe FOLDER COUNT``: predict COUNT images cycled from FOLDER's JPEGs the way
the project does, then print the process's peak RSS (VmHWM) as JSON.

A fresh process per count: the peak is a high-water mark that never goes down, so two counts measured in
one process would only show the larger. Predicting many images must not need more memory than predicting a
few: maps go to the MapWriter's bounded queue, and ``return_predictions=False`` keeps none.
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

from bench.data import MEAN, STD, TINY, bare_trainer, conv_net
from carvana import runs
from carvana.data.geometry import Geometry
from carvana.data.kaggle import Sample, list_images
from carvana.predict.map_writer import MapWriter
from carvana.predict.prediction_module import PredictionModule, predict_missing


def main(folder: Path, count: int) -> dict[str, float]:
    torch.set_num_threads(1)
    images = list_images(folder)
    samples = [
        Sample(f"{images[i % len(images)].stem}_{i:05d}", images[i % len(images)]) for i in range(count)
    ]
    module = PredictionModule([conv_net(TINY)], Geometry(), list(MEAN), list(STD), hflip=True)
    with tempfile.TemporaryDirectory(prefix="carvana-bench-memory-") as out:
        writer = MapWriter(out, threads=2)
        trainer = bare_trainer(callbacks=[writer])
        done = predict_missing(trainer, module, samples, writer, 0.0, 2, 2)
        written = len(runs.map_ids(out))
    assert done == written == count, (done, written, count)
    return {"images": count, "peak_rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """The kernel's RSS high-water mark of this process (VmHWM). Not getrusage's ru_maxrss: exec keeps the
    maximum of the forked parent's RSS in it, so a probe started by a big process would report the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


if __name__ == "__main__":
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    print(json.dumps(main(Path(sys.argv[1]), int(sys.argv[2]))))
