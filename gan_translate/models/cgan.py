"""Conditional GAN (Mirza & Osindero 2014), in DCGAN form: G and D both see the class label y.

    min_G max_D  E log D(x | y) + E log(1 - D(G(z | y) | y))

G gets y one-hot (or as a learned embedding, ``generator.class_embedding=N``) concatenated to z; D as one-hot label
maps next to the image (``discriminator.conditioning=concat``, the default) or through a projection of a class
embedding onto its pooled features (``projection``, Miyato & Koyama 2018). Fakes are drawn for the labels of the real batch, so D sees the same
class mix on both sides.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from gan_translate.losses import gradient_penalty
from gan_translate.models.base import build_network, expect_loss
from gan_translate.models.dcgan import DCGANLoss
from gan_translate.models.generative import GenerativeGAN, LabelsArg, grid_columns


class ConditionalGAN(GenerativeGAN):
    """G(z, y) -> image, D(image, y) -> score. Optimizers: [generator, discriminator]."""

    labels_are_classes = True

    def __init__(
        self,
        generator: Callable[..., nn.Module] | nn.Module,
        discriminator: Callable[..., nn.Module] | nn.Module,
        loss: DCGANLoss,
        optimizer: Callable,
        scheduler: Callable | None = None,
        image_size: int = 28,
        channels: int = 1,
        num_classes: int = 10,
        latent_dim: int = 100,
        samples_per_class: int = 8,
        **kwargs,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"model.num_classes must be >= 2 for a conditional GAN, got {num_classes}")
        if samples_per_class < 1:  # checked here: the base class would name its own num_samples
            raise ValueError(f"model.samples_per_class must be >= 1, got {samples_per_class}")
        super().__init__(optimizer, scheduler, image_size=image_size, channels=channels, num_classes=num_classes,
                         num_samples=samples_per_class, **kwargs)
        self.latent_dim = latent_dim
        self.generator = build_network(
            generator, output_nc=channels, image_size=image_size, latent_dim=latent_dim, num_classes=num_classes
        )
        self.discriminator = build_network(discriminator, input_nc=channels, image_size=image_size, num_classes=num_classes)
        if getattr(self.discriminator, "num_classes", num_classes) != num_classes:
            raise ValueError(
                "model=cgan needs a class-conditional discriminator: discriminator.conditioning=concat|projection|auto"
            )
        expect_loss(loss, DCGANLoss, "cgan", "demo_cgan", "dcgan")
        self.loss = loss
        # Sample grid: one row per class, one column per fixed z (the same z across a column).
        self.register_buffer("fixed_noise", self.fixed(samples_per_class, latent_dim))

    def optimizer_groups(self):
        return {"generator": self.generator.parameters(), "discriminator": self.discriminator.parameters()}

    # ----- sampling -----
    def latent(self, n: int, labels: LabelsArg = None, generator: torch.Generator | None = None) -> dict:
        return {"z": self.noise(n, self.latent_dim, generator=generator), "labels": self.labels(n, labels)}

    def sampling_network(self) -> nn.Module:
        return self.generator

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.generator(z, labels)

    # ----- training -----
    def training_step(self, batch: dict, batch_idx: int) -> None:
        real, labels = self.prepare(batch["image"]), batch["label"]
        opt_g, opt_d = self.optimizers()
        fake = self.generator(self.noise(real.size(0), self.latent_dim), labels)

        # 1) D: score (x, y) pairs of the data high and (G(z | y), y) low.
        with self.updating(opt_d):
            real_scores, fake_scores = self.discriminator(real, labels), self.discriminator(fake.detach(), labels)
            losses = {"loss_D": self.loss.gan.discriminator_loss(real_scores, fake_scores)}
            if self.loss.uses_gradient_penalty:
                def critic(images):
                    return self.discriminator(images, labels)
                losses["loss_D_GP"] = self.loss.lambda_gp * gradient_penalty(critic, real, fake)
            self.optimization_step(opt_d, sum(losses.values()), losses)

        # 2) G: make D score (G(z | y), y) as real.
        with self.updating(opt_g):
            losses["loss_G"] = self.loss.gan.generator_loss(self.discriminator(fake, labels))
            self.optimization_step(opt_g, losses["loss_G"], {"loss_G": losses["loss_G"]})

        self.log_train({f"train/{k}": v for k, v in losses.items()}, real.size(0), prog_bar=True)
        self.log_train({"train/D_real": real_scores, "train/D_fake": fake_scores}, real.size(0))  # their means

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        real, labels = self.prepare(batch["image"]), batch["label"]
        fake = self.generator(self.latent(real.size(0), generator=self.validation_noise(batch_idx))["z"], labels)
        real_scores, fake_scores = self.discriminator(real, labels), self.discriminator(fake, labels)
        gan = self.loss.gan
        self.log_dict({"val/loss_D": gan.discriminator_loss(real_scores, fake_scores),
                       "val/loss_G": gan.generator_loss(fake_scores)}, sync_dist=True, batch_size=real.size(0))
        self.update_metrics(fake, real, labels)

    @torch.no_grad()
    def visuals(self, batch: dict) -> dict[str, torch.Tensor]:
        """Rows: classes 0..K-1; columns: the fixed noise vectors."""
        columns = self.fixed_noise.size(0)
        z = self.fixed_noise.repeat(self.num_classes, 1)
        labels = torch.arange(self.num_classes, device=self.device).repeat_interleave(columns)
        return grid_columns(self.generator(z, labels), columns)
