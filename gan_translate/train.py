"""Train a GAN: ``python -m gan_translate.train [overrides]`` (``-m`` for sweeps).

Composes conf/train.yaml, builds datamodule, model, callbacks, loggers and Trainer with
``hydra.utils.instantiate``, fits, and returns the monitored metric (for sweepers such as Optuna).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig

from gan_translate.callbacks import ValidationHistory
from gan_translate.checkpoint import build_model

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
log = logging.getLogger(__name__)


def instantiate_all(group: DictConfig | None) -> list:
    """Instantiate every entry of a dict-shaped group (callbacks, logger); empty entries are skipped."""
    return [instantiate(node) for node in (group or {}).values() if node is not None and "_target_" in node]


def train(cfg: DictConfig) -> float | None:
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg)
    history = ValidationHistory()
    callbacks = [*instantiate_all(cfg.get("callbacks")), history]
    loggers = instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in trainer.loggers:
        logger.log_hyperparams(model.run_config)

    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    history.restore(trainer.callback_metrics)  # ddp_spawn: the history lived in the worker processes
    metric = cfg.monitor.metric
    if trainer.is_global_zero:
        summary = history.summary(metric)
        if summary:
            log.info(summary)
        log.info("run folder: %s", cfg.paths.output_dir)
    value = trainer.callback_metrics.get(metric)
    return None if value is None else float(value)


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
