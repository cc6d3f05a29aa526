"""What a GAN does when a loss turns NaN/Inf: ``model.nonfinite=raise|skip|ignore``.

- raise: stop before the bad step touches the weights, with a message naming the loss terms, the optimizer
  and the step (no checkpoint is written after it);
- skip: drop that optimizer step (and restore the norm layers' running statistics the bad forward pass
  changed), count it in ``train/skipped_steps``, go on;
- ignore: no check at all (no host synchronisation per step).

A mixin for LightningModules that optimize manually: ``optimization_step`` asks ``loss_is_usable`` first.
"""

from __future__ import annotations

import torch
from pytorch_lightning.utilities import rank_zero_warn

NONFINITE_POLICIES = ("raise", "skip", "ignore")


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/Inf; the message names the terms, the optimizer and the step."""


class NonFiniteLossPolicy:
    """Mixin: ``loss_is_usable(optimizer, loss, terms)`` applies the policy; ``step_skipped`` tells a
    training step whether an earlier update of the same batch was dropped."""

    nonfinite: str = "raise"
    skipped_steps: int = 0
    step_skipped: bool = False

    def set_nonfinite_policy(self, policy: str) -> None:
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"model.nonfinite must be one of {NONFINITE_POLICIES}, got {policy!r}")
        self.nonfinite = policy

    def loss_is_usable(self, optimizer, loss: torch.Tensor, terms: dict[str, torch.Tensor] | None = None) -> bool:
        """False: skip this update. Raises under ``raise``."""
        if self.nonfinite == "ignore":
            return True
        finite = torch.isfinite(loss.detach()).all().float()
        if self.nonfinite == "skip" and self.trainer.world_size > 1:
            # Every rank must skip together, or DDP's gradient all-reduce would wait forever.
            finite = self.trainer.strategy.reduce(finite, reduce_op="min")
        if bool(finite):
            return True
        where = self._describe(optimizer, loss, terms)
        if self.nonfinite == "raise":
            raise NonFiniteLossError(
                f"{where}. Weights were not updated and no checkpoint was written after it. Lower the learning "
                "rate, set model.gradient_clip_val, or use model.nonfinite=skip to drop such steps."
            )
        self.skipped_steps += 1
        self.step_skipped = True
        rank_zero_warn(f"skipped a step: {where} ({self.skipped_steps} skipped so far)")
        self.log("train/skipped_steps", float(self.skipped_steps), reduce_fx="max", batch_size=1)
        return False

    def _describe(self, optimizer, loss: torch.Tensor, terms: dict[str, torch.Tensor] | None) -> str:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        names = list(self.optimizer_groups())
        index = next((i for i, opt in enumerate(optimizers) if opt is optimizer), None)
        which = names[index] if index is not None and index < len(names) else "optimizer"
        values = ", ".join(f"{name}={float(value.detach().float()):.4g}" for name, value in (terms or {}).items())
        return (f"{which} loss is {float(loss.detach().float())} at global step {self.trainer.global_step} "
                f"(epoch {self.current_epoch})" + (f": {values}" if values else ""))

    # skip: a bad batch's forward pass has already updated the norm layers' running statistics; they are
    # put back as they were before the batch (a small copy: norm buffers are per channel).
    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.step_skipped = False
        if self.nonfinite == "skip":
            self._buffers_before = {n: b.clone() for n, b in self.named_buffers() if b.is_floating_point()}
        super().on_train_batch_start(batch, batch_idx)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.step_skipped:
            buffers = dict(self.named_buffers())
            for name, value in self._buffers_before.items():
                buffers[name].copy_(value)
        super().on_train_batch_end(outputs, batch, batch_idx)
