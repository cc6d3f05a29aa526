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


def test_progress_bar_reads_the_losses_every_n_batches(tmp_path, monkeypatch):
    """metrics_every_n_batches=3: the losses are copied to the host (a GPU synchronisation) at batches 3 and 6
    of each epoch only; the bar keeps showing the last read values in between."""
    monkeypatch.setattr("_tiny_run.TINY", [o for o in TINY if o != "~callbacks.progress_bar"])
    cfg = compose_train(tmp_path, ["logger=none", "~callbacks.lr_monitor", "data.batch_size=1",
                                   "callbacks.progress_bar.metrics_every_n_batches=3", "trainer.max_epochs=1"])
    choose_monitor(cfg)
    callbacks = instantiate_all(cfg.callbacks)
    bar = next(c for c in callbacks if isinstance(c, LossProgressBar))
    reads = []
    original = type(bar).__mro__[1].get_metrics  # Lightning's RichProgressBar.get_metrics: the host read

    def counting(self, trainer, pl_module):
        if trainer.training:
            reads.append(trainer.fit_loop.epoch_loop.batch_progress.current.completed)
        return original(self, trainer, pl_module)

    monkeypatch.setattr(type(bar).__mro__[1], "get_metrics", counting)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=False)
    model = build_model(cfg)
    trainer.fit(model, datamodule=instantiate(cfg.data))
    batches = trainer.fit_loop.epoch_loop.batch_progress.current.completed
    assert batches >= 6
    assert set(reads) == {0} | set(range(3, batches + 1, 3)), reads  # 0: the first refresh (nothing shown yet)
    assert {"D", "G_GAN", "G_L1"} <= set(bar._shown)
