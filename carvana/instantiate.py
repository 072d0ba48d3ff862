"""The project's one door to ``hydra.utils.instantiate``: every object built from config comes through here.

It unwraps Hydra's ``InstantiationException`` so that a ``CarvanaError`` raised by a constructor, and a
failed download of pretrained encoder weights, reach the user as one line instead of a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from carvana.errors import CarvanaError

NETWORK_MODULES = ("huggingface_hub", "httpx", "httpcore", "requests", "urllib", "urllib3", "socket")


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while error is not None and error not in seen:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def _is_download_failure(error: BaseException) -> bool:
    return any(
        isinstance(e, ConnectionError | TimeoutError) or type(e).__module__.split(".")[0] in NETWORK_MODULES
        for e in _chain(error)
    )


def instantiate(cfg: DictConfig, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` with plain containers, re-raising our own errors unwrapped."""
    try:
        return hydra.utils.instantiate(cfg, _convert_="all", **kwargs)
    except Exception as error:
        ours = next((e for e in _chain(error) if isinstance(e, CarvanaError)), None)
        if ours is not None:
            raise ours from None
        raise


def build_model(cfg: DictConfig) -> Any:
    """Instantiate a network; when its pretrained weights cannot be fetched, say how to fix it in one line."""
    weights = cfg.get("encoder_weights")
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)  # its retry warnings would bury the one line that matters
    try:
        return instantiate(cfg)
    except Exception as error:
        if weights is None or not _is_download_failure(error):
            raise
        from huggingface_hub.constants import HF_HUB_CACHE

        raise CarvanaError(
            f"model.encoder_weights={weights}: cannot fetch the pretrained {cfg.get('encoder_name')} weights "
            f"(offline?); put them in the Hugging Face cache ({HF_HUB_CACHE}, or set HF_HOME) "
            "from a machine with internet, or train from scratch with model.encoder_weights=null"
        ) from None
    finally:
        hub_logger.setLevel(level)
