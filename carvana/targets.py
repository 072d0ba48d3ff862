"""Which ``_target_``s a config may name: a config is code, and run folders come from teammates.

``hydra.utils.instantiate`` calls whatever a ``_target_`` names (``numpy.savetxt``, ``torch.hub.load``), and
Hydra's own blocklist stops only ``os.system``-like targets. So every config this project instantiates, its
own or a run folder's ``.hydra/config.yaml``, is checked against the list below first, as a whole, before
anything in it is called or imported beyond the packages the list names.

An entry is an exact dotted name, or a module followed by ``.*``: then any class one level below it whose
base is one of the entry's bases, so a package's helper functions (``albumentations.save``,
``torch.optim.lr_scheduler.warnings``) never pass. ``CARVANA_ALLOWED_TARGETS`` (comma-separated exact names
or ``module.*`` entries, classes or functions defined in that module) extends it for your own code; a run
folder cannot, since it lives in your environment, not in a config.
"""

from __future__ import annotations

import importlib
import inspect
import os
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from carvana.errors import CarvanaError

ENVIRONMENT = "CARVANA_ALLOWED_TARGETS"

# Functions and classes named exactly.
EXACT = frozenset(
    {
        "pytorch_lightning.Trainer",
        "carvana.predict.oof.predict_oof",
        "datetime.timedelta",
    }
)

# module.* -> the bases (by dotted name) its classes must derive from; None: any class defined under the
# module itself (the project's own classes; its functions write files and are never allowed by a prefix).
PREFIXES: dict[str, tuple[str, ...] | None] = {
    "segmentation_models_pytorch": ("torch.nn.Module",),
    "segmentation_models_pytorch.losses": ("torch.nn.Module",),
    "torch.nn": ("torch.nn.Module",),
    "torch.optim": ("torch.optim.Optimizer",),
    "torch.optim.lr_scheduler": (
        "torch.optim.lr_scheduler.LRScheduler",
        "torch.optim.lr_scheduler.ReduceLROnPlateau",
    ),
    "albumentations": ("albumentations.BasicTransform", "albumentations.BaseCompose"),
    "pytorch_lightning.callbacks": ("pytorch_lightning.callbacks.Callback",),
    "pytorch_lightning.loggers": ("pytorch_lightning.loggers.Logger",),
    "pytorch_lightning.strategies": ("pytorch_lightning.strategies.Strategy",),
    "pytorch_lightning.plugins.environments": ("lightning_fabric.plugins.environments.ClusterEnvironment",),
    "hydra_plugins.hydra_submitit_launcher.submitit_launcher": ("hydra.plugins.launcher.Launcher",),
    "carvana.data.datamodule": None,
    "carvana.data.geometry": None,
    "carvana.data.focus": None,
    "carvana.models": None,
    "carvana.train.segmentation_module": None,
    "carvana.train.losses": None,
    "carvana.train.schedules": None,
    "carvana.train.checkpoint_io": None,
    "carvana.train.callbacks": None,
    "carvana.submit.postprocess": None,
    "carvana.submit.submission": None,
    "carvana.submit.pseudo": None,
    "carvana.evaluate.cv_report": None,
}


def _object(name: str) -> Any:
    """The attribute ``name`` of its module, importing the module only; None when there is none."""
    module, _, attribute = name.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attribute, None)
    except ImportError:
        return None


def _user_entries() -> list[str]:
    return [entry.strip() for entry in os.environ.get(ENVIRONMENT, "").split(",") if entry.strip()]


def _defined_under(obj: Any, module: str) -> bool:
    return getattr(obj, "__module__", "") == module or getattr(obj, "__module__", "").startswith(module + ".")


def allowed(target: str) -> bool:
    """Whether a config may name ``target``; imports only modules that an entry names."""
    user = _user_entries()
    if target in EXACT or target in user:
        return True
    module, _, attribute = target.rpartition(".")
    if not attribute or attribute.startswith("_"):
        return False
    if f"{module}.*" in user:
        obj = _object(target)
        return (inspect.isclass(obj) or inspect.isfunction(obj)) and _defined_under(obj, module)
    if module not in PREFIXES:
        return False
    obj = _object(target)
    if not inspect.isclass(obj):
        return False
    bases = PREFIXES[module]
    if bases is None:
        return _defined_under(obj, module)
    return any(isinstance(base := _object(name), type) and issubclass(obj, base) for name in bases)


def targets(node: Any, path: str = "", seen: frozenset[int] = frozenset()) -> Iterator[tuple[str, Any]]:
    """Every ``(config path, _target_)`` in a config tree, nested nodes, lists and interpolated nodes
    included (``seen``: the containers above, so an interpolation pointing back up ends the walk)."""
    if id(node) in seen:
        return
    seen |= {id(node)}
    if isinstance(node, DictConfig):
        items = ((key, node._get_node(key)) for key in node)
        if "_target_" in node:
            yield path or "<root>", OmegaConf.select(node, "_target_", throw_on_resolution_failure=False)
    elif isinstance(node, ListConfig):
        items = ((index, node._get_node(index)) for index in range(len(node)))
    else:
        return
    for key, child in items:
        if key == "_target_":
            continue
        if child._is_interpolation():  # ${aug}: the node it points to is what Hydra will build here
            child = child._maybe_dereference_node(throw_on_resolution_failure=False)
        yield from targets(child, f"{path}.{key}" if path else str(key), seen)


def check(cfg: Any, source: str = "config") -> None:
    """Refuse, in one line naming ``source`` and the node, a config with a ``_target_`` outside the list."""
    for path, target in targets(cfg):
        if not isinstance(target, str) or not allowed(target):
            raise CarvanaError(
                f"{source}: {path}._target_={target} is not allowed; nothing was run "
                f"(if you trust it, add it to {ENVIRONMENT}, comma-separated)"
            )
