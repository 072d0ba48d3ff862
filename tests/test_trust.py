"""Files from someone else cannot run code: run-folder configs name only allowed targets, and checkpoints
load as plain data. Each attack here would write a file if it ran; the tests check that none appeared."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from carvana import targets
from carvana.errors import CarvanaError
from carvana.runs import BEST, LAST, RUN_CONFIG, checkpoint

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [*REPO.glob("conf/**/*.yaml"), *REPO.glob("experiments/**/*.yaml")]


class Payload:
    """Unpickling this creates the file ``path``: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def run(script: str, *overrides: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, script, *overrides], cwd=REPO, capture_output=True, text=True, env=env, timeout=600
    )


def refused(done: subprocess.CompletedProcess, *named: str) -> None:
    """Exit status 2, one ``error:`` line that names each of ``named``, and no traceback."""
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    for name in named:
        assert name in lines[0]


def predict(run_dir: Path, out_dir: Path) -> subprocess.CompletedProcess:
    return run("predict.py", f"checkpoints={checkpoint(run_dir)}", f"out_dir={out_dir}", "trainer=cpu")


@pytest.fixture
def shared_run(trained_run, tmp_path) -> Path:
    """A copy of a real run folder, as a teammate would hand it over."""
    run_dir = tmp_path / "outputs" / "quickstart" / "fold0"
    shutil.copytree(trained_run, run_dir)
    return run_dir


def every_target(path: Path) -> list[str]:
    return [target for _, target in targets.targets(OmegaConf.load(path))]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: str(path.relative_to(REPO)))
def test_every_target_the_project_names_is_allowed(path):
    assert all(targets.allowed(target) for target in every_target(path))


@pytest.mark.parametrize(
    "target",
    [
        "numpy.savetxt",
        "shutil.copyfile",
        "torch.save",
        "torch.hub.load",
        "builtins.exec",
        "os.system",
        "albumentations.save",  # a function beside the transforms
        "torch.optim.lr_scheduler.warnings",  # a module imported into an allowed one
        "segmentation_models_pytorch.losses.dice.torch.save",  # reached through a deeper path
        "carvana.files.atomic_write_text",  # the project's own file writers
        "carvana.models.unet.torch.save",
        "carvana.data.datamodule.DataLoader",  # a class imported into the project, not defined in it
        "torch.optim._functional.adam",
    ],
)
def test_targets_outside_the_list_are_refused(target):
    assert not targets.allowed(target)


def test_the_environment_extends_the_list(monkeypatch):
    assert not targets.allowed("collections.OrderedDict")
    monkeypatch.setenv(targets.ENVIRONMENT, "collections.OrderedDict, fractions.*")
    assert targets.allowed("collections.OrderedDict") and targets.allowed("fractions.Fraction")
    assert not targets.allowed("fractions.math")  # a module imported into fractions, not defined there


def test_nested_and_interpolated_targets_are_checked():
    aug = {"flip": {"_target_": "numpy.savetxt"}}
    bad = OmegaConf.create({"aug": aug, "data": {"augment": "${aug}", "x": [{"_target_": "b"}]}})
    found = dict(targets.targets(bad.data))
    assert found == {"augment.flip": "numpy.savetxt", "x.0": "b"}
    with pytest.raises(CarvanaError, match=r"run.yaml: augment.flip._target_=numpy.savetxt is not allowed"):
        targets.check(bad.data, source="run.yaml")


@pytest.mark.parametrize(
    "node, value",
    [
        ("model", {"_target_": "numpy.savetxt", "fname": "{pwned}", "X": [1.0]}),
        ("data.geometry", {"_target_": "torch.save", "obj": [1], "f": "{pwned}"}),
        ("trainer.plugins", [{"_target_": "shutil.copyfile", "src": __file__, "dst": "{pwned}"}]),
    ],
)
def test_predict_refuses_a_run_config_naming_a_file_writer(shared_run, tmp_path, node, value):
    pwned = tmp_path / "pwned"
    config = OmegaConf.load(shared_run / RUN_CONFIG)
    text = OmegaConf.to_yaml(OmegaConf.create({"v": value})).replace("{pwned}", str(pwned))
    OmegaConf.update(config, node, OmegaConf.create(text).v, force_add=True)
    OmegaConf.save(config, shared_run / RUN_CONFIG)
    target = (value[0] if isinstance(value, list) else value)["_target_"]

    done = predict(shared_run, tmp_path / "pred")
    refused(done, str(shared_run / RUN_CONFIG), target)
    if node == "model":  # the out-of-fold pass reads the same file through the same door
        oof = subprocess.run(
            [sys.executable, "-m", "carvana", "oof", str(shared_run)],
            cwd=REPO,
            capture_output=True,
            text=True,
        )
        refused(oof, str(shared_run / RUN_CONFIG), target)
    assert not pwned.exists() and not (tmp_path / "pred").exists()


def payload_checkpoint(source: Path, path: Path, pwned: Path) -> Path:
    """``source``'s checkpoint with one extra entry that runs code when unpickled without weights_only."""
    state = torch.load(source, map_location="cpu", weights_only=True)
    state["extra"] = Payload(pwned)
    torch.save(state, path)
    return path


def test_a_pickle_payload_runs_without_weights_only(shared_run, tmp_path):
    """The attack is real: loading the file the old way creates the file."""
    pwned = tmp_path / "pwned"
    path = payload_checkpoint(checkpoint(shared_run), tmp_path / "evil.ckpt", pwned)
    torch.load(path, weights_only=False)
    assert pwned.exists()


def test_predict_refuses_a_checkpoint_carrying_a_payload(shared_run, tmp_path):
    pwned = tmp_path / "pwned"
    payload_checkpoint(checkpoint(shared_run), checkpoint(shared_run), pwned)
    done = predict(shared_run, tmp_path / "pred")
    refused(done, str(checkpoint(shared_run)))
    assert not pwned.exists()


def training_overrides(tmp_path: Path, trained_run: Path) -> list[str]:
    """The overrides of the ``trained_run`` fixture, writing under ``tmp_path``."""
    return [
        "+experiment=quickstart", f"paths.output_root={tmp_path}/outputs",
        f"paths.cache_dir={trained_run.parents[2]}/cache", "model=linknet18", "data.synthetic.cars=5",
        "data.synthetic.test_cars=1", "data.synthetic.width=90", "data.synthetic.height=60",
        "data.num_workers=0", "trainer.max_epochs=2", "logger=none", "fold=0", "oof=false",
    ]  # fmt: skip


def test_init_from_refuses_a_checkpoint_carrying_a_payload(trained_run, tmp_path):
    pwned = tmp_path / "pwned"
    evil = payload_checkpoint(checkpoint(trained_run), tmp_path / "evil.ckpt", pwned)
    done = run("train.py", *training_overrides(tmp_path, trained_run), f"init_from={evil}")
    refused(done, str(evil))
    assert not pwned.exists()


def test_resume_refuses_a_last_checkpoint_carrying_a_payload(shared_run, trained_run, tmp_path):
    pwned = tmp_path / "pwned"
    last = checkpoint(shared_run, LAST)
    payload_checkpoint(checkpoint(shared_run, BEST), last, pwned)
    done = run("train.py", *training_overrides(tmp_path, trained_run))
    refused(done, str(last))
    assert not pwned.exists()


def test_train_refuses_a_target_outside_the_list_before_building_anything(tmp_path):
    pwned = tmp_path / "pwned"
    done = run(
        "train.py", f"paths.output_root={tmp_path}/outputs", f"paths.cache_dir={tmp_path}/cache",
        "+callbacks.evil._target_=numpy.savetxt", f"+callbacks.evil.fname={pwned}", "+callbacks.evil.X=[1]",
    )  # fmt: skip
    refused(done, "callbacks.evil._target_=numpy.savetxt", targets.ENVIRONMENT)
    assert not pwned.exists() and not (tmp_path / "cache").exists()
