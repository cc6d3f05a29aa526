"""Adversarial autoencoder (Makhzani et al. 2016): an autoencoder whose code distribution q(z) is matched to a
prior p(z) by a GAN played on the codes.

Per batch, in the paper's order:
1. reconstruction phase: encoder + decoder minimise ``loss.lambda_reconstruction`` * |x - dec(enc(x))|
   (``loss.reconstruction``: mse, the paper's, or l1);
2. regularization phase, D: tell samples of the prior p(z) (real) from codes enc(x) (fake);
3. regularization phase, G: the encoder (the GAN's generator) makes its codes look like prior samples
   (``loss.lambda_adversarial`` times the GAN generator loss).

``model.prior``: ``gaussian`` (N(0, I)) or ``mixture10`` (10 Gaussians on a circle in the first two dimensions,
standard normal in the others). ``model.supervised=true`` gives the decoder the one-hot label too, so the code
only has to carry the style (the paper's supervised AAE): samples are then asked for a class. New images:
dec(z) with z ~ p(z).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn
from torchvision.transforms.v2 import functional as TF

from gan_translate.losses import GANLoss
from gan_translate.models.base import build_network, expect_loss
from gan_translate.models.generative import GenerativeGAN, LabelsArg, as_grid, grid_columns, square_columns
from gan_translate.ranges import NonNegativeFloat, PositiveInt

PRIORS = ("gaussian", "mixture10")
RECONSTRUCTIONS = ("mse", "l1")
MIXTURE_RADIUS, MIXTURE_STD = 4.0, 0.5
# Ten distinguishable colours for the classes in latent scatter plots.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


class AAELoss(nn.Module):
    """Weights of the AAE's terms and the adversarial objective on the codes (``loss.gan_mode``)."""

    def __init__(
        self,
        gan_mode: str = "vanilla",
        reconstruction: str = "mse",
        lambda_reconstruction: NonNegativeFloat = 1.0,
        lambda_adversarial: NonNegativeFloat = 1.0,
    ) -> None:
        super().__init__()
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"loss.reconstruction must be one of {RECONSTRUCTIONS}, got {reconstruction!r}")
        if gan_mode == "wgangp":
            raise ValueError("the AAE has no gradient penalty on its latent discriminator; use gan_mode vanilla|lsgan|hinge")
        self.gan = GANLoss(gan_mode)
        self.reconstruction = reconstruction
        self.lambda_reconstruction, self.lambda_adversarial = lambda_reconstruction, lambda_adversarial

    def reconstruction_loss(self, reconstruction: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        error = F.mse_loss if self.reconstruction == "mse" else F.l1_loss
        return self.lambda_reconstruction * error(reconstruction.float(), images.float())


def sample_prior(prior: str, n: int, dim: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` draws of p(z) (``mixture10``: component k uniform, mean on a circle in dims 0-1), on ``generator``'s
    device, else on ``device`` (the training step draws on the training device: under model.step_graph a draw on
    the CPU would be copied in once, at capture, and then repeat)."""
    device = generator.device if generator is not None else device
    z = torch.randn(n, dim, generator=generator, device=device)
    if prior == "mixture10":
        component = torch.randint(10, (n,), generator=generator, device=device)
        angle = 2 * math.pi * component.float() / 10
        z[:, :2] = z[:, :2] * MIXTURE_STD + MIXTURE_RADIUS * torch.stack([angle.cos(), angle.sin()], dim=1)
    return z


def scatter_plot(
    points: torch.Tensor, labels: torch.Tensor | None, background: torch.Tensor | None = None, size: int = 320
) -> torch.Tensor:
    """2-D points as dots coloured by label (grey ``background`` dots behind, e.g. prior samples) with axes
    through 0; 3 x size x size in [0, 1]. Drawn with PIL, so no plotting library is needed."""
    everything = points if background is None else torch.cat([points, background])
    limit = float(everything.abs().quantile(0.995)) * 1.1 or 1.0
    image = Image.new("RGB", (size, size), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    scale = (size - 1) / (2 * limit)

    def pixel(point: torch.Tensor) -> tuple[float, float]:
        return (float(point[0]) + limit) * scale, (limit - float(point[1])) * scale  # y up

    draw.line([(0, size / 2), (size, size / 2)], fill=(200, 200, 200))
    draw.line([(size / 2, 0), (size / 2, size)], fill=(200, 200, 200))
    tick = round(limit, 1)
    draw.text((size - 40, size / 2 + 2), f"{tick:g}", fill=(120, 120, 120))
    draw.text((size / 2 + 3, 2), f"{tick:g}", fill=(120, 120, 120))
    for point in background if background is not None else []:
        x, y = pixel(point)
        draw.point((x, y), fill=(190, 190, 190))
    for index, point in enumerate(points):
        x, y = pixel(point)
        colour = PALETTE[int(labels[index]) % len(PALETTE)] if labels is not None else (31, 119, 180)
        draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=colour)
    return TF.to_dtype(TF.to_image(image), torch.float32, scale=True)


class AdversarialAutoencoder(GenerativeGAN):
    """Optimizers: [autoencoder (encoder + decoder), discriminator, encoder]; three steps per batch."""

    def __init__(
        self,
        encoder: Callable[..., nn.Module] | nn.Module,
        generator: Callable[..., nn.Module] | nn.Module,
        discriminator: Callable[..., nn.Module] | nn.Module,
        loss: AAELoss,
        optimizer: Callable,
        scheduler: Callable | None = None,
        image_size: int = 28,
        channels: int = 1,
        latent_dim: int = 8,
        prior: str = "gaussian",
        supervised: bool = False,
        num_classes: int = 10,
        num_samples: PositiveInt = 64,
        max_scatter_points: int = 2000,
        **kwargs,
    ) -> None:
        if prior not in PRIORS:
            raise ValueError(f"model.prior must be one of {PRIORS}, got {prior!r}")
        if prior == "mixture10" and latent_dim < 2:
            raise ValueError(f"model.prior=mixture10 needs model.latent_dim >= 2, got {latent_dim}")
        # Supervised: the sample grid has one row per class and square-root-of-num_samples styles per row.
        super().__init__(optimizer, scheduler, image_size=image_size, channels=channels,
                         num_classes=num_classes if supervised else 0, num_samples=num_samples, **kwargs)
        self.labels_are_classes = supervised
        self.latent_dim, self.prior, self.supervised = latent_dim, prior, supervised
        self.max_scatter_points = max_scatter_points
        self.encoder = build_network(encoder, input_nc=channels, image_size=image_size, latent_dim=latent_dim)
        # The decoder is a DCGAN generator; the supervised AAE gives it the one-hot label (class_embedding=None).
        self.decoder = build_network(
            generator, output_nc=channels, image_size=image_size, latent_dim=latent_dim,
            num_classes=self.num_classes, class_embedding=None,
        )
        self.discriminator = build_network(discriminator, latent_dim=latent_dim)
        expect_loss(loss, AAELoss, "aae", "demo_aae")
        self.loss = loss
        styles = square_columns(num_samples) if supervised else num_samples
        self.register_buffer("fixed_noise", sample_prior(prior, styles, latent_dim, self.fixed_generator()))
        self._codes: list[torch.Tensor] = []
        self._code_labels: list[torch.Tensor] = []

    def optimizer_groups(self):
        return {
            "autoencoder": itertools.chain(self.encoder.parameters(), self.decoder.parameters()),
            "discriminator": self.discriminator.parameters(),
            "encoder": self.encoder.parameters(),
        }

    # ----- sampling -----
    def latent(self, n: int, labels: LabelsArg = None, generator: torch.Generator | None = None) -> dict:
        z = sample_prior(self.prior, n, self.latent_dim, generator).to(self.device)
        labels = self.labels(n, labels)
        return {"z": z} if labels is None else {"z": z, "labels": labels}

    def sampling_network(self) -> nn.Module:
        return self.decoder

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(z, labels if self.supervised else None)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction dec(enc(x)) (the supervised AAE needs the labels)."""
        return self.decode(self.encode(images), labels)

    # ----- training -----
    def training_step(self, batch: dict, batch_idx: int) -> None:
        real, labels = self.prepare(batch["image"]), batch["label"]
        opt_ae, opt_d, opt_enc = self.optimizers()

        # 1) Reconstruction phase: encoder and decoder reduce the reconstruction error.
        with self.updating(opt_ae):
            codes = self.encode(real)
            losses = {"loss_rec": self.loss.reconstruction_loss(self.decode(codes, labels), real)}
            self.optimization_step(opt_ae, losses["loss_rec"], dict(losses))

        # 2) Regularization phase, D: prior samples are "real", the encoder's codes "fake".
        with self.updating(opt_d):
            prior = sample_prior(self.prior, real.size(0), self.latent_dim, device=codes.device).to(codes)
            prior_scores, code_scores = self.discriminator(prior), self.discriminator(codes.detach())
            losses["loss_D"] = self.loss.gan.discriminator_loss(prior_scores, code_scores)
            self.optimization_step(opt_d, losses["loss_D"], {"loss_D": losses["loss_D"]})

        # 3) Regularization phase, G: the encoder makes its codes pass for prior samples.
        with self.updating(opt_enc):
            fooling = self.loss.gan.generator_loss(self.discriminator(self.encode(real)))
            losses["loss_G"] = self.loss.lambda_adversarial * fooling
            self.optimization_step(opt_enc, losses["loss_G"], {"loss_G": losses["loss_G"]})

        self.log_train({f"train/{k}": v for k, v in losses.items()}, real.size(0), prog_bar=True)
        self.log_train({"train/D_prior": prior_scores, "train/D_code": code_scores}, real.size(0))  # their means

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._codes, self._code_labels = [], []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        real, labels = self.prepare(batch["image"]), batch["label"]
        codes = self.encode(real)
        reconstruction = self.decode(codes, labels)
        prior = sample_prior(self.prior, real.size(0), self.latent_dim, self.validation_noise(batch_idx)).to(codes)
        self.log_dict({
            # On the [-1, 1] scale of the images, whatever loss.reconstruction is.
            "val/rec_l1": F.l1_loss(reconstruction.float(), real.float()),
            "val/loss_D": self.loss.gan.discriminator_loss(self.discriminator(prior), self.discriminator(codes)),
        }, prog_bar=True, sync_dist=True, batch_size=real.size(0))
        if sum(len(c) for c in self._codes) < self.max_scatter_points:  # for the latent scatter plot
            self._codes.append(codes[:, :2].detach().float().cpu())
            self._code_labels.append(labels.detach().cpu())
        samples = self.decode(prior, labels if self.supervised else None)
        self.update_metrics(samples, real, labels if self.supervised else None)

    # ----- pictures -----
    @torch.no_grad()
    def visuals(self, batch: dict) -> dict[str, torch.Tensor]:
        images = self.prepare(batch["image"])
        return {"input": images, "reconstruction": self(images, batch.get("label"))}

    def fixed_samples(self) -> torch.Tensor:
        """dec(fixed z) as a grid; supervised: one row per class, one fixed style z per column."""
        if not self.supervised:
            return as_grid(grid_columns(self.decoder(self.fixed_noise), square_columns(self.num_samples)))
        styles = self.fixed_noise.size(0)
        labels = torch.arange(self.num_classes, device=self.device).repeat_interleave(styles)
        images = self.decoder(self.fixed_noise.repeat(self.num_classes, 1), labels)
        return as_grid(grid_columns(images, styles))

    @torch.no_grad()
    def figures(self) -> dict[str, torch.Tensor]:
        """``samples``: decoded fixed prior draws; ``latent``: the validation codes (first two dimensions),
        coloured by class, over grey prior samples."""
        figures = {"samples": self.fixed_samples()}
        if self._codes and self.latent_dim >= 2:
            codes = torch.cat(self._codes)[: self.max_scatter_points]
            labels = torch.cat(self._code_labels)[: self.max_scatter_points]
            prior = sample_prior(self.prior, 1000, self.latent_dim, torch.Generator().manual_seed(0))[:, :2]
            figures["latent"] = scatter_plot(codes, labels, prior)
        return figures
