"""GANModule: what every GAN here shares, so that a method's file holds only its equations.

- manual optimization: each D or G update is ``optimization_step`` (zero_grad -> manual_backward ->
  optional clipping -> step) on a LightningOptimizer, so precision plugins (bf16/16-mixed scaling)
  and strategies (DDP) stay in the loop;
- one optimizer and one scheduler per parameter group, schedulers stepped per epoch by us
  (Lightning does not step them under manual optimization);
- channels_last and torch.compile switches;
- the run's composed config stored in every checkpoint, so predict needs nothing else.

Note: ``trainer.global_step`` counts optimizer steps, i.e. (number of optimizers) per batch; losses are
logged against batches. ``trainer.max_steps`` is therefore in optimizer steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import pytorch_lightning as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau

import gan_translate

CHECKPOINT_KEY = "gan_translate"
log = logging.getLogger(__name__)


def build_network(factory: Callable[..., nn.Module] | nn.Module, **channels: int) -> nn.Module:
    """Accept a ready module or a factory (e.g. a Hydra ``_partial_``) that still needs channel counts."""
    return factory if isinstance(factory, nn.Module) else factory(**channels)


class GANModule(pl.LightningModule):
    """Base of the GAN LightningModules. Subclasses define ``optimizer_groups``, ``training_step``,
    ``validation_step`` and ``visuals``; ``generator_for(direction)`` serves prediction and export."""

    def __init__(
        self,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], object] | None = None,
        input_nc: int = 3,
        output_nc: int = 3,
        scheduler_monitor: str | None = None,
        gradient_clip_val: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.input_nc, self.output_nc = input_nc, output_nc
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_monitor = scheduler_monitor
        self.gradient_clip_val = gradient_clip_val
        self.channels_last = channels_last
        self.compile_networks = compile
        self.run_config: dict | None = None  # the composed Hydra config, set by the entry point

    # ----- hooks for subclasses -----
    def optimizer_groups(self) -> dict[str, Iterable[nn.Parameter]]:
        """Name -> parameters, one optimizer each, in the order ``self.optimizers()`` returns them."""
        raise NotImplementedError

    def networks(self) -> dict[str, nn.Module]:
        """Every trainable network by name (for channels_last/compile and for checks)."""
        return {name: module for name, module in self.named_children() if name.startswith(("generator", "discriminator"))}

    def generator_for(self, direction: str | None = None) -> nn.Module:
        """The generator that translates in ``direction`` (None: the model's own direction)."""
        raise NotImplementedError

    def source_channels(self, direction: str | None = None) -> int:
        """Channel count of the images that ``generator_for(direction)`` takes."""
        return self.output_nc if direction == "BtoA" else self.input_nc

    def visuals(self, batch: dict) -> dict[str, torch.Tensor]:
        """Named image batches (in [-1, 1]) shown side by side in sample grids."""
        raise NotImplementedError

    # ----- setup -----
    def configure_model(self) -> None:
        # aot_autograd has no double backward, which the WGAN-GP penalty takes through the discriminators.
        double_backward = getattr(getattr(self, "loss", None), "uses_gradient_penalty", False)
        for name, network in self.networks().items():
            if self.channels_last:
                network.to(memory_format=torch.channels_last)
            if self.compile_networks:
                if double_backward and name.startswith("discriminator"):
                    log.info("model.compile: %s stays eager (the gradient penalty needs double backward)", name)
                    continue
                network.compile()  # in place: state_dict keys stay unprefixed

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def configure_optimizers(self):
        groups = self.optimizer_groups()
        optimizers = [self.optimizer_factory(params) for params in groups.values()]
        if self.scheduler_factory is None:
            return optimizers
        # Named so that LearningRateMonitor logs lr-generator, lr-discriminator, ...
        schedulers = [
            {"scheduler": self.scheduler_factory(optimizer), "name": f"lr-{name}", "interval": "epoch"}
            for name, optimizer in zip(groups, optimizers, strict=True)
        ]
        return optimizers, schedulers

    # ----- optimization -----
    @contextmanager
    def updating(self, optimizer) -> Iterator[None]:
        """Only ``optimizer``'s parameters require grad inside (no wasted grads for the other network)."""
        with self.toggled_optimizer(optimizer):
            yield

    def optimization_step(self, optimizer, loss: torch.Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        optimizer.step()  # clipping happens in on_before_optimizer_step

    def on_before_optimizer_step(self, optimizer) -> None:
        # Lightning calls this inside optimizer.step(), after 16-mixed's GradScaler has unscaled the
        # gradients; clipping right after manual_backward would clip the scaled ones.
        if self.gradient_clip_val:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")

    def on_train_epoch_end(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            if isinstance(scheduler, ReduceLROnPlateau):
                value = self.trainer.callback_metrics.get(self.scheduler_monitor or "")
                if value is None:
                    if self.trainer.current_epoch > 0 or self.scheduler_monitor is None:
                        raise RuntimeError(
                            f"plateau scheduler watches model.scheduler_monitor={self.scheduler_monitor!r}, "
                            f"which was not logged; logged metrics: {sorted(self.trainer.callback_metrics)}"
                        )
                    continue
                scheduler.step(value)
            else:
                scheduler.step()

    # ----- checkpoint -----
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "version": gan_translate.__version__,
            "model_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "config": self.run_config,
        }
