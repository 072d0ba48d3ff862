"""Every recipe and sweep in experiments/ composes with conf/train.yaml and builds; the cluster and search
configs say what they promise (SLURM: one task per GPU and requeue; W&B Sweeps: the agent's command)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from submitit.core.utils import DelayedSubmission
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args, load_sweep_config

import carvana.config  # registers the resolvers (eq, cpu_precision) the configs use
from carvana.config import build_model, instantiate

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
WANDB_SWEEP = REPO / "experiments" / "wandb_sweep.yaml"  # W&B's format, read by `wandb sweep`, not by Hydra
EXPERIMENTS = sorted(p.stem for p in (REPO / "experiments").glob("*.yaml") if p != WANDB_SWEEP)

# What each recipe picks from the config groups (hydra.runtime.choices), beyond the defaults.
CHOICES = {
    "80tflops_linknet34": {"model": "linknet34", "loss": "bce_dice_80tflops", "aug": "hflip"},
    "albu_linknet34": {"model": "linknet34", "scheduler": "step_cyclic", "aug": "albu", "optimizer": "adam"},
    "ternaus_unet11": {"model": "unet_vgg11", "aug": "ternaus"},
    "lyakaap_dilated_unet": {"model": "dilated_unet", "optimizer": "rmsprop", "aug": "hflip"},
    "petrosgk_unet": {"model": "unet", "optimizer": "rmsprop", "loss": "bce_dice"},
    "zoo_folds5": {"loss": "bce_dice_80tflops"},
    "optuna_lr_loss": {"hydra/sweeper": "optuna", "hydra/sweeper/sampler": "tpe"},
    "two_stage": {"model": "linknet34", "aug": "hflip"},
    "contour": {"model": "refine_unet", "aug": "hflip"},
}


@pytest.fixture(autouse=True)
def _forget_hydra_config():
    """``composed`` sets Hydra's global config for ``${hydra:...}``; other tests must not see it."""
    yield
    HydraConfig.instance().cfg = None


def composed(*overrides: str) -> DictConfig:
    """conf/train.yaml with ``overrides``, the hydra node included and ``${hydra:...}`` resolvable."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_builds(name):
    cfg = composed(f"+experiment={name}", "model.encoder_weights=null", "hydra.job.num=0")
    choices = cfg.hydra.runtime.choices
    assert choices["experiment"] == name
    assert {group: choices[group] for group in CHOICES.get(name, {})} == CHOICES.get(name, {})
    if name in ("folds5", "zoo_folds5"):
        assert cfg.name == choices["model"]  # one run folder, W&B group and CV row per model
    elif name == "optuna_lr_loss":
        assert cfg.name == "optuna_lr_loss/trial0"  # a folder per trial
    else:
        assert cfg.name == name

    net = build_model(cfg.model)
    optimizer = instantiate(cfg.optimizer)(net.parameters())
    if cfg.get("scheduler"):
        instantiate(cfg.scheduler)(
            optimizer, **({"total_steps": 10} if "total_steps" in cfg.scheduler else {})
        )
    instantiate(cfg.loss)(torch.zeros(1, 1, 32, 32), torch.ones(1, 1, 32, 32))
    instantiate(cfg.data.geometry)
    instantiate(cfg.aug)
    assert (cfg.logger.group, cfg.logger.name) == (cfg.name, f"{cfg.name}-fold0")
    assert all(isinstance(tag, str) for tag in cfg.logger.tags)


def test_recipe_settings():
    albu = composed("+experiment=albu_linknet34")
    assert (albu.optimizer.lr, albu.trainer.max_epochs, albu.data.geometry.mode) == (1.0e-4, 40, "pad")
    tflops = composed("+experiment=80tflops_linknet34")
    assert (tflops.loss.bce_weight, tflops.loss.dice_weight) == (0.2, 0.8)
    petrosgk = composed("+experiment=petrosgk_unet")
    assert list(petrosgk.data.geometry.size) == [1024, 1024] and petrosgk.data.geometry.mode == "resize"
    assert composed("+experiment=pseudo_pretrain").data.pseudo_root == "data/pseudo1"
    finetune = composed("+experiment=pseudo_finetune", "fold=3")
    assert finetune.init_from == "outputs/pseudo_pretrain/fold3/checkpoints/best.ckpt"  # each fold its own
    assert finetune.optimizer.lr < albu.optimizer.lr


def test_cpu_recipe_uses_bf16_only_where_the_cpu_has_it():
    """bf16 autocast is emulated without AVX-512 BF16 or AMX (14x slower than fp32 on an AVX2 EPYC): the
    recipe's precision follows the CPU's own flags, read here from /proc/cpuinfo."""
    flags = set(Path("/proc/cpuinfo").read_text().split())
    native = bool(flags & {"avx512_bf16", "amx_bf16"})
    cfg = composed("+experiment=cpu_small512")
    assert cfg.trainer.precision == ("bf16-mixed" if native else "32-true")
    assert carvana.config.native_cpu_bf16() is native
    resize = instantiate(cfg.callbacks.progressive_resize)
    assert [resize.size(f) for f in (0.0, 0.3, 0.59, 0.6)] == [(128, 128), (192, 192), (192, 192), None]


def test_fold_sweeps_are_multiruns_over_folds_and_models():
    folds5 = composed("+experiment=folds5")
    assert folds5.hydra.mode == RunMode.MULTIRUN and folds5.n_folds == 5
    assert folds5.hydra.sweeper.params == {"fold": "0,1,2,3,4"}
    recipe = composed("+experiment=[albu_linknet34,folds5]")  # a recipe on all folds
    assert recipe.hydra.mode == RunMode.MULTIRUN and recipe.name == "albu_linknet34"
    zoo = composed("+experiment=zoo_folds5")
    models = zoo.hydra.sweeper.params.model.split(",")
    assert len(models) > 3 and all((CONF / "model" / f"{model}.yaml").is_file() for model in models)
    assert zoo.hydra.sweeper.params.fold == "0,1,2,3,4"


def test_default_logger_tags_follow_the_recipe_and_other_loggers_compose():
    assert list(composed("+experiment=albu_linknet34").logger.tags) == ["1st-place", "albu", "linknet34"]
    assert "tags" not in composed("+experiment=albu_linknet34", "logger=csv").logger
    assert not composed("+experiment=albu_linknet34", "logger=none").get("logger")


def test_slurm_launcher_runs_one_task_per_gpu_and_requeues():
    cfg = composed(
        "hydra/launcher=slurm",
        "trainer=ddp",
        "trainer.devices=4",
        "hydra.launcher.partition=gpu",
        "hydra.launcher.account=carvana",
        "hydra.launcher.timeout_min=600",
    )
    launcher = instantiate(cfg.hydra.launcher)
    assert type(launcher).__name__ == "SlurmLauncher"
    params = launcher.params
    assert params["tasks_per_node"] == params["gpus_per_node"] == 4 and params["nodes"] == 1
    assert (params["partition"], params["account"], params["timeout_min"]) == ("gpu", "carvana", 600)
    assert params["max_num_timeout"] >= 1  # a timed-out job requeues (a pre-empted one always does)
    # What submitit dumps when the job is pre-empted or times out: the same job, to be run again as it was.
    job = (["fold=2", "trainer=ddp"], "hydra.sweep.dir", 2, "job_id_for_2", {})
    requeued = launcher.checkpoint(*job)
    assert isinstance(requeued, DelayedSubmission) and requeued.function is launcher and requeued.args == job


def test_wandb_sweep_drives_train_py_with_hydra_overrides(monkeypatch):
    sweep = load_sweep_config(str(WANDB_SWEEP))
    assert sweep["program"] == "train.py" and sweep["metric"]["goal"] == "maximize"
    assert "${args_no_hyphens}" in sweep["command"]
    # The agent's first run, its command built as wandb's agent builds it.
    first = {
        key: spec["min"] if "min" in spec else spec["values"][0] for key, spec in sweep["parameters"].items()
    }
    run_args = {key: {"value": value} for key, value in first.items()}
    macros = {**create_sweep_command_args({"args": run_args}), "env": [], "interpreter": [], "program": []}
    command = []
    for chunk in create_sweep_command(list(sweep["command"])):
        command += macros[chunk[2:-1]] if chunk.startswith("${") and chunk[2:-1] in macros else [chunk]
    assert command[-len(first) :] == [f"{key}={value}" for key, value in first.items()]
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")  # set by the agent for each run
    cfg = composed(*command)
    assert cfg.name == "wandb_sweep/abc123" and cfg.logger.offline is False
    assert (cfg.optimizer.lr, cfg.loss.bce_weight) == (first["optimizer.lr"], first["loss.bce_weight"])
