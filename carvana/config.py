"""Configs: the project's one door to ``hydra.utils.instantiate``, its resolvers, and run configs read back.

Every object built from config comes through ``instantiate``, which first refuses any ``_target_`` outside
``carvana.targets``' allow-list (a run folder's config is checked whole as it is read). It unwraps Hydra's
``InstantiationException`` so that a ``CarvanaError`` raised by a constructor, and a failed download of
pretrained encoder weights, reach the user as one line instead of a stack trace. Training, prediction and the
out-of-fold pass build their ``pl.Trainer`` from the ``trainer`` group through ``build_trainer``, so devices,
strategy and precision are set in one place.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig, OmegaConf

from carvana import runs, targets
from carvana.errors import CarvanaError

# ${eq:a,b}: the W&B logger's `offline` setting follows WANDB_MODE (conf/logger/wandb.yaml).
OmegaConf.register_new_resolver("eq", lambda a, b: str(a) == str(b), replace=True)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX). Without either, oneDNN emulates it
    and a bf16-autocast training step is about 14x slower than fp32 (an AVX2 EPYC; README, Quality per
    CPU-minute)."""
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


# ${cpu_precision:}: bf16 autocast where the CPU has it natively, else fp32 (trainer.precision on a CPU)
OmegaConf.register_new_resolver(
    "cpu_precision", lambda: "bf16-mixed" if native_cpu_bf16() else "32-true", replace=True
)

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
    """``hydra.utils.instantiate`` with plain containers, re-raising our own errors unwrapped; every
    ``_target_`` in ``cfg`` and in config-valued ``kwargs`` must be allowed (``carvana.targets``) first."""
    targets.check(cfg)
    for key, value in kwargs.items():
        targets.check(value, source=f"config ({key})")
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


def build_trainer(trainer: DictConfig, **overrides: Any) -> Any:
    """A ``pl.Trainer`` from a ``trainer`` config node; ``overrides`` (callbacks, logger, default_root_dir...)
    replace its entries before anything is resolved, so a run config's Hydra-only paths need not resolve."""
    return instantiate(trainer, **overrides)


def load_run_config(run_dir: str | Path, check_targets: bool = True) -> DictConfig:
    """A run folder's composed training config (its ``${hydra:...}`` entries stay unresolved), refused
    whole if it names a target outside the allow-list; ``check_targets=False`` for readers that build
    nothing from it."""
    path = Path(run_dir) / runs.RUN_CONFIG
    if not path.is_file():
        raise CarvanaError(
            f"{run_dir}: no {runs.RUN_CONFIG}; checkpoints must stay in their run folder "
            f"(<run>/{runs.CHECKPOINTS}/<name>.ckpt beside <run>/{runs.RUN_CONFIG.parent}/)"
        )
    try:
        config = OmegaConf.load(path)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise CarvanaError(f"{path}: not a readable config ({str(error).splitlines()[0]})") from None
    if not isinstance(config, DictConfig):
        raise CarvanaError(f"{path}: not a config (a YAML mapping)")
    if check_targets:
        targets.check(config, source=str(path))
    return config
