"""What a GAN does when a loss turns NaN/Inf: ``model.nonfinite=raise|skip|ignore``.

- raise: stop before the bad step touches the weights, with a message naming the loss terms, the optimizer
  and the step (no checkpoint is written after it);
- skip: drop that optimizer step (and restore the norm layers' running statistics the bad forward pass
  changed), count it in ``train/skipped_steps``, go on;
- ignore: no check at all.

When the host learns about it: ``model.nonfinite_check``:

- step: each loss is read on the host before its update (one host-device synchronisation per optimizer step,
  which a GPU running batch-1 steps of a few milliseconds cannot afford);
- deferred: nothing is read per step. A device-side guard drops the update instead: the loss's "not finite" flag
  is handed to the fused optimizer as ``found_inf`` (the mechanism GradScaler uses, so the kernel itself leaves
  weights, moments and step count untouched), and at the end of the batch the norm layers' running statistics
  are put back with ``torch.where``. Once a loss of a batch is non-finite, the batch's later updates are dropped
  too (their inputs derive from it). The host reads the flags at check points: every
  ``trainer.log_every_n_steps`` batches, at the end of each epoch and before every checkpoint; then ``raise``
  stops (the guard kept the weights finite, and no checkpoint is written after the bad step) and ``skip``
  warns and logs ``train/skipped_steps``. Needs fused optimizers (``optim.fused=true``) and no GradScaler.

A mixin for LightningModules that optimize manually: ``optimization_step`` asks ``loss_is_usable`` first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from pytorch_lightning.utilities import rank_zero_warn

NONFINITE_POLICIES = ("raise", "skip", "ignore")
NONFINITE_CHECKS = ("step", "deferred")


class BufferSnapshot:
    """A copy of some tensors (a model's norm statistics and batch counts), put back on request.

    One flat tensor per dtype and device, so taking and restoring cost a few kernels whatever the number of
    buffers. Per buffer it would be three kernels per batch (clone, where, copy): about 150 for pix2pix's U-Net
    and PatchGAN. A GPU at batch 1 is bound by kernel launches (issue 14's H200 run: the GPU busy 12 % of the
    step), and the deferred guard with per-buffer copies made the pix2pix step 10 ms slower there (35 ms, 25 ms).
    """

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        groups: dict[tuple, list[torch.Tensor]] = {}
        for tensor in tensors:
            groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
        self.groups = list(groups.values())
        self.saved = [self._flat(group) for group in self.groups]

    @staticmethod
    def _flat(group: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([tensor.detach().reshape(-1) for tensor in group])

    def restore(self, where: torch.Tensor | None = None) -> None:
        """Put every tensor back as it was; with ``where`` (a device-side bool), only where it is true
        (no host synchronisation)."""
        for group, saved in zip(self.groups, self.saved, strict=True):
            values = saved if where is None else torch.where(where, saved, self._flat(group))
            parts = values.split([tensor.numel() for tensor in group])
            torch._foreach_copy_(group, [part.view_as(tensor) for part, tensor in zip(parts, group, strict=True)])


class NonFiniteLossError(FloatingPointError):
    """A loss became NaN/Inf; the message names the terms, the optimizer and the step."""


class NonFiniteLossPolicy:
    """Mixin: ``loss_is_usable(optimizer, loss, terms)`` applies the policy; ``step_skipped`` tells a
    training step whether an earlier update of the same batch was dropped."""

    nonfinite: str = "raise"
    nonfinite_check: str = "step"
    skipped_steps: int = 0
    step_skipped: bool = False  # nonfinite_check=step only; deferred: ``batch_nonfinite`` (a device flag)
    batch_nonfinite: torch.Tensor | None = None
    _guard_log: list[tuple[int, int]]  # (global step, optimizer index) per guarded update since the last check
    _batch_guard: list[tuple[int, int]]  # the same, for the updates of the current batch

    def set_nonfinite_policy(self, policy: str, check: str = "step") -> None:
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"model.nonfinite must be one of {NONFINITE_POLICIES}, got {policy!r}")
        if check not in NONFINITE_CHECKS:
            raise ValueError(f"model.nonfinite_check must be one of {NONFINITE_CHECKS}, got {check!r}")
        self.nonfinite, self.nonfinite_check = policy, check
        self._guard_log, self._batch_guard = [], []

    @property
    def deferred_guard(self) -> bool:
        return self.nonfinite != "ignore" and self.nonfinite_check == "deferred"

    def loss_is_usable(self, optimizer, loss: torch.Tensor, terms: dict[str, torch.Tensor] | None = None) -> bool:
        """False: skip this update. Raises under ``raise``. Deferred: always True; the flag goes to the
        optimizer's next step (call this before every step of a guarded optimizer)."""
        if self.nonfinite == "ignore":
            return True
        if self.nonfinite_check == "deferred":
            self._guard_on_device(optimizer, loss)
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
        which = self._optimizer_name(self._optimizer_index(optimizer))
        values = ", ".join(f"{name}={float(value.detach().float()):.4g}" for name, value in (terms or {}).items())
        return (f"{which} loss is {float(loss.detach().float())} at global step {self.trainer.global_step} "
                f"(epoch {self.current_epoch})" + (f": {values}" if values else ""))

    def _optimizer_index(self, optimizer) -> int:
        """Position of ``optimizer`` in ``self.optimizers()`` (-1: not one of them)."""
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return next((i for i, opt in enumerate(optimizers) if opt is optimizer), -1)

    def _optimizer_name(self, index: int) -> str:
        names = list(self.optimizer_groups())
        return names[index] if 0 <= index < len(names) else "optimizer"

    # ----- deferred: the guard on the device, the host check at check points -----
    def _guard_on_device(self, optimizer, loss: torch.Tensor) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)  # under the LightningOptimizer wrapper
        if not getattr(inner, "_step_supports_amp_scaling", False):
            raise ValueError(
                f"model.nonfinite_check=deferred drops bad updates inside a fused optimizer; {type(inner).__name__} "
                "is not one: set optim.fused=true (Adam, AdamW, SGD), or model.nonfinite_check=step"
            )
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            raise ValueError(
                f"model.nonfinite_check=deferred cannot share the optimizer's found_inf with the GradScaler of "
                f"trainer.precision={self.trainer.precision}: use bf16-mixed (no scaler), or model.nonfinite_check=step"
            )
        # Not finite, in two kernels (this runs before every update, outside any CUDA graph): x - x is 0 for a
        # finite x and NaN for NaN and +-Inf.
        difference = loss.detach() - loss.detach()
        bad = difference.ne(0) if difference.ndim == 0 else difference.ne(0).any()
        if self.trainer.world_size > 1:  # every rank drops the update together (the gradients are all-reduced)
            bad = self.trainer.strategy.reduce(bad.float(), reduce_op="max") > 0
        # Once an update of the batch was bad, its later ones are dropped too (their inputs derive from it).
        self.batch_nonfinite = bad if self.batch_nonfinite is None else self.batch_nonfinite | bad
        inner.found_inf = self.batch_nonfinite.float()  # read by the fused kernel at the next step()
        # Which update was the first bad one: per guarded update of the batch the host notes (global step,
        # optimizer) and the device its flag in a slot; at the batch's end the slots join the flags since the last
        # check in one copy, and the check reads those once. (The slots stay the same tensor from batch to batch:
        # under model.step_graph they are outputs of the captured step.)
        slot = len(self._batch_guard)
        self._batch_guard.append((self.trainer.global_step, self._optimizer_index(optimizer)))
        self._batch_slots = self._grown(getattr(self, "_batch_slots", None), slot + 1, loss.device)
        self._batch_slots[slot].copy_(bad)

    @staticmethod
    def _grown(flags: torch.Tensor | None, count: int, device: torch.device) -> torch.Tensor:
        """``flags``, or a larger copy of it when it holds fewer than ``count``. Each position is written before it
        is read, so nothing needs clearing."""
        if flags is None or len(flags) < count:
            grown = torch.zeros(max(64, 2 * count), dtype=torch.bool, device=device)
            if flags is not None:
                grown[: len(flags)].copy_(flags)
            flags = grown
        return flags

    def _commit_batch_guard(self) -> None:
        """The batch's guarded updates join those since the last check."""
        if not self._batch_guard:
            return
        start, count = len(self._guard_log), len(self._batch_guard)
        self._nonfinite_flags = self._grown(getattr(self, "_nonfinite_flags", None), start + count, self._batch_slots.device)
        self._nonfinite_flags[start : start + count].copy_(self._batch_slots[:count])
        self._guard_log += self._batch_guard
        self._batch_guard = []

    def check_nonfinite(self, log: bool = True) -> None:
        """Deferred: read the device flags (one synchronisation); raise or warn about bad updates since the last.
        ``log=False`` where Lightning allows no ``self.log`` (checkpoint hooks): the count is logged next time."""
        if not self.deferred_guard:
            return
        self._commit_batch_guard()  # a checkpoint callback may run before this batch's on_train_batch_end
        if self._guard_log:
            updates, self._guard_log = self._guard_log, []
            flags = self._nonfinite_flags[: len(updates)].tolist()
            if any(flags):
                self._report_nonfinite(sum(flags), *updates[flags.index(True)])
        if log and self.skipped_steps != getattr(self, "_skipped_steps_logged", 0):
            self.log("train/skipped_steps", float(self.skipped_steps), reduce_fx="max", batch_size=1)
            self._skipped_steps_logged = self.skipped_steps

    def _report_nonfinite(self, count: int, step: int, index: int) -> None:
        which = self._optimizer_name(index)
        where = (f"{count} non-finite loss(es) since the last check, the first of them the {which} loss at global "
                 f"step {step} (epoch {self.current_epoch}); the device-side guard dropped those updates")
        if self.nonfinite == "raise":
            raise NonFiniteLossError(
                f"{where}, so the weights are still finite, and no checkpoint was written after it. Lower the "
                "learning rate, set model.gradient_clip_val, or use model.nonfinite=skip to train on."
            )
        self.skipped_steps += count
        rank_zero_warn(f"skipped a step: {where} ({self.skipped_steps} skipped so far)")

    # A bad batch's forward pass has already updated the norm layers' running statistics (and batch counts);
    # they are put back as they were before the batch (a small copy: norm buffers are per channel). Deferred:
    # by torch.where.
    # model.step_graph: the snapshot and the restore belong to the captured step (``norm_buffers_guarded``), so that
    # a replayed batch launches them with the graph instead of one by one.
    guard_buffers_in_step: bool = False

    def on_train_batch_start(self, batch, batch_idx) -> None:
        self.step_skipped = False
        if (self.nonfinite == "skip" or self.deferred_guard) and not self.guard_buffers_in_step:
            self._buffers_before = BufferSnapshot([b for _, b in self.named_buffers()])
        self.batch_nonfinite = None  # deferred: set by the batch's first guarded update
        self._batch_guard = []
        super().on_train_batch_start(batch, batch_idx)

    @contextmanager
    def norm_buffers_guarded(self) -> Iterator[None]:
        """Deferred guard, around a training step: the norm buffers as before the step where an update was bad."""
        snapshot = BufferSnapshot([b for _, b in self.named_buffers()]) if self.deferred_guard else None
        yield
        if snapshot is not None and self.batch_nonfinite is not None:
            snapshot.restore(where=self.batch_nonfinite)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self._commit_batch_guard()
        if self.step_skipped:
            self._buffers_before.restore()
        elif self.deferred_guard and self.batch_nonfinite is not None:
            if not self.guard_buffers_in_step:
                self._buffers_before.restore(where=self.batch_nonfinite)
            if (batch_idx + 1) % max(1, self.trainer.log_every_n_steps) == 0:
                self.check_nonfinite()
        super().on_train_batch_end(outputs, batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        self.check_nonfinite()
        super().on_train_epoch_end()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.check_nonfinite(log=False)  # raise before a checkpoint is written after a bad step
        super().on_save_checkpoint(checkpoint)
