"""Image sizes: every network's declared sizes are exact, training refuses sizes no network takes before the
Trainer starts (naming keys and valid values), and prediction fits any size."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from _tiny_run import tiny_run
from conftest import (
    CONF_DIR,
    TINY_CYCLEGAN_OVERRIDES,
    TINY_OVERRIDES,
    compose_train,
    on_disk,
    write_aligned,
    write_unaligned,
)
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from gan_translate.checkpoint import build_model
from gan_translate.data import AlignedDataModule, SyntheticFacadesDataModule
from gan_translate.networks import NLayerDiscriminator, PixelDiscriminator, ResnetGenerator, UnetGenerator
from gan_translate.sizes import (
    SizeError,
    SizeRule,
    check_image_size,
    check_training_sizes,
    train_size_from_config,
)
from gan_translate.train import train
from gan_translate.translator import Translator


def image_networks(group: str) -> list[str]:
    """The configs of ``group`` whose networks take images of any valid size. Fixed-size networks (the DCGAN
    family: ``data.image_size`` is built into them) and networks on latent codes have no size rule."""
    def target(name: str) -> str:  # a config without _target_ extends another one (defaults: [basic, _self_])
        node = OmegaConf.load(CONF_DIR / group / f"{name}.yaml")
        return node["_target_"] if "_target_" in node else target(next(d for d in node.defaults if d != "_self_"))

    names = []
    for path in sorted((CONF_DIR / group).glob("*.yaml")):
        parameters = inspect.signature(get_class(target(path.stem))).parameters
        if "input_nc" in parameters and "image_size" not in parameters:
            names.append(path.stem)
    return names


GENERATORS = image_networks("generator")
DISCRIMINATORS = image_networks("discriminator")


def takes(network: nn.Module, side: int, generator: bool) -> bool:
    """Whether a train-mode forward pass with a batch of one works at side x side (for a generator: and
    gives an image of the same size)."""
    network.train()
    channels = next(network.parameters()).shape[1]
    try:
        with torch.no_grad():
            out = network(torch.randn(1, channels, side, side))
    except (RuntimeError, ValueError):  # a 1x1 batch norm, a pad longer than the side, a 0-pixel conv
        return False
    if isinstance(out, list):  # a multi-scale D (pix2pixHD): per scale its feature maps, the scores last
        return all(scale[-1].numel() > 0 for scale in out)
    return out.shape[-2:] == (side, side) if generator else out.numel() > 0


@pytest.fixture(scope="module")
def network_configs():
    """Every generator/discriminator config of conf/ composed as training does, at width 8."""
    built = {}
    for group, names in (("generator", GENERATORS), ("discriminator", DISCRIMINATORS)):
        for name in names:
            node = compose_train([f"{group}={name}", f"{group}.{'ngf' if group == 'generator' else 'ndf'}=8"])[group]
            channels = {"input_nc": 3, "output_nc": 3} if group == "generator" else {"input_nc": 6}
            built[group, name] = instantiate(node)(**channels)
    return built


@pytest.mark.parametrize(
    ("group", "name"), [("generator", n) for n in GENERATORS] + [("discriminator", n) for n in DISCRIMINATORS]
)
def test_every_config_runs_at_its_min_size_and_is_refused_below(network_configs, group, name):
    network = network_configs[group, name]
    rule = SizeRule.of(network)
    assert rule is not None, f"{group}={name} declares no sizes"
    side = rule.smallest
    assert takes(network, side, generator=group == "generator")
    check_image_size({group: network}, (side, side))
    for below in sorted({side - 1, side - rule.divisor} - {0}):
        assert not takes(network, below, generator=group == "generator"), (name, below)
        with pytest.raises(SizeError, match=f"{group} \\({type(network).__name__}"):
            check_image_size({group: network}, (below, side))


@pytest.mark.parametrize(
    "network",
    [
        *(NLayerDiscriminator(3, ndf=4, n_layers=n) for n in range(5)),
        *(PixelDiscriminator(3, ndf=4, norm=norm) for norm in ("batch", "instance", "none")),
        *(
            ResnetGenerator(3, 3, n_blocks=1, ngf=4, norm=norm, padding=padding, n_downsampling=n)
            for norm in ("batch", "instance", "none")
            for padding in ("reflect", "zeros", "replicate")
            for n in (0, 1, 2)
        ),
        *(UnetGenerator(3, 3, num_downs=5, ngf=2, norm=norm) for norm in ("batch", "instance", "none")),
    ],
    ids=lambda net: f"{type(net).__name__}{getattr(net, 'size_args', '')}{getattr(net, 'norm', '')}"
    f"{getattr(net, 'padding', '')}",
)
def test_declared_sizes_are_exact(network):
    """Square sides from 1 up: the network runs (batch of one, train mode) exactly where its rule says so."""
    rule = SizeRule.of(network)
    generator = hasattr(network, "size_divisor")
    for side in range(1, rule.smallest + 2 * rule.divisor + 3):
        assert takes(network, side, generator) == rule.accepts(side), side


def test_suggested_network_arguments_fit():
    cases = [
        (functools.partial(UnetGenerator, 3, 3, ngf=2), {"num_downs": 7}, 64),
        (functools.partial(NLayerDiscriminator, 3, ndf=4), {"n_layers": 5}, 40),
        (functools.partial(ResnetGenerator, 3, 3, n_blocks=1, ngf=4), {"n_downsampling": 2}, 6),
    ]
    for build, args, side in cases:
        network = build(**args)
        assert not SizeRule.of(network).accepts(side)
        assert SizeRule.of(build(**network.args_for_size(side, side))).accepts(side), args
    assert UnetGenerator(3, 3, num_downs=8, ngf=2).args_for_size(200, 200) is None  # 200 = 8 * 25


# ----- before training -----
class Started(pl.Callback):
    """Records whether the Trainer got as far as starting the fit."""

    def __init__(self) -> None:
        self.started = False

    def on_fit_start(self, trainer, pl_module) -> None:
        self.started = True


def refused(cfg) -> str:
    """Run `train` and return the SizeError's message; the fit must not have started."""
    started = Started()
    with pytest.raises(SizeError) as error:
        train(cfg, extra_callbacks=[started])
    assert not started.started
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
    return str(error.value)


def on_files(root, *overrides: str) -> list[str]:
    tiny = [o for o in on_disk(TINY_OVERRIDES) if not o.startswith("generator.num_downs")]
    return [*tiny, "data=aligned", f"data.root={root}", *overrides]


def test_unet_128_on_64_px_crops_is_refused_before_training(tmp_path):
    root = write_aligned(tmp_path / "facades", count=2)
    cfg = compose_train(on_files(root, "generator=unet_128", "data.load_size=72", "data.crop_size=64"),
                        tmp_path / "run")
    message = refused(cfg)
    assert "data.crop_size=64" in message and "generator.num_downs=7" in message
    assert "multiples of 128" in message
    assert "data.crop_size=128" in message and "data.load_size>=128 (now 72)" in message  # the valid size above
    assert "generator.num_downs=6" in message  # or the U-Net that takes 64 px


def test_unet_256_on_200_px_crops_is_refused_before_training(tmp_path):
    root = write_aligned(tmp_path / "facades", count=2)
    cfg = compose_train(on_files(root, "generator=unet_256", "data.load_size=286", "data.crop_size=200"),
                        tmp_path / "run")
    message = refused(cfg)
    assert "data.crop_size=200" in message and "generator.num_downs=8" in message
    assert "data.crop_size=256" in message and "none is smaller" in message
    assert "no setting" in message  # 200 = 8 x 25: no U-Net depth takes it


def test_load_size_smaller_than_crop_size_is_refused(tmp_path):
    root = write_aligned(tmp_path / "facades", count=2)
    cfg = compose_train(on_files(root, "generator.num_downs=5", "data.load_size=40", "data.crop_size=64"),
                        tmp_path / "run")
    message = refused(cfg)
    assert "data.load_size=40" in message and "data.crop_size=64" in message
    assert "data.load_size>=64" in message and "data.crop_size=32" in message


def test_synthetic_size_rounded_below_the_unet(tmp_path):
    # data.size=30 reaches the networks as 28 px (preprocess=none rounds down to multiples of 4).
    message = refused(compose_train([*TINY_OVERRIDES, "data.size=30"], tmp_path / "run"))
    assert "28x28" in message and "data.size=30" in message and "data.size=32" in message


def test_discriminator_too_deep_names_its_key(tmp_path):
    cfg = compose_train([*TINY_CYCLEGAN_OVERRIDES, "generator.n_blocks=1", "data.size=20"], tmp_path / "run")
    message = refused(cfg)
    assert "discriminator_A, discriminator_B (NLayerDiscriminator, discriminator.n_layers=3)" in message
    assert "at least 24" in message and "data.size=24" in message and "discriminator.n_layers=2" in message
    # 28 px (30 rounded down) is fine for the ResNet (multiples of 4, at least 8) and the 70x70 PatchGAN.
    cfg = compose_train([*TINY_CYCLEGAN_OVERRIDES, "data.size=30"], tmp_path / "ok")
    check_training_sizes(build_model(cfg), instantiate(cfg.data))


def test_non_square_embedded_data_names_the_key_of_the_failing_side(tmp_path):
    """64x100 label facades: the fix named data.size (whose 64 was fine) and suggested 64 or 64."""
    cfg = compose_train(["experiment=demo_pix2pixhd", "data.width=100"], tmp_path / "run")
    message = refused(cfg)
    assert "(data.size=64, data.width=100)" in message
    assert "Fix: use data.width=96 or data.width=104" in message and "use data.size" not in message


def test_embedded_data_crop_advice_is_a_key_the_config_has(tmp_path):
    """The synthetic data configs had no crop_size key, so the advice data.crop_size=64 was refused by Hydra
    (it needed +data.crop_size)."""
    message = refused(compose_train([*TINY_OVERRIDES, "data.preprocess=crop", "data.crop_size=100"], tmp_path / "a"))
    assert "use data.crop_size=32" in message  # TINY renders 32 px
    cfg = compose_train([*TINY_OVERRIDES, "data.preprocess=resize_and_crop", "data.load_size=36",
                         "data.crop_size=32"], tmp_path / "b")
    check_training_sizes(build_model(cfg), instantiate(cfg.data))


def test_files_of_unknown_size_are_checked_on_the_first_item(tmp_path):
    root = write_aligned(tmp_path / "facades", count=2, size=40)
    cfg = compose_train(on_files(root, "generator.num_downs=5", "data.preprocess=none"), tmp_path / "run")
    message = refused(cfg)
    assert "first training item's A" in message and "40x40" in message
    assert "data.preprocess=resize_and_crop" in message and "data.crop_size=32" in message


def test_files_of_a_valid_size_train_after_the_first_item_check(tmp_path):
    """preprocess=none on 32 px files: measured (setup runs early), accepted, then a real fit."""
    root = write_aligned(tmp_path / "facades", count=2, size=32)
    cfg = compose_train(on_files(root, "generator.num_downs=5", "data.preprocess=none", "data.batch_size=1",
                                 "~callbacks.samples", "metrics=none"), tmp_path / "run")
    train(cfg)
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_files_size_is_checked_not_only_the_first_items(tmp_path, split):
    """preprocess=none: a later file (or a val file) of a size the U-Net cannot take crashed inside the network
    (training) or in the sanity check; now it is named before training, from the headers."""
    root = write_aligned(tmp_path / "facades", count=2, size=32)
    odd = np.zeros((40, 80, 3), np.uint8)
    Image.fromarray(odd).save(root / split / "zz_odd.png")
    cfg = compose_train(on_files(root, "generator.num_downs=5", "data.preprocess=none"), tmp_path / "run")
    message = refused(cfg)
    expected = "training" if split == "train" else "validation"
    assert f"{expected} file zz_odd.png (40x40 as stored" in message and "multiples of 32" in message


def test_cyclegan_files_sizes_are_checked_in_both_domains(tmp_path):
    root = write_unaligned(tmp_path / "h2z", count_a=2, count_b=2, size=32)
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "trainB" / "zz_small.png")
    cfg = compose_train([*on_disk(TINY_CYCLEGAN_OVERRIDES), "data=unaligned", f"data.root={root}",
                         "data.preprocess=none", "data.serial=true"], tmp_path / "run")  # first item: B 0
    message = refused(cfg)
    assert "training file trainB/zz_small.png (6x6 as stored" in message and ": 4x4)" in message


def test_networks_without_sizes_are_not_checked():
    """A noise-input generator (no size attributes) is skipped; the discriminator next to it is not."""
    noise_generator = nn.Sequential(nn.Linear(8, 3 * 5 * 7), nn.Unflatten(1, (3, 5, 7)))
    check_image_size({"generator": noise_generator}, (5, 7))
    with pytest.raises(SizeError, match="discriminator.n_layers=3"):
        check_image_size({"generator": noise_generator, "discriminator": NLayerDiscriminator(3, ndf=4)}, (5, 7))


@pytest.mark.parametrize(
    ("preprocess", "expected"),
    [("resize_and_crop", (32, 32)), ("crop", (32, 32)), ("scale_width_and_crop", (32, 32)), ("scale_width", None),
     ("none", None)],
)
def test_train_image_size_matches_the_loader(tmp_path, preprocess, expected):
    root = write_aligned(tmp_path / "facades", splits=("train",), count=1, size=40)
    datamodule = AlignedDataModule(str(root), preprocess=preprocess, load_size=36, crop_size=32, num_workers=0)
    assert datamodule.train_image_size() == expected
    datamodule.setup("fit")
    if expected is not None:
        assert tuple(datamodule.train_set[0]["A"].shape[-2:]) == expected


@pytest.mark.parametrize(("preprocess", "size", "crop"), [("none", 30, 32), ("scale_width", 40, 22), ("crop", 40, 24)])
def test_synthetic_train_image_size_matches_the_loader(preprocess, size, crop):
    datamodule = SyntheticFacadesDataModule(size=size, train_length=1, preprocess=preprocess, load_size=crop,
                                            crop_size=crop, num_workers=0)
    datamodule.setup("fit")
    assert datamodule.train_image_size() == tuple(datamodule.train_set[0]["A"].shape[-2:])


# ----- prediction -----
@pytest.fixture(scope="module")
def pix2pix_checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sizes_run")
    tiny_run(run_dir, ["~callbacks.samples", "metrics=none"])
    return run_dir / "checkpoints" / "last.ckpt"


ODD_SIZES = [(1, 1), (1, 7), (7, 1), (2, 33), (3, 100), (31, 33), (32, 32), (33, 64), (5, 300)]


@pytest.mark.parametrize("policy", ["pad", "resize", "train_size"])
@pytest.mark.parametrize("batch_stats", [False, True])
def test_translator_takes_any_size(pix2pix_checkpoint, policy, batch_stats):
    translator = Translator.from_checkpoint(pix2pix_checkpoint, device="cpu", size_policy=policy,
                                            batch_stats=batch_stats)
    assert translator.size_rule == SizeRule(32, 32) and translator.train_size == 32
    for height, width in ODD_SIZES:
        output = translator(torch.rand(1, 3, height, width) * 2 - 1)
        assert output.shape == (1, 3, height, width) and torch.isfinite(output).all(), (height, width)


def test_translator_pads_resnet_inputs_up_to_its_min_size():
    """4x4 is a multiple of the ResNet's divisor, but its bottleneck would be 1x1: instance norm and reflection
    padding fail there even in eval mode, so the Translator pads to 8x8."""
    generator = ResnetGenerator(3, 3, n_blocks=1, ngf=4).eval()
    assert not takes(generator, 4, generator=True)
    for policy in ("pad", "resize"):
        translator = Translator(generator, device="cpu", size_policy=policy)
        for height, width in [(1, 1), (4, 4), (4, 9), (2, 30), (8, 8)]:
            output = translator(torch.rand(3, height, width) * 2 - 1)
            assert output.shape == (3, height, width), (policy, height, width)


def test_translator_pad_keeps_valid_content():
    """pad: the valid region of a padded image equals the network's output on the same pixels."""
    generator = ResnetGenerator(3, 3, n_blocks=1, ngf=4, norm="none", padding="zeros").eval()
    translator = Translator(generator, device="cpu")
    image = torch.rand(1, 3, 8, 12) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(translator(image), generator(image).clamp(-1, 1), atol=1e-6)


def test_translator_size_policy_errors():
    generator = UnetGenerator(3, 3, num_downs=5, ngf=2)
    with pytest.raises(ValueError, match="size_policy=train_size needs the training image size"):
        Translator(generator, device="cpu", size_policy="train_size")
    with pytest.raises(ValueError, match="size_policy must be one of .*'pad'.*got 'crop'"):
        Translator(generator, device="cpu", size_policy="crop")
    with pytest.raises(ValueError, match="empty"):
        Translator(generator, device="cpu")(torch.zeros(1, 3, 0, 5))


def test_train_size_from_config():
    assert train_size_from_config({"preprocess": "resize_and_crop", "load_size": 286, "crop_size": 256}) == 256
    assert train_size_from_config({"preprocess": "none", "size": 30}) == 28  # rounded as in training
    # scale_width scales to load_size (the reference's rule), whatever crop_size says.
    assert train_size_from_config({"preprocess": "scale_width", "size": 64, "load_size": 32, "crop_size": 64}) == 32
    assert train_size_from_config({"preprocess": "none", "root": "photos"}) is None  # the files' own sizes
    assert train_size_from_config({"preprocess": "scale_width", "root": "photos", "load_size": 256}) is None
