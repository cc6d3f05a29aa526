"""CycleGAN (Zhu et al. 2017): unpaired translation with two generators and two discriminators.

    G_A: A -> B judged by D_A,   G_B: B -> A judged by D_B
    L = L_GAN(G_A, D_A) + L_GAN(G_B, D_B)
      + lambda_cycle * (|G_B(G_A(a)) - a|_1 + |G_A(G_B(b)) - b|_1)
      + lambda_identity * lambda_cycle * (|G_A(b) - b|_1 + |G_B(a) - a|_1)

Two optimizers, as in the authors' code: one over G_A+G_B, one over D_A+D_B (Adam is per-parameter,
so this equals separate optimizers per network). Two optimizer steps per batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gan_translate.losses import GANLoss, gradient_penalty
from gan_translate.models.base import GANModule, build_network, expect_loss, expect_score_map
from gan_translate.models.image_pool import ImagePool
from gan_translate.ranges import NonNegativeFloat, NonNegativeInt


class CycleGANLoss(nn.Module):
    """CycleGAN objective: GAN + lambda_cycle * cycle L1 + lambda_identity * lambda_cycle * identity L1.

    ``lambda_identity`` is a fraction of ``lambda_cycle``, as in the authors' code: 0.5 with
    lambda_cycle 10 weighs the identity term by 5. Set it to 0 to turn the identity loss off.
    """

    def __init__(
        self,
        gan_mode: str = "lsgan",
        lambda_cycle: NonNegativeFloat = 10.0,
        lambda_identity: NonNegativeFloat = 0.5,
        lambda_gp: NonNegativeFloat = 10.0,
    ) -> None:
        super().__init__()
        self.gan = GANLoss(gan_mode)
        self.lambda_cycle = lambda_cycle
        self.lambda_identity = lambda_identity
        self.lambda_gp = lambda_gp

    @property
    def uses_gradient_penalty(self) -> bool:
        return self.gan.gan_mode == "wgangp" and self.lambda_gp > 0


class CycleGAN(GANModule):
    paired = False  # validation compares G_A(A) with the B domain as a distribution (FID/KID)

    def __init__(
        self,
        generator: Callable[..., nn.Module],
        discriminator: Callable[..., nn.Module],
        loss: CycleGANLoss,
        optimizer: Callable,
        scheduler: Callable | None = None,
        input_nc: int = 3,
        output_nc: int = 3,
        pool_size: NonNegativeInt = 50,
        **kwargs,
    ) -> None:
        super().__init__(optimizer, scheduler, input_nc=input_nc, output_nc=output_nc, **kwargs)
        expect_loss(loss, CycleGANLoss, "cyclegan", "shapes_cyclegan")
        if loss.lambda_identity > 0 and input_nc != output_nc:
            raise ValueError(
                f"identity loss needs input_nc == output_nc (got {input_nc} and {output_nc}); "
                "set loss.lambda_identity=0"
            )
        self.generator_A = build_network(generator, input_nc=input_nc, output_nc=output_nc)
        self.generator_B = build_network(generator, input_nc=output_nc, output_nc=input_nc)
        self.discriminator_A = build_network(discriminator, input_nc=output_nc)  # real B vs G_A(A)
        self.discriminator_B = build_network(discriminator, input_nc=input_nc)  # real A vs G_B(B)
        expect_score_map(self.discriminator_A, "cyclegan")
        self.loss = loss
        self.fake_B_pool = ImagePool(pool_size)
        self.fake_A_pool = ImagePool(pool_size)

    def step_graph_unsupported(self) -> str | None:
        if (self.fake_A_pool.size and torch.are_deterministic_algorithms_enabled()
                and self.trainer.strategy.root_device.type == "cuda"):
            # Deterministic index_copy_ on CUDA is index_put_ with sorted indices, which checks their range on
            # the host: a synchronisation a capture does not allow (the CPU kernel, which the tests run, does not).
            return ("trainer.deterministic=true: the image pools' deterministic write on CUDA checks its index on the "
                    "host; set trainer.deterministic=false, or model.pool_size=0")
        return None

    def optimizer_groups(self):
        return {
            "generator": itertools.chain(self.generator_A.parameters(), self.generator_B.parameters()),
            "discriminator": itertools.chain(self.discriminator_A.parameters(), self.discriminator_B.parameters()),
        }

    def generator_for(self, direction: str | None = None) -> nn.Module:
        if direction not in (None, "AtoB", "BtoA"):
            raise ValueError(f"direction must be AtoB or BtoA, got {direction!r}")
        return self.generator_B if direction == "BtoA" else self.generator_A

    def forward(self, real_a: torch.Tensor) -> torch.Tensor:
        return self.generator_A(real_a)

    def discriminator_loss(self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        loss = self.loss.gan.discriminator_loss(discriminator(real), discriminator(fake))
        if self.loss.uses_gradient_penalty:
            loss = loss + self.loss.lambda_gp * gradient_penalty(discriminator, real, fake)
        return loss

    def generator_loss_terms(
        self, real_a: torch.Tensor, real_b: torch.Tensor, fake_b: torch.Tensor, fake_a: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Both generators' weighted loss terms by name; they minimise the sum, each is logged.

        The extension point for new objectives: a subclass adds a term to ``super()``'s dict.
        """
        gan, l1 = self.loss.gan, F.l1_loss
        rec_a, rec_b = self.generator_B(fake_b), self.generator_A(fake_a)
        losses = {
            "loss_G_A": gan.generator_loss(self.discriminator_A(fake_b)),
            "loss_G_B": gan.generator_loss(self.discriminator_B(fake_a)),
            "loss_cycle_A": self.loss.lambda_cycle * l1(rec_a.float(), real_a.float()),
            "loss_cycle_B": self.loss.lambda_cycle * l1(rec_b.float(), real_b.float()),
        }
        if self.loss.lambda_identity > 0:
            weight = self.loss.lambda_identity * self.loss.lambda_cycle
            losses["loss_idt_A"] = weight * l1(self.generator_A(real_b).float(), real_b.float())
            losses["loss_idt_B"] = weight * l1(self.generator_B(real_a).float(), real_a.float())
        return losses

    def training_step(self, batch: dict, batch_idx: int) -> None:
        real_a, real_b = self.prepare(batch["A"]), self.prepare(batch["B"])
        opt_g, opt_d = self.optimizers()

        # 1) Generators, with both discriminators fixed.
        with self.updating(opt_g):
            fake_b, fake_a = self.generator_A(real_a), self.generator_B(real_b)
            losses = self.generator_loss_terms(real_a, real_b, fake_b, fake_a)
            self.optimization_step(opt_g, sum(losses.values()), losses)
        if self.step_skipped:
            # nonfinite=skip dropped the G step: the fakes of this forward may be NaN/Inf, and in the pools
            # they would reach D again for many batches. The D step of this batch is dropped too.
            return
        # nonfinite_check=deferred cannot know yet: the flag keeps such fakes out of the pools on the device,
        # and the guard drops this batch's D update as well.
        bad = self.batch_nonfinite if self.deferred_guard else None

        # 2) Discriminators, on fakes drawn from the history pools.
        with self.updating(opt_d):
            losses["loss_D_A"] = self.discriminator_loss(self.discriminator_A, real_b, self.fake_B_pool.query(fake_b, bad))
            losses["loss_D_B"] = self.discriminator_loss(self.discriminator_B, real_a, self.fake_A_pool.query(fake_a, bad))
            d_terms = {k: losses[k] for k in ("loss_D_A", "loss_D_B")}
            self.optimization_step(opt_d, losses["loss_D_A"] + losses["loss_D_B"], d_terms)

        self.log_train({f"train/{k}": v for k, v in losses.items()}, real_a.size(0), prog_bar=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        real_a, real_b = self.prepare(batch["A"]), self.prepare(batch["B"])
        fake_b, fake_a = self.generator_A(real_a), self.generator_B(real_b)
        rec_a, rec_b = self.generator_B(fake_b), self.generator_A(fake_a)
        cycle = 0.5 * (F.l1_loss(rec_a.float(), real_a.float()) + F.l1_loss(rec_b.float(), real_b.float()))
        self.log("val/cycle_l1", cycle, prog_bar=True, sync_dist=True, batch_size=real_a.size(0))
        self.update_metrics(fake_b, real_b)

    @torch.no_grad()
    def visuals(self, batch: dict) -> dict[str, torch.Tensor]:
        real_a, real_b = self.prepare(batch["A"]), self.prepare(batch["B"])
        fake_b, fake_a = self.generator_A(real_a), self.generator_B(real_b)
        return {
            "real_A": real_a, "fake_B": fake_b, "rec_A": self.generator_B(fake_b),
            "real_B": real_b, "fake_A": fake_a, "rec_B": self.generator_A(fake_a),
        }

    # The pools are training state: saved so that a resumed run continues with the same history.
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["image_pools"] = {"fake_A": self.fake_A_pool.state_dict(), "fake_B": self.fake_B_pool.state_dict()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        pools = checkpoint.get("image_pools")
        if pools:
            self.fake_A_pool.load_state_dict(pools["fake_A"], self.device)
            self.fake_B_pool.load_state_dict(pools["fake_B"], self.device)
