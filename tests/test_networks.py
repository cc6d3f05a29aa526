"""Generators and discriminators built from the YAMLs in conf/generator and conf/discriminator."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF_DIR
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from gan_translate.networks import (
    NLayerDiscriminator,
    PixelDiscriminator,
    ResnetGenerator,
    UnetGenerator,
    init_weights,
)


def from_yaml(group: str, name: str, **overrides):
    """Instantiate a network group option as Hydra would (the YAMLs are ``_partial_`` factories)."""
    cfg = OmegaConf.merge(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"), overrides)
    defaults = cfg.pop("defaults", None)
    if defaults:  # n_layers.yaml extends basic.yaml
        base = OmegaConf.load(CONF_DIR / group / f"{defaults[0]}.yaml")
        cfg = OmegaConf.merge(base, cfg)
    return instantiate(cfg)


@pytest.mark.parametrize(
    ("name", "size", "divisor"),
    [("unet_64", 64, 64), ("unet_128", 128, 128), ("unet_256", 256, 256), ("resnet_6blocks", 32, 4),
     ("resnet_9blocks", 32, 4)],
)
def test_generator_shapes(name, size, divisor):
    generator = from_yaml("generator", name, ngf=4)(input_nc=3, output_nc=1)
    assert generator.size_divisor == divisor
    x = torch.rand(2, 3, size, size) * 2 - 1
    y = generator(x)
    assert y.shape == (2, 1, size, size)
    assert y.min() >= -1 and y.max() <= 1  # tanh output


def test_unet_depth_matches_config():
    # 2 ** num_downs is the only input size each U-Net brings down to 1x1.
    for name, num_downs in (("unet_64", 6), ("unet_128", 7), ("unet_256", 8)):
        assert from_yaml("generator", name, ngf=4)(input_nc=3, output_nc=3).size_divisor == 2**num_downs


@pytest.mark.parametrize(("name", "size", "patches"), [("basic", 64, 6), ("n_layers", 64, 2), ("pixel", 16, 16)])
def test_discriminator_shapes(name, size, patches):
    discriminator = from_yaml("discriminator", name, ndf=4)(input_nc=6)
    scores = discriminator(torch.randn(2, 6, size, size))
    assert scores.shape == (2, 1, patches, patches)


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_norms(norm):
    networks = [
        UnetGenerator(3, 3, num_downs=5, ngf=4, norm=norm),
        ResnetGenerator(3, 3, n_blocks=1, ngf=4, norm=norm),
        NLayerDiscriminator(3, ndf=4, norm=norm),
        PixelDiscriminator(3, ndf=4, norm=norm),
    ]
    expected = {"batch": nn.BatchNorm2d, "instance": nn.InstanceNorm2d, "none": None}[norm]
    for network in networks:
        kinds = {type(m) for m in network.modules()}
        if expected is None:
            assert not kinds & {nn.BatchNorm2d, nn.InstanceNorm2d}
        else:
            assert expected in kinds
        # Convs followed by batch norm drop their bias; otherwise they keep it.
        convs = [m for m in network.modules() if isinstance(m, nn.Conv2d)]
        has_bias = [m.bias is not None for m in convs]
        assert all(has_bias) if norm != "batch" else not all(has_bias)
        x = torch.rand(2, 3, 32, 32)
        assert torch.isfinite(network(x)).all()


def test_unknown_norm_rejected():
    with pytest.raises(ValueError, match="norm must be one of"):
        UnetGenerator(3, 3, num_downs=5, norm="group")


def _conv_weights(network: nn.Module) -> torch.Tensor:
    return torch.cat([m.weight.flatten() for m in network.modules() if isinstance(m, nn.Conv2d)])


@pytest.mark.parametrize("gain", [0.02, 0.1])
def test_normal_init_std_is_gain(gain):
    network = NLayerDiscriminator(3, ndf=16, norm="batch", init_type="normal", init_gain=gain)
    weights = _conv_weights(network)
    assert weights.std().item() == pytest.approx(gain, rel=0.05)
    assert abs(weights.mean().item()) < gain / 10
    norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm2d)]
    gammas = torch.cat([m.weight for m in norms])
    assert gammas.mean().item() == pytest.approx(1.0, abs=0.05)  # norm weights ~ N(1, gain)
    assert all((m.bias == 0).all() for m in norms)
    assert all((m.bias == 0).all() for m in network.modules() if isinstance(m, nn.Conv2d) and m.bias is not None)


def test_every_init_type_sets_its_distribution():
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 64, 3)
    fan_in = 64 * 9
    xavier_std = (2.0 / (fan_in + fan_in)) ** 0.5
    expected_std = {"normal": 0.5, "xavier": 0.5 * xavier_std, "kaiming": (2.0 / fan_in) ** 0.5}
    for init_type, std in expected_std.items():
        init_weights(conv, init_type, 0.5)
        assert conv.weight.std().item() == pytest.approx(std, rel=0.05), init_type
        assert (conv.bias == 0).all()
    init_weights(conv, "orthogonal", 0.5)
    rows = conv.weight.flatten(1)  # 64 x 576: orthogonal rows scaled by the gain
    assert torch.allclose(rows @ rows.T, 0.25 * torch.eye(64), atol=1e-4)


def test_unknown_init_rejected():
    with pytest.raises(ValueError, match="init_type must be one of"):
        init_weights(nn.Conv2d(1, 1, 1), "uniform")


def test_unet_rejects_too_few_downsamplings():
    with pytest.raises(ValueError, match="num_downs >= 5"):
        UnetGenerator(3, 3, num_downs=4)


def test_unet_dropout_only_with_enough_levels():
    assert not any(isinstance(m, nn.Dropout) for m in UnetGenerator(3, 3, num_downs=5, ngf=4).modules())
    dropouts = [m for m in UnetGenerator(3, 3, num_downs=8, ngf=4, dropout=0.5).modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 3 and all(m.p == 0.5 for m in dropouts)
