"""Every model config composes through Hydra, builds offline and trains: forward and backward at 64x96."""

from pathlib import Path

import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import carvana.config  # noqa: F401  (registers the `eq` resolver of the logger config)
from carvana.config import build_model
from carvana.errors import CarvanaError
from carvana.models import DilatedUNet, UNet
from carvana.models.dilated_unet import DilatedCascade

CONF = Path(__file__).resolve().parents[1] / "conf"
MODELS = sorted(path.stem for path in (CONF / "model").glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("one_thread")


def model_config(name: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[f"model={name}", "model.encoder_weights=null"]).model


@pytest.mark.parametrize("name", MODELS)
def test_model_config_builds_offline_and_trains(name):
    text = (CONF / "model" / f"{name}.yaml").read_text()
    assert text.startswith("# ")  # says who used it
    raw = yaml.safe_load(text)
    assert "encoder_weights" in raw and "in_channels" in raw and raw["classes"] == 1
    if raw["encoder_weights"] is None:  # from scratch: our own networks, which have no pretrained weights
        assert raw["_target_"].startswith("carvana.")

    torch.manual_seed(0)
    net = build_model(model_config(name))
    x = torch.randn(2, raw["in_channels"], 64, 96, requires_grad=True)  # RGB, or RGB + maps (second level)
    out = net(x)
    assert out.shape == (2, 1, 64, 96)
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_own_networks_refuse_pretrained_weights():
    with pytest.raises(CarvanaError, match=r"model\.encoder_weights=imagenet"):
        UNet(encoder_weights="imagenet")


def test_dilated_unet_bottleneck_sums_a_cascade_of_dilations():
    net = DilatedUNet(base_channels=4)
    assert isinstance(net.bottleneck, DilatedCascade)
    convs = [level[0] for level in net.bottleneck.levels]
    assert [c.dilation[0] for c in convs] == [1, 2, 4, 8, 16, 32]
    x = torch.randn(1, 16, 8, 12)
    # each level feeds the next, and the block returns the sum of all their outputs
    outputs, y = [], x
    for level in net.bottleneck.levels:
        y = level(y)
        outputs.append(y)
    assert torch.allclose(net.bottleneck(x), torch.stack(outputs).sum(0))
