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
) -> torch.Tensor:
    """WGAN-GP: (||grad_x D(x)||_2 - target_norm)^2 at random interpolates of real and fake samples.

    Computed in fp32 even inside a mixed-precision autocast region: fp16 input gradients underflow
    (the GradScaler only scales the final loss, not this inner ``autograd.grad``) and bf16 ones are too
    coarse for a norm; the extra cost is one D pass of one batch.
    """
    real, fake = real.detach().float(), fake.detach().float()
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    with torch.autocast(real.device.type, enabled=False):
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        scores = discriminator(mixed)
        (grads,) = torch.autograd.grad(scores.float().sum(), mixed, create_graph=True)
        norms = grads.flatten(1).norm(2, dim=1)
        return ((norms - target_norm) ** 2).mean()
