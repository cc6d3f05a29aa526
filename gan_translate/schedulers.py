"""Learning-rate schedules of the papers, as ordinary (checkpointable) torch schedulers, stepped per epoch."""

from __future__ import annotations

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler


def check_run_length(epochs: int | None, key: str) -> None:
    """A schedule over the run's epochs needs that number: ``trainer.max_epochs=-1`` (or null: a run bounded by
    ``max_steps`` or ``max_time``) would otherwise give rate 0 from the first step (linear) or a division by 0."""
    if epochs is None or epochs < 1:
        raise ValueError(
            f"{key}={epochs}: the schedule spans the run's epochs and follows trainer.max_epochs unless set. For a "
            f"run bounded by trainer.max_steps or max_time, set {key}=N (epochs), or use scheduler=constant"
        )


def set_rates(scheduler: LRScheduler, rates: list[float]) -> None:
    """Put ``rates`` into the scheduler's optimizer (after a resume that changed the schedule)."""
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        if isinstance(group["lr"], torch.Tensor):  # a tensor rate (captured steps read it in place)
            group["lr"].fill_(rate)
        else:
            group["lr"] = rate
    scheduler._last_lr = [float(rate) for rate in rates]


class LinearDecayLR(LRScheduler):
    """Constant for ``constant_epochs`` epochs, then linear decay towards 0 until ``total_epochs``.

    pix2pix/CycleGAN: 100 constant + 100 decaying epochs, i.e. ``constant_epochs=100, total_epochs=200``.
    ``constant_epochs=None`` keeps the LR constant for the first half, the papers' proportion, rounded up: a
    1-epoch run (a smoke test, a notebook) trains at the full rate, where 0 constant epochs would halve it.
    The factor for epoch e (0-based) is ``1 - max(0, e + 1 - constant_epochs) / (decay_epochs + 1)``,
    the authors' rule, so the last epoch still trains at a small positive rate.
    """

    def __init__(
        self, optimizer: Optimizer, total_epochs: int, constant_epochs: int | None = None, last_epoch: int = -1
    ) -> None:
        check_run_length(total_epochs, "scheduler.total_epochs")
        if constant_epochs is None:
            constant_epochs = (total_epochs + 1) // 2
        if total_epochs < constant_epochs:
            raise ValueError(
                f"scheduler.total_epochs ({total_epochs}) must be >= scheduler.constant_epochs ({constant_epochs})"
            )
        self.constant_epochs = constant_epochs
        self.decay_epochs = total_epochs - constant_epochs
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        # Never negative: past total_epochs (a run longer than its schedule) the rate stays at 0.
        return max(0.0, 1.0 - max(0, epoch + 1 - self.constant_epochs) / (self.decay_epochs + 1))

    def load_state_dict(self, state_dict: dict) -> None:
        """Progress (epoch, base rates) from the checkpoint, the schedule from this config: a resume that extends
        the run (trainer.max_epochs, hence total_epochs) decays over the new length, as the reference's
        --continue_train does, instead of keeping the saved end and training at rate 0 after it. The optimizers'
        rates (restored before the schedulers) are set to the schedule's; a plain resume leaves them as they were."""
        schedule = {"constant_epochs": self.constant_epochs, "decay_epochs": self.decay_epochs}
        super().load_state_dict(state_dict)
        self.__dict__.update(schedule)
        set_rates(self, self.get_lr())

    def get_lr(self) -> list[float]:
        return [base_lr * self.factor(self.last_epoch) for base_lr in self.base_lrs]


class CosineDecayLR(CosineAnnealingLR):
    """torch's cosine annealing to ``eta_min`` over ``T_max`` epochs (conf/scheduler/cosine.yaml: the run's), with
    the resume rule of LinearDecayLR: progress from the checkpoint, the schedule from this config. torch's own
    restores the saved ``T_max``, so a resume that extends the run climbed back up the cosine (periodic past its
    end: 2e-4, 1e-4, 0, 1e-4, 2e-4 for 2 epochs resumed to 5)."""

    def load_state_dict(self, state_dict: dict) -> None:
        schedule = {"T_max": self.T_max, "eta_min": self.eta_min}
        super().load_state_dict(state_dict)
        self.__dict__.update(schedule)
        set_rates(self, self._get_closed_form_lr())
