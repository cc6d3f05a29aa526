"""The subclassing example: examples/pix2pix_tv.py (model=pix2pix_tv) adds a loss term by overriding one hook."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import BATCHES, TINY_OVERRIDES, compose_train, logged, read_metrics

from examples.pix2pix_tv import Pix2PixTV, total_variation
from gan_translate.checkpoint import build_model, model_from_checkpoint
from gan_translate.config import ConfigError
from gan_translate.train import train
from gan_translate.translator import Translator


def test_total_variation_values():
    flat = torch.ones(1, 3, 8, 8)
    assert total_variation(flat).item() == 0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., 1::2] = 1.0  # vertical stripes: every horizontal neighbour differs by 1
    assert total_variation(stripes).item() == pytest.approx(1.0)


def test_extra_term_is_part_of_the_objective(tmp_path):
    cfg = compose_train([*TINY_OVERRIDES, "model=pix2pix_tv", "model.lambda_tv=2.5"], tmp_path)
    model = build_model(cfg)
    assert isinstance(model, Pix2PixTV) and model.lambda_tv == 2.5
    real_a, real_b = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    fake_b = model.generator(real_a)
    terms = model.generator_loss_terms(real_a, real_b, fake_b)
    assert set(terms) == {"loss_G_GAN", "loss_G_L1", "loss_G_TV"}
    assert terms["loss_G_TV"].item() == pytest.approx(2.5 * total_variation(fake_b).item())


def test_train_and_predict(tmp_path):
    cfg = compose_train([*TINY_OVERRIDES, "model=pix2pix_tv", "model.lambda_tv=0.5"], tmp_path)
    train(cfg)
    values = logged(read_metrics(tmp_path), "train/loss_G_TV")
    assert len(values) == BATCHES and all(math.isfinite(v) and v > 0 for v in values)
    path = tmp_path / "checkpoints" / "last.ckpt"
    model = model_from_checkpoint(path)
    assert type(model) is Pix2PixTV and model.lambda_tv == 0.5
    images = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = model(images)
    assert torch.allclose(Translator.from_checkpoint(path, device="cpu")(images), expected, atol=1e-6)


class _Pix2PixWithHead(Pix2PixTV):
    """A subclass that adds a trainable module and forgets to give it to an optimizer."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.colour_head = torch.nn.Conv2d(3, 3, 1)

    def optimizer_groups(self):
        groups = super().optimizer_groups()
        if self.head_in_generator_group:
            groups["generator"] = [*groups["generator"], *self.colour_head.parameters()]
        return groups


@pytest.mark.parametrize("listed", [False, True])
def test_a_trainable_module_left_out_of_every_optimizer_is_named(tmp_path, listed):
    """It would have stayed at its initial weights, silently (gradients computed, never applied)."""
    cfg = compose_train([*TINY_OVERRIDES, "model=pix2pix_tv"], tmp_path)
    cfg.model._target_ = f"{__name__}._Pix2PixWithHead"
    model = build_model(cfg)
    model.head_in_generator_group = listed
    if listed:
        optimizers, _ = model.configure_optimizers()
        assert sum(len(group["params"]) for group in optimizers[0].param_groups) == len(
            list(model.generator.parameters())) + 2
    else:
        with pytest.raises(ValueError, match=r"colour_head\.weight, colour_head\.bias.*optimizer_groups\(\)"):
            model.configure_optimizers()


class _NarrowGenerator(torch.nn.Module):
    """A user's generator whose width argument is not called ngf."""

    def __init__(self, input_nc: int, output_nc: int, width: int = 8) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(input_nc, output_nc, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x))


def test_a_new_generator_without_the_experiments_width_key_is_told_which_key(tmp_path):
    """The default experiment=demo sets generator.ngf=32: a new generator without ngf got only Python's
    "unexpected keyword argument 'ngf'" from inside the model's constructor."""
    from omegaconf import OmegaConf

    cfg = compose_train(TINY_OVERRIDES, tmp_path)
    cfg.generator = OmegaConf.create({"_target_": f"{__name__}._NarrowGenerator", "_partial_": True, "ngf": 32})
    with pytest.raises(ConfigError, match=r"generator\.ngf=32: .*_NarrowGenerator takes no argument 'ngf': drop it "
                                          r"with '~generator\.ngf'; the experiments demo, .* set it \('~experiment'"):
        build_model(cfg)
    # A key no experiment sets (a typo of the user's): no word about experiments. A model's own key is named too,
    # though Python's message names the base class whose __init__ took the keywords.
    OmegaConf.set_struct(cfg, False)
    del cfg.generator.ngf
    cfg.generator.widht = 8
    with pytest.raises(ConfigError, match=r"generator\.widht=8: .* takes no argument 'widht': drop it with "
                                          r"'~generator\.widht'$"):
        build_model(cfg)
    del cfg.generator.widht
    cfg.model.foo = 1
    with pytest.raises(ConfigError, match=r"model\.foo=1: gan_translate\.models\.pix2pix\.Pix2Pix takes no argument"):
        build_model(cfg)
    del cfg.model.foo
    assert isinstance(build_model(cfg).generator, _NarrowGenerator)
