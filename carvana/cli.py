"""What the Hydra entry points share: config resolvers, and bad input reported as one line with exit status 2.

The ``python -m carvana.<stage>`` commands use ``carvana.errors.report`` instead, which prints the same
``error:`` line without importing OmegaConf (~50 ms of start-up).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from omegaconf import DictConfig, OmegaConf

from carvana.errors import CarvanaError, print_error

T = TypeVar("T")

OmegaConf.register_new_resolver("eq", lambda a, b: str(a) == str(b), replace=True)


def run(task: Callable[[DictConfig], T], cfg: DictConfig) -> T:
    """Run a stage; a ``CarvanaError`` becomes ``error: <message>`` on stderr and exit status 2."""
    try:
        return task(cfg)
    except CarvanaError as error:
        sys.exit(print_error(error))
