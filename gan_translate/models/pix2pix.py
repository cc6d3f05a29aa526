"""pix2pix (Isola et al. 2017): conditional GAN, G: A -> B, D judges (A, B) pairs.

    G* = arg min_G max_D  L_cGAN(G, D) + lambda_l1 * E ||B - G(A)||_1
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gan_translate.losses import GANLoss, gradient_penalty
from gan_translate.models.base import GANModule, build_network, expect_loss, expect_score_map
from gan_translate.ranges import NonNegativeFloat


class Pix2PixLoss(nn.Module):
    """pix2pix objective: GAN + lambda_l1 * L1 (+ lambda_gp * GP when gan_mode is wgangp)."""

    def __init__(self, gan_mode: str = "vanilla", lambda_l1: NonNegativeFloat = 100.0, lambda_gp: NonNegativeFloat = 10.0) -> None:
        super().__init__()
        self.gan = GANLoss(gan_mode)
        self.lambda_l1 = lambda_l1
        self.lambda_gp = lambda_gp

    @property
    def uses_gradient_penalty(self) -> bool:
        return self.gan.gan_mode == "wgangp" and self.lambda_gp > 0


class Pix2Pix(GANModule):
    """Paired translation. Optimizers: [generator, discriminator]; two optimizer steps per batch."""

    def __init__(
        self,
        generator: Callable[..., nn.Module] | nn.Module,
        discriminator: Callable[..., nn.Module] | nn.Module,
        loss: Pix2PixLoss,
        optimizer: Callable,
        scheduler: Callable | None = None,
        input_nc: int = 3,
        output_nc: int = 3,
        conditional_discriminator: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(optimizer, scheduler, input_nc=input_nc, output_nc=output_nc, **kwargs)
        expect_loss(loss, Pix2PixLoss, "pix2pix", "demo")
        self.conditional_discriminator = conditional_discriminator
        self.generator = build_network(generator, input_nc=input_nc, output_nc=output_nc)
        d_channels = input_nc + output_nc if conditional_discriminator else output_nc
        self.discriminator = build_network(discriminator, input_nc=d_channels)
        expect_score_map(self.discriminator, "pix2pix")
        self.loss = loss

    def optimizer_groups(self):
        return {"generator": self.generator.parameters(), "discriminator": self.discriminator.parameters()}

    def forward(self, real_a: torch.Tensor) -> torch.Tensor:
        return self.generator(real_a)

    def generator_for(self, direction: str | None = None) -> nn.Module:
        if direction not in (None, "AtoB"):
            raise ValueError(
                f"pix2pix translates one way only (its input -> its output); direction={direction!r} "
                "does not apply. Leave it unset."
            )
        return self.generator

    def source_channels(self, direction: str | None = None) -> int:
        return self.input_nc

    def discriminator_input(self, real_a: torch.Tensor, image_b: torch.Tensor) -> torch.Tensor:
        return torch.cat([real_a, image_b], dim=1) if self.conditional_discriminator else image_b

    def generator_loss_terms(
        self, real_a: torch.Tensor, real_b: torch.Tensor, fake_b: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """G's weighted loss terms by name; G minimises their sum and each is logged as ``train/<name>``.

        The extension point for new objectives: a subclass adds a term to ``super()``'s dict.
        """
        fake_scores = self.discriminator(self.discriminator_input(real_a, fake_b))
        return {
            "loss_G_GAN": self.loss.gan.generator_loss(fake_scores),
            "loss_G_L1": self.loss.lambda_l1 * F.l1_loss(fake_b.float(), real_b.float()),
        }

    def training_step(self, batch: dict, batch_idx: int) -> None:
        real_a, real_b = self.prepare(batch["A"]), self.prepare(batch["B"])
        opt_g, opt_d = self.optimizers()
        fake_b = self.generator(real_a)

        # 1) D: tell real pairs (A, B) from fake pairs (A, G(A)).
        with self.updating(opt_d):
            real_pair = self.discriminator_input(real_a, real_b)
            fake_pair = self.discriminator_input(real_a, fake_b.detach())
            real_scores, fake_scores = self.discriminator(real_pair), self.discriminator(fake_pair)
            loss_d = self.loss.gan.discriminator_loss(real_scores, fake_scores)
            losses = {"loss_D": loss_d}
            if self.loss.uses_gradient_penalty:
                losses["loss_D_GP"] = self.loss.lambda_gp * gradient_penalty(self.discriminator, real_pair, fake_pair)
                loss_d = loss_d + losses["loss_D_GP"]
            self.optimization_step(opt_d, loss_d, losses)

        # 2) G: fool D on (A, G(A)) and stay close to B in L1 (plus any terms a subclass adds).
        with self.updating(opt_g):
            generator_losses = self.generator_loss_terms(real_a, real_b, fake_b)
            self.optimization_step(opt_g, sum(generator_losses.values()), generator_losses)

        losses.update(generator_losses)
        self.log_train({f"train/{k}": v for k, v in losses.items()}, real_a.size(0), prog_bar=True)
        self.log_train({"train/D_real": real_scores, "train/D_fake": fake_scores}, real_a.size(0))  # their means

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        real_a, real_b = self.prepare(batch["A"]), self.prepare(batch["B"])
        fake_b = self.generator(real_a)
        # val/l1 is on the [-1, 1] scale of the training loss; the metrics' PSNR/SSIM use [0, 1].
        self.log("val/l1", F.l1_loss(fake_b.float(), real_b.float()), prog_bar=True, sync_dist=True,
                 batch_size=real_a.size(0))
        self.update_metrics(fake_b, real_b)

    @torch.no_grad()
    def visuals(self, batch: dict) -> dict[str, torch.Tensor]:
        real_a = batch["A"]
        return {"input": real_a, "output": self.generator(self.prepare(real_a)), "target": batch["B"]}
