"""The package reads as the pipeline: imports only point back along it, and the on-disk contract has one home.

Stages, in the order data flows: data <- models <- train <- predict <- submit <- evaluate. A module may
import the shared top-level modules (errors, files, metrics, config, runs, targets, workers, progress) and
its own or earlier stages, never a later stage, and never another subpackage's private (``_name``)
attribute or module. The shared modules import only each other. ``carvana.cli`` reaches every stage by name,
through importlib.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write

from carvana import runs

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "carvana"
STAGES = ("data", "models", "train", "predict", "submit", "evaluate")
SHARED = ("errors", "files", "metrics", "config", "runs", "targets", "workers", "progress")
ENTRY = ("cli", "__main__", "__init__")


def package_sources() -> dict[str, str]:
    """Every module of the package by dotted name (``carvana.data.kaggle``), with its source."""
    sources = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        sources[name] = path.read_text()
    return sources


def stage(module: str) -> int | None:
    """A module's place in the pipeline: the index of its stage; -1 for a shared module; None for the
    package itself and its command line, which sit above every stage."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in STAGES:
        return STAGES.index(parts[1])
    if len(parts) == 2 and parts[1] in SHARED:
        return -1
    return None


def imports(module: str, source: str, known: set[str]) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) of every ``carvana`` import in ``source``, including those
    inside functions and ``TYPE_CHECKING`` blocks. ``from a import b`` names module ``a.b`` when it is one."""
    found = []
    for node in ast.walk(ast.parse(source, module)):
        if isinstance(node, ast.Import):
            found += [
                (alias.name, "", node.lineno) for alias in node.names if alias.name.startswith("carvana")
            ]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("carvana"):
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                found.append(
                    (target, "", node.lineno) if target in known else (node.module, alias.name, node.lineno)
                )
    return found


def violations(sources: dict[str, str]) -> list[str]:
    """One line per import that breaks the layout rules, naming the module, the line and the import."""
    known = set(sources)
    bad = []
    for module, source in sources.items():
        own = stage(module)
        for target, name, line in imports(module, source, known):
            where = f"{module}:{line} imports {target}{'.' + name if name else ''}"
            theirs = stage(target)
            if own is not None and theirs is None and target != "carvana":
                bad.append(f"{where}: a stage or shared module must not import the command line")
            elif own is not None and theirs is not None and theirs > own:
                earlier = STAGES[own] if own >= 0 else "the shared modules"
                bad.append(f"{where}: {STAGES[theirs]} comes after {earlier}")
            private = [part for part in [*target.split(".")[1:], name] if re.fullmatch(r"_[^_].*|_", part)]
            if private and target.split(".")[:2] != module.split(".")[:2]:
                bad.append(f"{where}: {private[0]} is private to {'.'.join(target.split('.')[:2])}")
    return bad


def test_the_rules_catch_a_forward_import_and_a_private_name():
    example = {
        "carvana.errors": "",
        "carvana.runs": "from carvana.errors import CarvanaError\n",
        "carvana.data.kaggle": "from carvana import runs\nfrom carvana.data.folds import _csv\n",
        "carvana.data.folds": "def helper():\n    from carvana.predict.oof import pooled_dice\n",
        "carvana.predict.oof": "from carvana.data.kaggle import Sample\nfrom carvana.train import _helper\n",
        "carvana.train": "",
        "carvana.files": "import carvana.submit.rle\n",
        "carvana.submit.rle": "",
        "carvana.cli": "from carvana.evaluate.cv_report import main\n",
        "carvana.evaluate.cv_report": "",
    }
    assert violations(example) == [
        "carvana.data.folds:2 imports carvana.predict.oof.pooled_dice: predict comes after data",
        "carvana.predict.oof:2 imports carvana.train._helper: _helper is private to carvana.train",
        "carvana.files:1 imports carvana.submit.rle: submit comes after the shared modules",
    ]


def test_every_module_imports_only_backwards():
    sources = package_sources()
    assert {stage(module) for module in sources} >= {None, -1, *range(len(STAGES))}
    assert violations(sources) == []


def test_every_stage_says_what_comes_in_and_what_goes_out():
    for name in STAGES:
        doc = importlib.import_module(f"carvana.{name}").__doc__
        assert doc and "In:" in doc and "Out:" in doc, name


def code_strings(source: str) -> list[str]:
    """The string constants of a module's code: docstrings (which may name files) left out."""
    tree = ast.parse(source)
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


def test_no_module_outside_runs_spells_a_contract_file_name():
    names = [runs.BEST, runs.LAST, runs.FOLDS, runs.FOLD_SCORE, runs.OOF_SCORE, runs.MANIFEST, runs.WANDB_ID]
    names += [runs.CV_REPORT, runs.SUBMISSION, runs.HEARTBEAT, runs.LEADERBOARD, runs.OOF_WORST]
    names += [runs.WORST_LIST, str(runs.RUN_CONFIG.parent)]
    alternatives = "|".join(map(re.escape, names))
    pattern = re.compile(rf"(^|[^\w.])({alternatives})($|[^\w])")
    for module, source in package_sources().items():
        if module != "carvana.runs":
            spelt = [text for text in code_strings(source) if pattern.search(text)]
            assert not spelt, f"{module} spells {spelt[0]!r}: take the name from carvana.runs"


@pytest.fixture
def train_config():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["hydra.job.num=0"], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.runtime.output_dir = cfg.hydra.run.dir  # what Hydra sets when the job starts
    HydraConfig.instance().set_config(cfg)
    yield cfg
    HydraConfig.instance().cfg = None


def test_the_configs_write_where_runs_reads(train_config):
    """The run-folder paths the configs give Lightning and the data module are the ones carvana.runs names."""
    cfg = train_config
    run_dir = Path(cfg.paths.output_dir)
    checkpoint = cfg.callbacks.model_checkpoint
    assert Path(checkpoint.dirpath) / f"{checkpoint.filename}.ckpt" == runs.checkpoint(run_dir)
    assert Path(checkpoint.dirpath) / runs.LAST == runs.checkpoint(run_dir, runs.LAST)
    assert Path(cfg.callbacks.fold_score.path) == run_dir / runs.FOLD_SCORE
    assert Path(cfg.callbacks.heartbeat.path) == run_dir / runs.HEARTBEAT
    assert Path(cfg.data.folds_file) == run_dir / runs.FOLDS
    assert run_dir == runs.fold_dir(Path(cfg.paths.output_root) / cfg.name, cfg.fold)


def config_targets() -> list[tuple[str, str]]:
    """(file, target) of every ``_target_`` in conf/ and experiments/ that names this package."""
    found = []
    for path in sorted([*(REPO / "conf").rglob("*.yaml"), *(REPO / "experiments").glob("*.yaml")]):
        for match in re.finditer(r"_target_:\s*(carvana\.[\w.]+)", path.read_text()):
            found.append((str(path.relative_to(REPO)), match.group(1)))
    return found


@pytest.mark.parametrize(("path", "target"), config_targets())
def test_every_config_target_exists(path, target):
    module, _, name = target.rpartition(".")
    assert hasattr(importlib.import_module(module), name), f"{path}: {target} does not exist"
