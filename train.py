"""Train one fold: ``python train.py model=linknet34 fold=2`` (``-m`` for sweeps). See README.md."""

import hydra
from omegaconf import DictConfig

from carvana.errors import run_task
from carvana.train.fit import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return run_task(train, cfg)


if __name__ == "__main__":
    main()
