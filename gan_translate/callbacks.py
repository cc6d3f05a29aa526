"""Lightning callbacks of our own: sample grids written as PNG and sent to image-capable loggers, validation
history, a progress bar with short loss names, a model summary without the FLOPs column, and the learning rate
monitor for device-tensor learning rates."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor, ModelSummary, RichProgressBar
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from torchvision.utils import make_grid, save_image

from gan_translate.data.transforms import to_unit_range


def sample_grid(visuals: dict[str, torch.Tensor]) -> torch.Tensor:
    """One row per image, one column per visual (e.g. input | output | target), in [0, 1]."""
    columns = [to_unit_range(images.detach().float().cpu()) for images in visuals.values()]
    columns = [c.expand(-1, 3, -1, -1) if c.size(1) == 1 else c for c in columns]  # grayscale next to RGB
    rows = torch.stack(columns, dim=1).flatten(0, 1)
    return make_grid(rows, nrow=len(columns), padding=2, pad_value=1.0)


class SampleGrid(pl.Callback):
    """After validation, translate a fixed set of validation images and save ``samples/epoch_XXXX.png``.

    The set is the first ``num_images`` of the first validation batches (or of the first training
    batch when there is no validation), so grids of successive epochs are comparable.
    """

    def __init__(self, dirpath: str, num_images: int = 4, every_n_epochs: int = 1) -> None:
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.fixed_batch: dict | None = None

    def _keep(self, batch: dict) -> None:
        if self.fixed_batch is None:
            self.fixed_batch = {k: v[: self.num_images].detach().cpu() for k, v in batch.items() if torch.is_tensor(v)}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self._keep(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == 0 and not trainer.val_dataloaders:
            self._keep(batch)
            self._write(trainer, pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, pl_module)

    def _write(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if self.fixed_batch is None or epoch % self.every_n_epochs or not trainer.is_global_zero:
            return
        batch = {k: v.to(pl_module.device) for k, v in self.fixed_batch.items()}
        with pl_module.evaluating(), torch.no_grad():
            visuals = pl_module.visuals(batch)
            grid = sample_grid(visuals)
        self.dirpath.mkdir(parents=True, exist_ok=True)
        save_image(grid, self.dirpath / f"epoch_{epoch:04d}.png")
        send_image(trainer, "samples", grid, " | ".join(visuals))


HISTORY_PREFIX = "history/"


class ValidationHistory(pl.Callback):
    """Keeps each validation's logged metrics, so a run can report how a metric moved.

    Under ``ddp_spawn`` fit runs in worker processes and only ``trainer.callback_metrics`` (tensors) comes
    back to the main process, so ``on_fit_end`` puts each metric's history there as one tensor
    (``history/<metric>``) and ``restore`` reads it back.
    """

    def __init__(self) -> None:
        self.epochs: list[dict[str, float]] = []
        self.carried: dict[str, list[float]] = {}

    # Saved in checkpoints: a resumed run's summary covers the whole run, not only the epochs since the resume.
    def state_dict(self) -> dict:
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict: dict) -> None:
        self.epochs = [dict(epoch) for epoch in state_dict.get("epochs", [])]

    def on_fit_end(self, trainer, pl_module) -> None:
        for metric in sorted({key for epoch in self.epochs for key in epoch if key != "epoch"}):
            trainer.callback_metrics[HISTORY_PREFIX + metric] = torch.tensor(self.values(metric))

    def restore(self, callback_metrics: dict) -> None:
        """Take the history from a (spawned) fit's returned callback metrics when this process saw none."""
        if not self.epochs:
            self.carried = {
                key.removeprefix(HISTORY_PREFIX): [float(v) for v in value.reshape(-1)]
                for key, value in callback_metrics.items() if key.startswith(HISTORY_PREFIX)
            }

    # on_validation_end, not on_validation_epoch_end: callbacks' epoch-end hooks run before the model's, where
    # the metric collection logs val/psnr, val/fid ...
    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
            self.epochs.append({"epoch": trainer.current_epoch, **metrics})

    def values(self, metric: str) -> list[float]:
        if not self.epochs:
            return list(self.carried.get(metric, []))
        return [epoch[metric] for epoch in self.epochs if metric in epoch]

    def names(self) -> list[str]:
        """Every metric with a history, e.g. val/l1, val/psnr."""
        if not self.epochs:
            return sorted(self.carried)
        return sorted({key for epoch in self.epochs for key in epoch if key != "epoch"})

    # Validation metrics where higher is better (PSNR, SSIM, the generative models' accuracies); the others (FID,
    # KID, LPIPS, L1, losses) are errors or distances.
    HIGHER_IS_BETTER = ("psnr", "ssim", "accuracy")

    def summary(self, metric: str, mode: str | None = None) -> str | None:
        """First, best and last value; ``mode`` ("min"/"max", e.g. monitor.mode) says which is best, else the
        metric's name does."""
        values = self.values(metric)
        if not values:
            return None
        if mode is None:
            mode = "max" if metric.endswith(self.HIGHER_IS_BETTER) else "min"
        best = max(values) if mode == "max" else min(values)
        return f"{metric}: first validation {values[0]:.4f}, best {best:.4f}, last {values[-1]:.4f}"


class LossProgressBar(RichProgressBar):
    """Rich progress bar showing the loss terms under short names (``G_L1`` for ``train/loss_G_L1``).

    The full names plus Lightning's ``v_num`` wrap over several lines on an 80-100 column terminal;
    loggers keep the full names.

    ``metrics_every_n_batches``: reading the logged losses copies them to the host, a synchronisation with the
    GPU that Lightning's bar does after every batch; N > 1 reads them every N training batches (the bar still
    moves every batch). The GPU fast path (``trainer=gpu_fast``) sets it to the logging interval.
    """

    def __init__(self, *args, metrics_every_n_batches: int = 1, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if metrics_every_n_batches < 1:
            raise ValueError(f"callbacks.progress_bar.metrics_every_n_batches must be >= 1, got {metrics_every_n_batches}")
        self.metrics_every_n_batches = metrics_every_n_batches
        self._shown: dict | None = None

    def get_metrics(self, trainer, pl_module) -> dict:
        if trainer.training and self._shown is not None and self.metrics_every_n_batches > 1:
            done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
            if done % self.metrics_every_n_batches:
                return self._shown
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        self._shown = {name.removeprefix("train/").removeprefix("loss_"): value for name, value in metrics.items()}
        return self._shown


class LearningRateLogger(LearningRateMonitor):
    """Lightning's LearningRateMonitor, logging a learning rate kept as a device tensor (``model.step_graph``: the
    captured Adam reads it from device memory) as a number. Lightning's would keep the tensor itself in its
    ``lrs`` history (one object, changed in place by the scheduler) and warn at every log."""

    def _extract_lr(self, param_group: dict, name: str) -> dict:
        lr = param_group["lr"]
        return super()._extract_lr({"lr": float(lr) if isinstance(lr, torch.Tensor) else lr}, name)


class ParameterSummary(ModelSummary):
    """Lightning's model summary (name, type, parameters, mode per network) without its FLOPs column.

    Lightning counts FLOPs only by running ``example_input_array``, which a GAN (several networks taking
    different inputs) does not have, so it printed "FLOPs 0" for every network and "Total FLOPs: 0".
    """

    @staticmethod
    def summarize(summary_data, total_parameters, trainable_parameters, model_size, total_training_modes,
                  total_flops=0, **kwargs) -> None:
        from pytorch_lightning.utilities.model_summary.model_summary import get_human_readable_count
        from rich import get_console
        from rich.table import Table

        columns = [(name, values) for name, values in summary_data if name != "FLOPs"]
        table = Table(header_style="bold magenta")
        for name, _ in columns:
            table.add_column(name, justify="right" if name == "Params" else "left")
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        console = get_console()
        console.print(table)
        console.print(
            f"Trainable params: {get_human_readable_count(int(trainable_parameters))}, "
            f"non-trainable: {get_human_readable_count(int(total_parameters - trainable_parameters))}, "
            f"size {model_size:.1f} MB"
        )


def send_image(trainer, key: str, image: torch.Tensor, caption: str | None = None) -> None:
    """Send one image (C x H x W in [0, 1]) to every image-capable logger (W&B, TensorBoard)."""
    # A plain tensor: wandb.Image refuses torch subclasses such as torchvision's tv_tensors.Image.
    image = image.as_subclass(torch.Tensor)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[image], caption=[caption or key])
        elif isinstance(logger, TensorBoardLogger):
            # The step axis of the scalars, which Lightning logs at the count of batches (not of optimizer steps).
            logger.experiment.add_image(key, image, global_step=trainer.fit_loop.epoch_loop._batches_that_stepped)


class ModelFigures(pl.Callback):
    """After validation (or each training epoch when there is none), write the model's extra pictures,
    ``pl_module.figures() -> {name: C x H x W in [0, 1]}`` (latent traversals, latent scatter plots ...), as
    ``<dirpath>/<name>_epoch_XXXX.png`` and send them to image-capable loggers. Models without ``figures``
    are left alone."""

    def __init__(self, dirpath: str, every_n_epochs: int = 1) -> None:
        self.dirpath = Path(dirpath)
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._write(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.val_dataloaders:
            self._write(trainer, pl_module)

    def _write(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if not hasattr(pl_module, "figures") or epoch % self.every_n_epochs or not trainer.is_global_zero:
            return
        with pl_module.evaluating(), torch.no_grad():
            figures = pl_module.figures()
        if figures:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        for name, image in figures.items():
            save_image(image, self.dirpath / f"{name}_epoch_{epoch:04d}.png")
            send_image(trainer, name, image)
