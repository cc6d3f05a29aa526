"""DCGAN (Radford et al. 2016): images from noise, min_G max_D  E log D(x) + E log(1 - D(G(z))),  z ~ N(0, I).

G is trained with the non-saturating loss -log D(G(z)) (``loss.gan_mode=vanilla``); lsgan/hinge/wgangp swap in
other objectives (wgangp adds ``loss.lambda_gp`` times the gradient penalty to D's loss).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gan_translate.losses import GANLoss, gradient_penalty
from gan_translate.models.base import build_network, expect_loss
from gan_translate.models.generative import GenerativeGAN, LabelsArg, grid_columns, square_columns
from gan_translate.ranges import NonNegativeFloat, PositiveInt


class DCGANLoss(nn.Module):
    """The adversarial objective of the noise-to-image GANs (DCGAN, cGAN): ``loss.gan_mode``, ``loss.lambda_gp``."""

    def __init__(self, gan_mode: str = "vanilla", lambda_gp: NonNegativeFloat = 10.0) -> None:
        super().__init__()
        self.gan = GANLoss(gan_mode)
        self.lambda_gp = lambda_gp

    @property
    def uses_gradient_penalty(self) -> bool:
        return self.gan.gan_mode == "wgangp" and self.lambda_gp > 0


class DCGAN(GenerativeGAN):
    """G(z) -> image, D(image) -> score. Optimizers: [generator, discriminator]; two steps per batch."""

    def __init__(
        self,
        generator: Callable[..., nn.Module] | nn.Module,
        discriminator: Callable[..., nn.Module] | nn.Module,
        loss: DCGANLoss,
        optimizer: Callable,
        scheduler: Callable | None = None,
        image_size: int = 28,
        channels: int = 1,
        latent_dim: PositiveInt = 100,
        **kwargs,
    ) -> None:
        super().__init__(optimizer, scheduler, image_size=image_size, channels=channels, **kwargs)
        self.latent_dim = latent_dim
        self.generator = build_network(generator, output_nc=channels, image_size=image_size, latent_dim=latent_dim)
        self.discriminator = build_network(discriminator, input_nc=channels, image_size=image_size)
        expect_loss(loss, DCGANLoss, "dcgan", "demo_dcgan")
        self.loss = loss
        self.register_buffer("fixed_noise", self.fixed(self.num_samples, latent_dim))

    def optimizer_groups(self):
        return {"generator": self.generator.parameters(), "discriminator": self.discriminator.parameters()}

    # ----- sampling -----
    def latent(self, n: int, labels: LabelsArg = None, generator: torch.Generator | None = None) -> dict:
        self.labels(n, labels)  # refuses labels
        return {"z": self.noise(n, self.latent_dim, generator=generator)}

    def sampling_network(self) -> nn.Module:
        return self.generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    # ----- training -----
    def training_step(self, batch: dict, batch_idx: int) -> None:
        real = self.prepare(batch["image"])
        opt_g, opt_d = self.optimizers()
        fake = self.generator(self.noise(real.size(0), self.latent_dim))

        # 1) D: score real images high and G(z) low.
        with self.updating(opt_d):
            real_scores, fake_scores = self.discriminator(real), self.discriminator(fake.detach())
            losses = {"loss_D": self.loss.gan.discriminator_loss(real_scores, fake_scores)}
            if self.loss.uses_gradient_penalty:
                losses["loss_D_GP"] = self.loss.lambda_gp * gradient_penalty(self.discriminator, real, fake)
            self.optimization_step(opt_d, sum(losses.values()), losses)

        # 2) G: make D score G(z) as real (non-saturating: maximise log D(G(z))).
        with self.updating(opt_g):
            losses["loss_G"] = self.loss.gan.generator_loss(self.discriminator(fake))
            self.optimization_step(opt_g, losses["loss_G"], {"loss_G": losses["loss_G"]})

        self.log_train({f"train/{k}": v for k, v in losses.items()}, real.size(0), prog_bar=True)
        self.log_train({"train/D_real": real_scores, "train/D_fake": fake_scores}, real.size(0))  # their means

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        real = self.prepare(batch["image"])
        fake = self.generator(self.latent(real.size(0), generator=self.validation_noise(batch_idx))["z"])
        real_scores, fake_scores = self.discriminator(real), self.discriminator(fake)
        gan = self.loss.gan
        self.log_dict({"val/loss_D": gan.discriminator_loss(real_scores, fake_scores),
                       "val/loss_G": gan.generator_loss(fake_scores)}, sync_dist=True, batch_size=real.size(0))
        self.update_metrics(fake, real)

    @torch.no_grad()
    def visuals(self, batch: dict) -> dict[str, torch.Tensor]:
        """G(fixed z) laid out as a square grid."""
        return grid_columns(self.generator(self.fixed_noise), square_columns(self.num_samples))
