"""Train a GAN: ``python -m gan_translate.train [overrides]`` (``-m`` for sweeps).

Composes conf/train.yaml, builds datamodule, model, callbacks, loggers and Trainer with
``hydra.utils.instantiate``, fits, and returns the monitored metric (for sweepers such as Optuna).
"""

from __future__ import annotations

import logging
import os

import hydra
import pytorch_lightning as pl
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import WandbLogger

from gan_translate.callbacks import ValidationHistory
from gan_translate.checkpoint import (
    CheckpointError,
    build_model,
    initialise_from,
    load_checkpoint,
    reshaped_keys,
)
from gan_translate.config import CONF_DIR, check_composition, check_value_types
from gan_translate.errors import usage_errors_as_messages
from gan_translate.known_warnings import silence_known_warnings
from gan_translate.metrics.translation import selection_metric
from gan_translate.models.base import CHECKPOINT_KEY, GANModule
from gan_translate.resume import (
    AtomicCheckpointIO,
    RandomStateCheckpoint,
    config_changes,
    describe_changes,
    optimizer_layout_mismatch,
    resume_checkpoint,
)
from gan_translate.sizes import check_training_sizes

log = logging.getLogger(__name__)


def instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every entry of a dict-shaped group (callbacks, logger); empty entries are skipped."""
    return [instantiate(node) for node in (group or {}).values() if node is not None and "_target_" in node]


def check_resumable(ckpt_path: str, model: GANModule) -> None:
    """Before training: fail, naming the file and the differing keys, when the checkpoint's optimizer states do
    not fit this config's optimizers (else Lightning fails inside fit with torch's bare size error); warn about
    any other config change."""
    checkpoint = load_checkpoint(ckpt_path)
    changed = config_changes(checkpoint[CHECKPOINT_KEY]["config"], model.run_config)
    saved_class = checkpoint[CHECKPOINT_KEY]["model_class"]
    try:  # a subclass of the saved model (the same method extended) may continue its training
        same_method = isinstance(model, get_class(saved_class))
    except Exception:  # noqa: BLE001 - a class that cannot be imported here is another model
        same_method = False
    resized = reshaped_keys(model.state_dict(), checkpoint.get("state_dict", {}))
    if not same_method or resized:
        what = (f"it holds a {saved_class.rsplit('.', 1)[-1]}, this config builds a {type(model).__name__}"
                if not same_method else
                f"{len(resized)} weights have other shapes in this config ({', '.join(resized[:3])} ...)")
        raise CheckpointError(
            f"{ckpt_path} cannot be resumed with this config: {what}. Keys that differ from the checkpoint's config: "
            f"{describe_changes(changed)}. Resume with the overrides it was trained with (its run folder's "
            ".hydra/overrides.yaml), or start a new run."
        )
    mismatch = optimizer_layout_mismatch(checkpoint, model.optimizer_groups())
    if mismatch:
        raise CheckpointError(
            f"{ckpt_path} cannot be resumed with this config: {mismatch}. Keys that differ from the checkpoint's "
            f"config: {describe_changes(changed)}. Resume with the checkpoint's settings, or start a new run."
        )
    if changed:
        log.warning(
            "resuming %s with a config that differs in %d keys: %s. Optimizer and scheduler states are restored as "
            "saved (a changed optim.lr does not apply); the linear and cosine schedules' lengths follow this config.",
            ckpt_path, len(changed), describe_changes(changed),
        )


def absolute_data_root(cfg: DictConfig) -> None:
    """Make a relative ``data.root`` absolute (from the launch folder) in the config the checkpoints keep:
    evaluate, predict and resume read the run's data from there, from whatever folder they run in."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig) or "root" not in data or OmegaConf.is_missing(data, "root"):
        return
    root = data.root
    if isinstance(root, str) and root and not os.path.isabs(os.path.expanduser(root)):
        with open_dict(cfg):
            data.root = os.path.abspath(root)


def absolute_init_from(cfg: DictConfig) -> None:
    """``init_from`` as an absolute path in the config the checkpoints keep (where the run's weights came from)."""
    path = cfg.get("init_from")
    if isinstance(path, str) and path:
        with open_dict(cfg):
            cfg.init_from = os.path.abspath(os.path.expanduser(path))


def choose_monitor(cfg: DictConfig) -> str | None:
    """Resolve ``monitor.metric=auto`` in ``cfg`` (see conf/train.yaml); returns the metric, or None when no
    metric fit for picking checkpoints is available (then only last.ckpt and periodic checkpoints are kept)."""
    metric = cfg.monitor.metric if cfg.monitor.metric != "auto" else _auto_monitor(cfg)
    best = (cfg.get("callbacks") or {}).get("best_checkpoint")
    every = (cfg.get("metrics") or {}).get("every_n_epochs") or 1
    if metric and best and every > 1 and best.get("every_n_epochs") is None:
        # Validation metrics run every `every` epochs (the same (epoch + 1) % every rule as ModelCheckpoint's), and
        # ModelCheckpoint fails at the end of a validation that lacks its monitored metric.
        with open_dict(cfg):
            best.every_n_epochs = every
    return metric


def _auto_monitor(cfg: DictConfig) -> str | None:
    paired = bool(getattr(get_class(cfg.model._target_), "paired", True))
    collection = (cfg.get("metrics") or {}).get("collection") or {}
    metric = selection_metric(collection, paired)
    with open_dict(cfg):
        cfg.monitor.metric = metric
        cfg.monitor.mode = "min"
        if metric is None and "best_checkpoint" in (cfg.get("callbacks") or {}):
            cfg.callbacks.best_checkpoint = None
    if metric is None:
        # "auto" that stayed off: the weights are missing; otherwise this metrics config leaves FID and LPIPS off.
        why = ("no FID or LPIPS weights were found (python -m gan_translate.weights fetch fid)"
               if any(collection.get(name) == "auto" for name in ("fid", "lpips"))
               else "this metrics config runs neither FID nor LPIPS")
        log.warning(
            "no best checkpoint: %s, and pixel losses such as val/l1 reward blurry outputs, so only last.ckpt and "
            "the periodic checkpoints are kept. Set monitor.metric=... to select by another metric.", why
        )
    return metric


def train(cfg: DictConfig, extra_callbacks: list[pl.Callback] | None = None) -> float | None:
    """Fit as configured; ``extra_callbacks`` are added to the configured ones (for programmatic use)."""
    check_composition(cfg)  # data.root=??? left out; model=dcgan alone (the default data has no image_size)
    check_value_types(cfg)  # model.step_graph=flase would otherwise be a true string
    absolute_data_root(cfg)
    absolute_init_from(cfg)
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    metric = choose_monitor(cfg)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg)
    check_training_sizes(model, datamodule)  # before the Trainer: a size no network takes fails here, naming keys
    ckpt_path = resume_checkpoint(cfg.get("ckpt_path"), cfg.get("resume"), cfg.paths.output_dir)
    if ckpt_path:
        check_resumable(ckpt_path, model)
        if cfg.get("init_from"):  # a re-submitted fine-tune continues its own run; its start came from init_from
            log.info("init_from=%s not applied: continuing from %s", cfg.init_from, ckpt_path)
    elif cfg.get("init_from"):
        copied = initialise_from(model, cfg.init_from, cfg.get("init_modules"))
        log.info("%s initialised from init_from=%s; optimizers, schedules and counters start fresh",
                 ", ".join(copied), cfg.init_from)
    history = ValidationHistory()
    callbacks = [*instantiate_all(cfg.get("callbacks")), history, RandomStateCheckpoint(), *(extra_callbacks or [])]
    loggers = instantiate_all(cfg.get("logger"))
    if not loggers:  # logger=none: nothing to send learning rates to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # Atomic checkpoint writes unless the trainer config brings its own plugins.
    plugins = {} if "plugins" in cfg.trainer else {"plugins": [AtomicCheckpointIO()]}
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **plugins)
    for logger in trainer.loggers:
        logger.log_hyperparams(model.run_config)

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)

    history.restore(trainer.callback_metrics)  # ddp_spawn: the history lived in the worker processes
    if trainer.is_global_zero:
        for name in [metric] if metric else history.names():
            summary = history.summary(name, cfg.monitor.mode if name == metric else None)
            if summary:
                log.info(summary)
        log.info("run folder: %s", cfg.paths.output_dir)
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            # Lightning reuses an unfinished W&B run: the next job of a sweep would log into this one.
            logger.experiment.finish()
    value = trainer.callback_metrics.get(metric) if metric else None
    return None if value is None else float(value)


def failure_summary(error: BaseException) -> str:
    """The error's message; for one re-raised from a DataLoader worker ("Caught DataError in DataLoader worker
    process 1. Original Traceback: ..."), the original error's last line, which names the file."""
    text = str(error)
    if text.startswith("Caught ") and "Original Traceback" in text:
        return text.strip().splitlines()[-1]
    return text


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    silence_known_warnings()
    with usage_errors_as_messages():
        try:
            return train(cfg)
        except Exception as error:
            # Hydra made the run folder before the job started: its train.log says why the run stopped there.
            log.error("run failed: %s: %s", type(error).__name__, failure_summary(error))
            raise


if __name__ == "__main__":
    main()
