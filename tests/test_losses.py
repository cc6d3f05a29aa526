"""GAN objectives on known scores, and the WGAN-GP gradient penalty."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gan_translate.losses import GANLoss, gradient_penalty
from gan_translate.models.cyclegan import CycleGANLoss
from gan_translate.models.pix2pix import Pix2PixLoss


def test_vanilla_on_zero_logits_is_log2():
    loss = GANLoss("vanilla")
    zeros = torch.zeros(2, 1, 4, 4)
    assert loss(zeros, True).item() == pytest.approx(math.log(2))
    assert loss(zeros, False).item() == pytest.approx(math.log(2))
    # D's objective is halved: 0.5 * (log 2 + log 2).
    assert loss.discriminator_loss(zeros, zeros).item() == pytest.approx(math.log(2))


def test_vanilla_on_known_logits():
    loss = GANLoss("vanilla")
    scores = torch.tensor([2.0, -1.0])
    expected_real = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2  # -log sigmoid(s)
    expected_fake = (math.log1p(math.exp(2.0)) + math.log1p(math.exp(-1.0))) / 2  # -log(1 - sigmoid(s))
    assert loss(scores, True).item() == pytest.approx(expected_real, rel=1e-6)
    assert loss(scores, False).item() == pytest.approx(expected_fake, rel=1e-6)
    assert loss.generator_loss(scores).item() == pytest.approx(expected_real, rel=1e-6)


def test_lsgan_on_known_scores():
    loss = GANLoss("lsgan")
    scores = torch.tensor([0.5, 2.0])
    assert loss(scores, True).item() == pytest.approx((0.25 + 1.0) / 2)
    assert loss(scores, False).item() == pytest.approx((0.25 + 4.0) / 2)
    assert loss.discriminator_loss(scores, scores).item() == pytest.approx(0.5 * (0.625 + 2.125))


def test_hinge_signs():
    loss = GANLoss("hinge")
    scores = torch.tensor([-2.0, 0.5, 3.0])
    assert loss(scores, True).item() == pytest.approx((3.0 + 0.5 + 0.0) / 3)  # relu(1 - s)
    assert loss(scores, False).item() == pytest.approx((0.0 + 1.5 + 4.0) / 3)  # relu(1 + s)
    # The generator is not clipped: it minimises -mean(D(G(z))).
    assert loss.generator_loss(scores).item() == pytest.approx(-0.5)
    assert loss.discriminator_loss(scores, scores).item() == pytest.approx(3.5 / 3 + 5.5 / 3)  # not halved


def test_wgangp_signs():
    loss = GANLoss("wgangp")
    real, fake = torch.tensor([3.0, 1.0]), torch.tensor([-1.0, 0.0])
    # D minimises E[D(fake)] - E[D(real)]; G minimises -E[D(fake)].
    assert loss.discriminator_loss(real, fake).item() == pytest.approx(-0.5 - 2.0)
    assert loss.generator_loss(fake).item() == pytest.approx(0.5)


def test_invalid_gan_mode_names_the_key():
    with pytest.raises(ValueError, match=r"loss\.gan_mode"):
        GANLoss("wasserstein")
    with pytest.raises(ValueError, match=r"loss\.gan_mode"):
        Pix2PixLoss(gan_mode="lsgan2")


class LinearCritic(nn.Module):
    """D(x) = sum(w * x) per sample: its input gradient is w everywhere, whatever x is."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.weight).flatten(1).sum(1)


@pytest.mark.parametrize("scale", [0.01, 0.5, 3.0])
def test_gradient_penalty_of_linear_critic(scale):
    torch.manual_seed(0)
    weight = torch.randn(1, 3, 4, 4) * scale
    critic = LinearCritic(weight.clone())
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    expected = (weight.norm().item() - 1.0) ** 2
    assert gradient_penalty(critic, real, fake).item() == pytest.approx(expected, rel=1e-5)


def test_gradient_penalty_of_a_multiscale_critic_penalises_each_scale():
    """Two linear critics (two scales): (||w1|| - 1)^2 + (||w2|| - 1)^2, not the penalty of their sum."""
    torch.manual_seed(0)
    w1, w2 = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4) * 0.1
    first, second = LinearCritic(w1.clone()), LinearCritic(w2.clone())
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    expected = (w1.norm().item() - 1.0) ** 2 + (w2.norm().item() - 1.0) ** 2
    penalty = gradient_penalty(lambda x: [first(x), second(x)], real, fake)
    assert penalty.item() == pytest.approx(expected, rel=1e-5)
    averaged = gradient_penalty(lambda x: [first(x), second(x)], real, fake, reduction="mean")
    assert averaged.item() == pytest.approx(expected / 2, rel=1e-5)  # loss.gan_reduction=mean
    penalty.backward()
    assert first.weight.grad is not None and second.weight.grad is not None


def test_gradient_penalty_trains_the_critic():
    torch.manual_seed(0)
    critic = LinearCritic(torch.randn(1, 3, 4, 4))
    fake = torch.randn(2, 3, 4, 4, requires_grad=True)
    penalty = gradient_penalty(critic, torch.randn(2, 3, 4, 4), fake)
    penalty.backward()
    w = critic.weight.detach()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    expected = 2 * (w.norm() - 1) * w / w.norm()
    assert torch.allclose(critic.weight.grad, expected, rtol=1e-5)
    assert fake.grad is None  # the samples are detached: GP trains D only


def test_gradient_penalty_on_a_conv_critic_has_grads():
    from gan_translate.networks import NLayerDiscriminator

    critic = NLayerDiscriminator(3, ndf=4, n_layers=1, norm="none")
    penalty = gradient_penalty(critic, torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16))
    penalty.backward()
    # Biases do not change an input gradient; every conv weight does.
    grads = [m.weight.grad for m in critic.modules() if isinstance(m, nn.Conv2d)]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_method_losses_hold_weights():
    assert Pix2PixLoss("wgangp", lambda_gp=10).uses_gradient_penalty
    assert not Pix2PixLoss("wgangp", lambda_gp=0).uses_gradient_penalty
    assert not Pix2PixLoss("vanilla").uses_gradient_penalty
    cyc = CycleGANLoss(lambda_cycle=10, lambda_identity=0.5)
    assert cyc.gan.gan_mode == "lsgan" and cyc.lambda_cycle == 10 and cyc.lambda_identity == 0.5
