"""GAN objectives and the method-level loss weights.

``GANLoss`` reads raw discriminator scores for one of four objectives; ``gradient_penalty`` is the
WGAN-GP term (Gulrajani et al. 2017), which ``wgangp`` actually applies, unlike the reference code.
These are the terms methods share; the weights of one method's objective (``loss.lambda_l1`` ...) live
with that method, in its model module (``Pix2PixLoss`` in models/pix2pix.py, ``CycleGANLoss`` in
models/cyclegan.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GAN_MODES = ("vanilla", "lsgan", "hinge", "wgangp")


class GANLoss(nn.Module):
    """Adversarial loss on raw (pre-sigmoid) scores, averaged over every patch.

    - vanilla: BCE-with-logits (numerically safe under autocast).
    - lsgan: least squares to targets 1 / 0.
    - hinge: D minimises relu(1 - real) + relu(1 + fake); G minimises -fake.
    - wgangp: D minimises fake - real; G minimises -fake; add ``gradient_penalty`` to D.
    """

    def __init__(self, gan_mode: str = "vanilla") -> None:
        super().__init__()
        if gan_mode not in GAN_MODES:
            raise ValueError(f"loss.gan_mode must be one of {GAN_MODES}, got {gan_mode!r}")
        self.gan_mode = gan_mode

    def forward(self, scores: torch.Tensor, target_is_real: bool, for_discriminator: bool = True) -> torch.Tensor:
        scores = scores.float()  # losses are reduced in fp32 under mixed precision
        if self.gan_mode == "vanilla":
            target = torch.ones_like(scores) if target_is_real else torch.zeros_like(scores)
            return F.binary_cross_entropy_with_logits(scores, target)
        if self.gan_mode == "lsgan":
            return F.mse_loss(scores, torch.full_like(scores, 1.0 if target_is_real else 0.0))
        if self.gan_mode == "hinge" and for_discriminator:
            return F.relu(1.0 - scores).mean() if target_is_real else F.relu(1.0 + scores).mean()
        # wgangp (both players) and hinge's generator: raise the score of what should look real.
        return -scores.mean() if target_is_real else scores.mean()

    def discriminator_loss(self, real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
        """D's objective; halved for vanilla/lsgan as in the papers (slows D relative to G)."""
        loss = self(real_scores, True) + self(fake_scores, False)
        return 0.5 * loss if self.gan_mode in ("vanilla", "lsgan") else loss

    def generator_loss(self, fake_scores: torch.Tensor) -> torch.Tensor:
        return self(fake_scores, True, for_discriminator=False)


def gradient_penalty(
    discriminator: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    target_norm: float = 1.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """WGAN-GP: (||grad_x D(x)||_2 - target_norm)^2 at random interpolates of real and fake samples.

    A ``discriminator`` that returns a list of score maps (one per scale of a multi-scale D) is several critics:
    each gets its own penalty, summed like their GAN losses, or averaged with ``reduction="mean"`` (a penalty on
    the summed scores would constrain only their sum's gradient). Computed in fp32 even inside a mixed-precision autocast region: fp16 input gradients underflow
    (the GradScaler only scales the final loss, not this inner ``autograd.grad``) and bf16 ones are too
    coarse for a norm; the extra cost is one D pass of one batch.
    """
    real, fake = real.detach().float(), fake.detach().float()
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    with torch.autocast(real.device.type, enabled=False):
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        scores = discriminator(mixed)
        critics = list(scores) if isinstance(scores, (list, tuple)) else [scores]
        penalty = mixed.new_zeros(())
        for critic_scores in critics:
            (grads,) = torch.autograd.grad(critic_scores.float().sum(), mixed, create_graph=True, retain_graph=True)
            penalty = penalty + ((grads.flatten(1).norm(2, dim=1) - target_norm) ** 2).mean()
        return penalty / len(critics) if reduction == "mean" else penalty


# ----- multi-scale discriminators and feature losses (pix2pixHD, Wang et al. 2018) -----
def multiscale_scores(outputs: torch.Tensor | list) -> list[torch.Tensor]:
    """The score map of each scale: a multi-scale D returns per scale a list of feature maps, scores last;
    a single-scale D returns one score map."""
    if torch.is_tensor(outputs):
        return [outputs]
    return [scale[-1] if isinstance(scale, (list, tuple)) else scale for scale in outputs]


class MultiscaleGANLoss(nn.Module):
    """``GANLoss`` over every scale of a multi-scale D, summed (the paper's sum over D_1..D_k) or averaged."""

    def __init__(self, gan: GANLoss, reduction: str = "sum") -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"loss.gan_reduction must be sum or mean, got {reduction!r}")
        self.gan, self.reduction = gan, reduction

    def _reduce(self, losses: list[torch.Tensor]) -> torch.Tensor:
        total = sum(losses)
        return total / len(losses) if self.reduction == "mean" else total

    def discriminator_loss(self, real_outputs, fake_outputs) -> torch.Tensor:
        pairs = zip(multiscale_scores(real_outputs), multiscale_scores(fake_outputs), strict=True)
        return self._reduce([self.gan.discriminator_loss(real, fake) for real, fake in pairs])

    def generator_loss(self, fake_outputs) -> torch.Tensor:
        return self._reduce([self.gan.generator_loss(fake) for fake in multiscale_scores(fake_outputs)])


class FeatureMatchingLoss(nn.Module):
    """L1 between D's intermediate features of real and fake pairs (the score maps themselves excluded),
    weighted ``4 / (n_layers + 1)`` per layer and ``1 / num_D`` per scale as in pix2pixHD.

    Takes the multi-scale D's output for both: per scale, a list of feature maps with the score map last.
    Real features are targets (detached).
    """

    def forward(self, fake_outputs: list[list[torch.Tensor]], real_outputs: list[list[torch.Tensor]]) -> torch.Tensor:
        if torch.is_tensor(fake_outputs) or torch.is_tensor(fake_outputs[0]):
            raise ValueError(
                "feature matching needs a discriminator that returns its intermediate features per scale "
                "(discriminator=multiscale); with another one set loss.lambda_feat=0"
            )
        if len(fake_outputs) != len(real_outputs):
            raise ValueError(f"feature matching: {len(fake_outputs)} fake scales vs {len(real_outputs)} real ones")
        loss = fake_outputs[0][0].new_zeros((), dtype=torch.float32)
        scale_weight = 1.0 / len(fake_outputs)
        for fake_scale, real_scale in zip(fake_outputs, real_outputs, strict=True):
            layers = len(fake_scale) - 1  # = n_layers + 1 feature blocks before the score map
            for fake, real in zip(fake_scale[:-1], real_scale[:-1], strict=True):
                loss = loss + scale_weight * (4.0 / layers) * F.l1_loss(fake.float(), real.detach().float())
        return loss


VGG_LAYER_WEIGHTS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)


class VGGLoss(nn.Module):
    """Perceptual loss: sum_i w_i * L1(F_i(fake), F_i(real)) over the feature maps F_i of a frozen network
    (VGG19 relu1_1 .. relu5_1 in the paper, weights 1/32 .. 1).

    ``features``: a module mapping images in [-1, 1] to a list of feature maps (one per weight); it is frozen
    and kept in eval mode here, whatever mode the owner is put in.
    """

    def __init__(self, features: nn.Module, layer_weights: tuple[float, ...] = VGG_LAYER_WEIGHTS) -> None:
        super().__init__()
        self.features = features.eval().requires_grad_(False)
        self.layer_weights = tuple(layer_weights)

    def train(self, mode: bool = True) -> VGGLoss:
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        fake_features = self.features(fake)
        with torch.no_grad():
            real_features = self.features(real)
        if len(fake_features) != len(self.layer_weights):
            raise ValueError(
                f"perceptual network returned {len(fake_features)} feature maps, expected {len(self.layer_weights)}"
            )
        loss = fake.new_zeros((), dtype=torch.float32)
        for weight, f, r in zip(self.layer_weights, fake_features, real_features, strict=True):
            loss = loss + weight * F.l1_loss(f.float(), r.float())
        return loss
