"""Learning-rate schedules of the papers, as ordinary (checkpointable) torch schedulers, stepped per epoch."""

from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class LinearDecayLR(LRScheduler):
    """Constant for ``constant_epochs`` epochs, then linear decay towards 0 until ``total_epochs``.

    pix2pix/CycleGAN: 100 constant + 100 decaying epochs, i.e. ``constant_epochs=100, total_epochs=200``.
    ``constant_epochs=None`` keeps the LR constant for the first half, the papers' proportion.
    The factor for epoch e (0-based) is ``1 - max(0, e + 1 - constant_epochs) / (decay_epochs + 1)``,
    the authors' rule, so the last epoch still trains at a small positive rate.
    """

    def __init__(
        self, optimizer: Optimizer, total_epochs: int, constant_epochs: int | None = None, last_epoch: int = -1
    ) -> None:
        if constant_epochs is None:
            constant_epochs = total_epochs // 2
        if total_epochs < constant_epochs:
            raise ValueError(
                f"scheduler.total_epochs ({total_epochs}) must be >= scheduler.constant_epochs ({constant_epochs})"
            )
        self.constant_epochs = constant_epochs
        self.decay_epochs = total_epochs - constant_epochs
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        return 1.0 - max(0, epoch + 1 - self.constant_epochs) / (self.decay_epochs + 1)

    def get_lr(self) -> list[float]:
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]
