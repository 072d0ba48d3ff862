"""The prediction stage: TTA arithmetic, and predict.py on a real train.py run (synthetic and real test
images, 2-process DDP, a run killed after its 3rd map and continued)."""

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from carvana import runs
from carvana.config import instantiate
from carvana.data.geometry import Geometry
from carvana.errors import CarvanaError
from carvana.predict import checkpoints as prediction
from carvana.predict import inference as predicting
from carvana.predict.prediction_module import PredictionModule
from carvana.runs import read_map, write_map
from carvana.submit import rle, submission
from carvana.submit.postprocess import PostProcess

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
KILLED_AFTER = 3  # maps written whole before the real-image run is killed


def predict_py(*overrides: str, **popen) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "predict.py", *overrides], cwd=REPO, capture_output=True, text=True, **popen
    )


def batch(n: int = 2, height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, height, width, 3), dtype=torch.uint8, generator=generator)


def normalise(image: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1) * 255, torch.tensor(STD).view(1, 3, 1, 1) * 255
    return (image.permute(0, 3, 1, 2).float() - mean) / std


def conv(kernel: tuple[int, int], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv2d(3, 1, kernel, padding=(kernel[0] // 2, kernel[1] // 2)).eval()


@torch.inference_mode()
def test_hflip_of_flip_equivariant_network_equals_plain_pass():
    net = conv((1, 1), seed=0)
    image = batch()
    plain = PredictionModule([net], Geometry(), MEAN, STD, hflip=False)(image)
    flipped = PredictionModule([net], Geometry(), MEAN, STD, hflip=True)(image)
    torch.testing.assert_close(flipped, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(plain, torch.sigmoid(net(normalise(image))))


@torch.inference_mode()
def test_hflip_averages_probabilities_of_both_passes_and_weighted_networks():
    a, b = conv((1, 3), seed=1), conv((3, 5), seed=2)
    image = batch()
    x = normalise(image)

    def tta(net: nn.Module) -> torch.Tensor:
        return (torch.sigmoid(net(x)) + torch.sigmoid(net(x.flip(-1))).flip(-1)) / 2

    one = PredictionModule([a], Geometry(), MEAN, STD)(image)
    torch.testing.assert_close(one, tta(a))
    assert (one - torch.sigmoid(a(x))).abs().max() > 1e-3  # the network is not flip-symmetric

    both = PredictionModule([a, b], Geometry(), MEAN, STD, weights=[3, 1])(image)
    torch.testing.assert_close(both, 0.75 * tta(a) + 0.25 * tta(b))


@torch.inference_mode()
@pytest.mark.parametrize("mode", ["pad", "resize"])
def test_predict_step_gives_uint8_maps_at_the_original_size(mode):
    geometry = Geometry(mode=mode, size=(64, 96))
    module = PredictionModule([conv((3, 3), seed=3)], geometry, MEAN, STD)
    image = batch(2, 64, 96)  # the 60x90 images after geometry.eval(): padded, or resized up
    out = module.predict_step(
        {"id": ["a", "b"], "image": image, "height": torch.tensor([60, 60]), "width": torch.tensor([90, 90])},
        0,
    )
    expected = geometry.restore(module(image), 60, 90)
    assert out["id"] == ["a", "b"]
    for prob, want in zip(out["prob"], expected, strict=True):
        assert prob.dtype == torch.uint8 and prob.shape == (60, 90)
        torch.testing.assert_close(prob, (want[0] * 255).round().to(torch.uint8))


def test_predict_py_after_train_py_writes_a_checked_submission(trained_run, tmp_path):
    out = tmp_path / "pred"
    pseudo_root = tmp_path / "pseudo"
    done = predict_py(
        f"checkpoints={trained_run.parent}/fold*/checkpoints/best.ckpt",
        f"out_dir={out}",
        "trainer=cpu",
        "data.num_workers=0",
        "postprocess=largest_fill",
        "workers=1",
        "pseudo=confident",
        f"pseudo.out_root={pseudo_root}",
        "pseudo.max_uncertain=1",
    )
    assert done.returncode == 0, done.stderr[-3000:]

    sample = trained_run.parents[2] / "cache" / "synthetic" / "sample_submission.csv"
    assert submission.check(out / "submission.csv", sample, shape=(60, 90)) == 16
    rows = [line.split(",")[0] for line in (out / "submission.csv").read_text().splitlines()[1:]]
    assert rows == submission.read_sample(sample)
    assert len(list(out.glob("*.zst"))) == 16
    for path in out.glob("*.zst"):
        assert read_map(path).shape == (60, 90)
    manifest = OmegaConf.load(out / "manifest.json")
    assert manifest.images == 16 and manifest.tta.hflip and manifest.weights == [1.0]
    assert manifest.checkpoints == [str(trained_run / "checkpoints" / "best.ckpt")]
    assert len(list((pseudo_root / "train_masks").glob("*_mask.gif"))) == 16  # max_uncertain=1 keeps all


def test_bad_input_is_one_line_and_exit_status_2(tmp_path):
    done = predict_py(f"checkpoints={tmp_path}/nothing/fold*/checkpoints/best.ckpt")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: checkpoints: no checkpoint matches {tmp_path}/nothing/fold*/checkpoints/best.ckpt"
    ]


def test_missing_sample_submission_is_reported_before_predicting(trained_run, tmp_path):
    root = tmp_path / "root"
    (root / "test").mkdir(parents=True)
    synthetic_test = trained_run.parents[2] / "cache" / "synthetic" / "test"
    shutil.copy(next(synthetic_test.glob("*.jpg")), root / "test")
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("predict", [f"checkpoints={trained_run}/checkpoints/best.ckpt", f"data.root={root}"])
    with pytest.raises(CarvanaError, match=f"^{root}/sample_submission.csv: no sample submission"):
        predicting.predict(cfg)


def copy_run(run: Path, to: Path, **geometry) -> Path:
    shutil.copytree(run, to)
    config = OmegaConf.load(to / ".hydra" / "config.yaml")
    config.data.geometry.update(geometry)
    OmegaConf.save(config, to / ".hydra" / "config.yaml")
    return to / "checkpoints" / "best.ckpt"


def test_checkpoint_sets_take_weights_and_share_one_geometry(trained_run, tmp_path):
    a = copy_run(trained_run, tmp_path / "a" / "fold0")
    b = copy_run(trained_run, tmp_path / "a" / "fold1", mode="crop")  # crop-trained: predicts padded too
    c = copy_run(trained_run, tmp_path / "c" / "fold0", mode="resize", size=[64, 96])
    group = prediction.members([{"path": f"{tmp_path}/a/fold*/checkpoints/best.ckpt", "weight": 1}, str(c)])
    assert [(m.checkpoint, m.weight) for m in group] == [(a, 1 / 3), (b, 1 / 3), (c, 1 / 3)]
    assert prediction.common_geometry(group[:2]).mode == "pad"
    with pytest.raises(CarvanaError, match=f"{c} predicts with geometry .*resize.*, {a} with .*pad"):
        prediction.common_geometry(group)
    weighted = prediction.members(OmegaConf.create([{"path": str(a), "weight": 3}, str(c)]))
    assert [m.weight for m in weighted] == [0.75, 0.25]


def test_ensemble_file_gives_checkpoints_weights_threshold_and_postprocess(trained_run, tmp_path):
    """``ensemble=`` a carvana select file: each experiment's weight shared by its folds, one of weight 0
    left out, its threshold and post-processing in the submission step."""
    a0, a1 = (copy_run(trained_run, tmp_path / "a" / f"fold{k}") for k in (0, 1))
    c0 = copy_run(trained_run, tmp_path / "c" / "fold0")
    copy_run(trained_run, tmp_path / "unused" / "fold0")
    steps = {"largest_component": True, "min_size": 0, "fill_holes": False}
    selection = runs.write_selection(
        tmp_path / runs.SELECTION,
        {
            "experiments": [str(tmp_path / name) for name in ("a", "c", "unused")],
            "weights": [0.75, 0.25, 0.0],
            "threshold": 0.3,
            "postprocess": steps,
        },
    )
    overrides = [f"ensemble={selection}", f"out_dir={tmp_path / 'pred'}", "trainer=cpu", "data.num_workers=0"]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("predict", [*overrides, "workers=1"])
        twice = compose("predict", [*overrides, f"checkpoints={a0}"])
    out = predicting.predict(cfg)
    manifest = OmegaConf.load(out / "manifest.json")
    assert manifest.checkpoints == [str(a0), str(a1), str(c0)] and manifest.weights == [0.375, 0.375, 0.25]
    assert manifest.threshold == 0.3 and (out / "submission.csv").is_file()
    step = instantiate(cfg.submission)
    assert step.threshold == 0.3 and step.postprocess == PostProcess(**steps)
    with pytest.raises(CarvanaError, match="drop checkpoints="):
        predicting.predict(twice)


def test_ddp_writes_every_image_exactly_once(trained_run, tmp_path):
    """2 CPU processes (gloo) on 15 images: Lightning's predict sampler must not pad (repeat) one."""
    out = tmp_path / "pred"
    out.mkdir()
    images = sorted((trained_run.parents[2] / "cache" / "synthetic" / "test").glob("*.jpg"))
    done_before = write_map(out, images[0].stem, np.zeros((60, 90), np.uint8))  # 15 left, an odd count
    mtime = done_before.stat().st_mtime_ns
    done = predict_py(
        f"checkpoints={trained_run}/checkpoints/best.ckpt",
        f"out_dir={out}",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "data.num_workers=0",
        "hydra.verbose=carvana.predict.map_writer",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    writes = re.findall(r"rank (\d) wrote (\S+)", done.stdout + done.stderr)
    ids = [image_id for _, image_id in writes]
    assert sorted(ids) == [image.stem for image in images[1:]]  # each once, the done one not again
    assert {rank for rank, _ in writes} == {"0", "1"}
    assert done_before.stat().st_mtime_ns == mtime
    assert (out / "manifest.json").is_file()
    assert (
        submission.check(
            out / "submission.csv", images[0].parents[1] / "sample_submission.csv", shape=(60, 90)
        )
        == 16
    )


@pytest.fixture(scope="module")
def resumed_real(trained_run, tmp_path_factory, shared_full) -> dict:
    """The 13 real 1918x1280 test JPEGs predicted by a run SIGKILLed once its 3rd map is written whole
    (``tests/kill_switch.py``; one writer thread writes the maps in order), then run again.

    The checkpoint is the tiny trained one; its run's config is switched to resize geometry (256x384) so
    that a CPU predicts a full-size image in well under a second.
    """
    tmp = tmp_path_factory.mktemp("real")
    run = tmp / "outputs" / "resized" / "fold0"
    shutil.copytree(trained_run, run)
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    config.data.geometry.mode, config.data.geometry.size = "resize", [256, 384]
    OmegaConf.save(config, run / ".hydra" / "config.yaml")

    out = tmp / "pred"
    overrides = [
        f"checkpoints={run}/checkpoints/best.ckpt",
        f"out_dir={out}",
        f"data.root={shared_full}",
        "submission.subset=true",
        "trainer=cpu",
        "data.batch_size=1",
        "data.num_workers=0",
        "writer_threads=1",
    ]
    kill = [str(REPO / "tests" / "kill_switch.py"), "carvana.runs:write_map", str(KILLED_AFTER), "KILL", "--"]
    first = subprocess.run(
        [sys.executable, *kill, "predict.py", *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        start_new_session=True,  # the kill takes the process group: this command's alone
    )
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    killed = {path.name: path.stat().st_mtime_ns for path in out.glob("*.zst")}

    second = predict_py(*overrides)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"out": out, "killed": killed, "log": second.stdout + second.stderr}


def test_killed_run_continues_without_recomputing(resumed_real):
    out, killed = resumed_real["out"], resumed_real["killed"]
    assert len(killed) == KILLED_AFTER
    assert f"{out}: {13 - KILLED_AFTER} of 13 images to predict" in resumed_real["log"]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.zst") if p.name in killed} == killed
    assert len(list(out.glob("*.zst"))) == 13 and not list(out.glob(".*.tmp"))
    assert OmegaConf.load(out / "manifest.json").images == 13


def test_real_test_images_give_full_size_maps_and_exact_rles(resumed_real, shared_full):
    out = resumed_real["out"]
    ids = sorted(image.stem for image in (shared_full / "test").glob("*.jpg"))
    lines = (out / "submission.csv").read_text().splitlines()
    assert lines[0] == "img,rle_mask" and len(lines) == 14
    sample = submission.read_sample(shared_full / "sample_submission.csv")
    assert len(sample) == 100_064
    rows = [line.partition(",")[0] for line in lines[1:]]
    assert rows == [img for img in sample if Path(img).stem in ids]  # sample order
    for line in lines[1:]:
        img, _, encoded = line.partition(",")
        prob = read_map(out / f"{Path(img).stem}.zst")
        assert prob.shape == (1280, 1918) and prob.dtype == np.uint8
        np.testing.assert_array_equal(rle.decode(encoded, (1280, 1918)), (prob > 127).astype(np.uint8))
