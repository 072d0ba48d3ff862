"""Predict test images with trained folds, write submission.csv. See README.md.

python predict.py checkpoints='outputs/linknet34/fold*/checkpoints/best.ckpt'
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from carvana.errors import run_task
from carvana.predict.inference import predict


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> Path:
    return run_task(predict, cfg)


if __name__ == "__main__":
    main()
