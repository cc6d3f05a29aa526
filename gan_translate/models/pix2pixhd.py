"""pix2pixHD (Wang et al. 2018): high-resolution paired translation from semantic label maps.

    min_G ( ( max_{D_1..D_k} sum_k L_GAN(G, D_k) ) + lambda_feat sum_k L_FM(G, D_k) + lambda_vgg L_VGG(G) )

- G is coarse-to-fine: a ``GlobalGenerator`` trained first at half resolution, then a ``LocalEnhancer`` at full
  resolution whose G1 starts from the stage-1 weights (``global_ckpt``) and stays frozen for
  ``fix_global_epochs`` epochs.
- D is a ``MultiscaleDiscriminator`` on (condition, image) pairs; L_FM matches its intermediate features.
- Inputs: one-hot label maps (``label_nc`` classes) or RGB label images (``label_nc=0``), plus the instance
  boundary map (``instance``) and instance-wise features from an encoder (``feature_encoder``).
The generator the model exposes (``Pix2PixHDGenerator``) takes the raw label[/instance] input, so prediction
needs nothing but the checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gan_translate.losses import (
    FeatureMatchingLoss,
    GANLoss,
    MultiscaleGANLoss,
    VGGLoss,
    gradient_penalty,
    multiscale_scores,
)
from gan_translate.models.base import GANModule, build_network, expect_loss
from gan_translate.networks.pix2pixhd import FeatureEncoder, Pix2PixHDGenerator, label_ids
from gan_translate.ranges import NonNegativeFloat, NonNegativeInt, PositiveInt

log = logging.getLogger(__name__)


class Pix2PixHDLoss(nn.Module):
    """pix2pixHD's weights: GAN (summed over D scales, or averaged with ``gan_reduction=mean``)
    + lambda_feat * feature matching + lambda_vgg * VGG perceptual (+ lambda_gp * GP for wgangp).
    A weight of 0 switches its term off (and, for VGG, needs no weights file)."""

    def __init__(
        self,
        gan_mode: str = "lsgan",
        lambda_feat: NonNegativeFloat = 10.0,
        lambda_vgg: NonNegativeFloat = 10.0,
        lambda_gp: NonNegativeFloat = 10.0,
        gan_reduction: str = "sum",
    ) -> None:
        super().__init__()
        self.gan = MultiscaleGANLoss(GANLoss(gan_mode), gan_reduction)
        self.feature_matching = FeatureMatchingLoss()
        self.lambda_feat, self.lambda_vgg, self.lambda_gp = lambda_feat, lambda_vgg, lambda_gp

    @property
    def uses_gradient_penalty(self) -> bool:
        return self.gan.gan.gan_mode == "wgangp" and self.lambda_gp > 0


class Pix2PixHD(GANModule):
    """Optimizers: [generator (+ feature encoder), discriminator]; two optimizer steps per batch."""

    def __init__(
        self,
        generator: Callable[..., nn.Module] | nn.Module,
        discriminator: Callable[..., nn.Module] | nn.Module,
        loss: Pix2PixHDLoss,
        optimizer: Callable,
        scheduler: Callable | None = None,
        input_nc: int = 3,
        output_nc: int = 3,
        label_nc: int = 0,
        instance: bool = False,
        feature_encoder: bool = False,
        feat_num: int = 3,
        encoder_ngf: int = 16,
        encoder_downsampling: int = 4,
        n_clusters: PositiveInt = 10,
        global_ckpt: str | None = None,
        fix_global_epochs: NonNegativeInt = 0,
        vgg_weights: str | None = None,
        vgg_normalize_input: bool = True,
        perceptual_network: Callable[[], nn.Module] | nn.Module | None = None,
        **kwargs,
    ) -> None:
        super().__init__(optimizer, scheduler, input_nc=input_nc, output_nc=output_nc, **kwargs)
        expect_loss(loss, Pix2PixHDLoss, "pix2pixhd", "demo_pix2pixhd")
        if feature_encoder and not (label_nc or instance):
            raise ValueError(
                "model.feature_encoder=true averages features per instance: it needs instance maps "
                "(data.instance=true) or label maps (data.label_nc > 0) to tell the instances apart"
            )
        if fix_global_epochs < 0:
            raise ValueError(f"model.fix_global_epochs must be >= 0, got {fix_global_epochs}")
        self.label_nc, self.instance = label_nc, instance
        self.feat_num = feat_num if feature_encoder else 0
        condition_nc = (label_nc or input_nc) + int(instance)
        network = build_network(generator, input_nc=condition_nc + self.feat_num, output_nc=output_nc)
        self.generator = Pix2PixHDGenerator(network, label_nc, input_nc, instance, self.feat_num, n_clusters)
        self.discriminator = build_network(discriminator, input_nc=condition_nc + output_nc)
        self.encoder = None
        if feature_encoder:
            self.encoder = FeatureEncoder(output_nc, feat_num, encoder_ngf, encoder_downsampling)
            if self.generator.size_divisor % self.encoder.size_divisor:
                raise ValueError(
                    f"model.encoder_downsampling={encoder_downsampling} needs sizes that are multiples of "
                    f"{self.encoder.size_divisor}, more than the generator's {self.generator.size_divisor}; lower it"
                )
        self.loss = loss
        self.global_ckpt, self.fix_global_epochs = global_ckpt, fix_global_epochs
        if fix_global_epochs and not hasattr(network, "global_parameters"):
            raise ValueError("model.fix_global_epochs applies to the local enhancer (generator=pix2pixhd_local) only")
        if fix_global_epochs and not global_ckpt:
            raise ValueError(
                f"model.fix_global_epochs={fix_global_epochs} keeps G1 frozen, but model.global_ckpt is unset, so G1 "
                "would stay at its random initial weights: give model.global_ckpt=STAGE1_RUN/checkpoints/last.ckpt "
                "(the global generator trained first), or model.fix_global_epochs=0 to train G1 and G2 together "
                "from scratch"
            )
        self.vgg_weights, self.vgg_normalize_input = vgg_weights, vgg_normalize_input
        # Kept out of the module tree (a list, not an attribute module): not saved in checkpoints, not trained,
        # not moved by Lightning (moved by us at first use), never put in train mode.
        self._perceptual: list[VGGLoss] = []
        self._perceptual_factory = perceptual_network

    # ----- structure -----
    def step_graph_unsupported(self) -> str | None:
        if self.encoder is not None:
            return ("model.feature_encoder=true: the instance-wise feature averaging numbers the regions of each "
                    "map on the host (torch.unique); set it false")
        return None

    def optimizer_groups(self):
        generator = list(self.generator.parameters())
        if self.encoder is not None:
            generator += list(self.encoder.parameters())  # E is trained jointly with G, on G's loss
        return {"generator": generator, "discriminator": self.discriminator.parameters()}

    def networks(self) -> dict[str, nn.Module]:
        networks = super().networks()
        if self.encoder is not None:
            networks["encoder"] = self.encoder
        return networks

    def generator_for(self, direction: str | None = None) -> nn.Module:
        if direction not in (None, "AtoB"):
            raise ValueError(
                f"pix2pixHD translates one way only (labels -> images); direction={direction!r} does not apply"
            )
        return self.generator

    def source_channels(self, direction: str | None = None) -> int:
        """The label channels (the Translator feeds one image); the generator also accepts an instance channel."""
        return self.generator.label_channels

    def forward(self, real_a: torch.Tensor) -> torch.Tensor:
        return self.generator(real_a)

    # ----- perceptual network: built at fit start, only when used -----
    def perceptual_loss(self) -> VGGLoss | None:
        if self.loss.lambda_vgg <= 0:
            return None
        if not self._perceptual:
            factory = self._perceptual_factory
            if factory is None:  # VGG19: imported and built only when used (it needs the weights file)
                from gan_translate.networks.vgg import VGGFeatures

                features = VGGFeatures(self.vgg_weights, normalize_input=self.vgg_normalize_input)
            else:
                features = build_network(factory)
            self._perceptual.append(VGGLoss(features))
        return self._perceptual[0]

    # ----- coarse-to-fine -----
    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.perceptual_loss()  # a missing VGG weights file fails here, before any training

    def on_fit_start(self) -> None:
        super().on_fit_start()
        # After a resumed checkpoint is restored (trainer.ckpt_path is known by now): a resumed stage 2 keeps
        # its own weights and does not need the stage-1 file any more. Every DDP rank loads the same file.
        if self.global_ckpt and self.trainer.ckpt_path is None:
            self.load_global_generator(self.global_ckpt)

    def load_global_generator(self, path: str) -> None:
        """G1's weights from a stage-1 checkpoint written by ``gan_translate.train`` (``model.global_ckpt``)."""
        from gan_translate.checkpoint import load_checkpoint

        network = self.generator.network
        if not hasattr(network, "load_global_generator"):
            raise ValueError(
                f"model.global_ckpt={path}: the generator is a {type(network).__name__}; only the local enhancer "
                "(generator=pix2pixhd_local) starts from a stage-1 global generator"
            )
        state = load_checkpoint(path)["state_dict"]
        prefix = "generator.network."
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not weights:
            raise ValueError(f"model.global_ckpt={path} is not a pix2pixHD checkpoint (no {prefix}* weights)")
        network.load_global_generator(weights, source=f"model.global_ckpt={path}")
        log.info("G1 initialised from %s", path)

    def global_frozen(self) -> bool:
        return self.current_epoch < self.fix_global_epochs

    def on_train_epoch_start(self) -> None:
        # After DDP wrapping (which registers the parameters that require grad), so that the unfrozen phase
        # is synchronised too; untouched parameters get no grad and so no update (Adam skips them).
        if self.fix_global_epochs:
            frozen = self.global_frozen()
            for parameter in self.generator.network.global_parameters():
                parameter.requires_grad_(not frozen)

    # ----- training -----
    def _inputs(self, batch: dict) -> torch.Tensor:
        real_a = self.prepare(batch["A"])
        if self.instance and "inst" in batch:
            real_a = torch.cat([real_a, batch["inst"].to(real_a)], 1)
        return real_a

    def _generate(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(condition, real B, fake B); instance features come from the encoder on the real image."""
        real_b = self.prepare(batch["B"])
        condition, regions, _ = self.generator.condition(self._inputs(batch))
        features = self.encoder(real_b, regions) if self.encoder is not None else None
        return condition, real_b, self.generator.synthesize(condition, features)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        condition, real_b, fake_b = self._generate(batch)
        real_pair = torch.cat([condition, real_b], 1)

        # 1) D: every scale tells real pairs from fake pairs.
        with self.updating(opt_d):
            fake_pair = torch.cat([condition, fake_b.detach()], 1)
            real_outputs, fake_outputs = self.discriminator(real_pair), self.discriminator(fake_pair)
            loss_d = self.loss.gan.discriminator_loss(real_outputs, fake_outputs)
            losses = {"loss_D": loss_d}
            if self.loss.uses_gradient_penalty:
                losses["loss_D_GP"] = self.loss.lambda_gp * gradient_penalty(
                    lambda x: multiscale_scores(self.discriminator(x)),  # one penalty per scale's critic
                    real_pair, fake_pair, reduction=self.loss.gan.reduction,
                )
                loss_d = loss_d + losses["loss_D_GP"]
            self.optimization_step(opt_d, loss_d, losses)

        # 2) G: fool every scale, match D's features of real pairs, match VGG features of the real image.
        with self.updating(opt_g):
            generator_losses = self.generator_loss_terms(condition, real_pair, real_b, fake_b)
            self.optimization_step(opt_g, sum(generator_losses.values()), generator_losses)

        losses.update(generator_losses)
        self.log_train({f"train/{k}": v for k, v in losses.items()}, real_b.size(0), prog_bar=True)

    def generator_loss_terms(
        self, condition: torch.Tensor, real_pair: torch.Tensor, real_b: torch.Tensor, fake_b: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        fake_outputs = self.discriminator(torch.cat([condition, fake_b], 1))
        terms = {"loss_G_GAN": self.loss.gan.generator_loss(fake_outputs)}
        if self.loss.lambda_feat > 0:
            with torch.no_grad():  # D was just updated: its features of the real pair, as targets
                real_outputs = self.discriminator(real_pair)
            terms["loss_G_feat"] = self.loss.lambda_feat * self.loss.feature_matching(fake_outputs, real_outputs)
        perceptual = self.perceptual_loss()
        if perceptual is not None:
            perceptual.to(fake_b.device)
            terms["loss_G_VGG"] = self.loss.lambda_vgg * perceptual(fake_b, real_b)
        return terms

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        _, real_b, fake_b = self._generate(batch)
        self.log("val/l1", F.l1_loss(fake_b.float(), real_b.float()), prog_bar=True, sync_dist=True,
                 batch_size=real_b.size(0))
        self.update_metrics(fake_b, real_b)

    @torch.no_grad()
    def visuals(self, batch: dict) -> dict[str, torch.Tensor]:
        _, _, fake_b = self._generate(batch)
        real_a = batch["A"]
        shown = colour_labels(label_ids(real_a)) if self.label_nc else real_a
        return {"input": shown, "output": fake_b, "target": batch["B"]}


def colour_labels(ids: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W class ids -> N x 3 x H x W colours in [-1, 1] (a fixed palette, for sample grids)."""
    palette = torch.rand(256, 3, generator=torch.Generator().manual_seed(7)).to(ids.device) * 2 - 1
    palette[0] = -1  # class 0 (often "unlabelled") black
    return palette[ids[:, 0]].permute(0, 3, 1, 2)
