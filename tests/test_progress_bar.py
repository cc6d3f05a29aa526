"""The default progress bar shows the GAN loss terms under short names after a real (tiny) fit."""

from __future__ import annotations

from _tiny_run import TINY, compose_train
from hydra.utils import instantiate

from gan_translate.callbacks import LossProgressBar
from gan_translate.checkpoint import build_model
from gan_translate.train import choose_monitor, instantiate_all


def test_progress_bar_shows_short_loss_names(tmp_path, monkeypatch):
    monkeypatch.setattr("_tiny_run.TINY", [o for o in TINY if o != "~callbacks.progress_bar"])
    cfg = compose_train(tmp_path, ["logger=none", "~callbacks.lr_monitor"])
    choose_monitor(cfg)  # monitor.metric=auto, as train() resolves it
    callbacks = instantiate_all(cfg.callbacks)
    bar = next(c for c in callbacks if isinstance(c, LossProgressBar))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    model = build_model(cfg)
    trainer.fit(model, datamodule=instantiate(cfg.data))
    assert set(bar.get_metrics(trainer, model)) == {"D", "G_GAN", "G_L1", "val/l1"}
