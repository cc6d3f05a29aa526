"""A non-finite loss stops training with a message (or is skipped); checkpoints never get NaN weights.
Memory does not grow over many epochs (slow soak test)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from gan_translate.models.base import NonFiniteLossError
from gan_translate.resume import nonfinite_entries
from gan_translate.train import CONF_DIR, train

TINY = [
    "generator.ngf=8", "discriminator.ndf=8", "data.train_length=8", "data.val_length=4", "data.batch_size=4",
    "data.num_workers=0", "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar=null", "callbacks.samples=null", "callbacks.lr_monitor=null", "logger=none",
]


class PoisonFromEpoch(pl.Callback):
    """Puts NaN into the input images from epoch ``epoch`` on (a broken file or a bad normalisation)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch >= self.epoch:
            batch["A"][0, 0, 0, 0] = float("nan")


def fit(tmp_path, *overrides, callbacks=None):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, f"paths.output_dir={tmp_path}", *overrides])
    return train(cfg, extra_callbacks=callbacks if callbacks is not None else [PoisonFromEpoch(1)])


def test_nan_loss_raises_naming_term_and_step_and_keeps_good_checkpoint(tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"discriminator loss is nan at global step 4 .*loss_D=nan"):
        fit(tmp_path, "trainer.max_epochs=3")
    last = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 4  # the epoch-0 checkpoint, untouched
    assert not nonfinite_entries(last["state_dict"])


def test_skip_mode_drops_bad_steps_and_trains_on(tmp_path):
    with pytest.warns(UserWarning, match="skipped a step"):
        fit(tmp_path, "trainer.max_epochs=2", "model.nonfinite=skip")
    last = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert not nonfinite_entries(last["state_dict"])
    assert last["global_step"] == 4  # every step of epoch 1 saw NaN input and was dropped


def test_cyclegan_skip_mode_keeps_nonfinite_fakes_out_of_the_pools(tmp_path):
    with pytest.warns(UserWarning, match="skipped a step"):
        fit(tmp_path, "experiment=shapes_cyclegan", "generator.n_blocks=2", "model.pool_size=16", "trainer.max_epochs=2",
            "model.nonfinite=skip")
    last = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert not nonfinite_entries(last["state_dict"])
    pools = last["image_pools"]
    # Epoch 0 filled the pools with its 8 fakes each; epoch 1's NaN batches added none.
    assert all(len(pool["images"]) == 8 and torch.isfinite(pool["images"]).all() for pool in pools.values())
    assert last["global_step"] == 4


@pytest.mark.parametrize("experiment", ["pix2pix", "cyclegan"])
def test_deferred_check_matches_the_host_check(tmp_path, experiment):
    """model.nonfinite_check=deferred (no host synchronisation per step): the same final weights as the host-side
    skip for the same seed, no NaN in the pools; under raise it stops at the epoch's check with last.ckpt
    from before the bad steps."""
    extra = ["experiment=shapes_cyclegan", "generator.n_blocks=2", "model.pool_size=16"] if experiment == "cyclegan" else []
    runs = {}
    for check in ("step", "deferred"):
        with pytest.warns(UserWarning, match="skipped a step"):
            fit(tmp_path / check, *extra, "trainer.max_epochs=2", "model.nonfinite=skip", f"model.nonfinite_check={check}")
        runs[check] = torch.load(tmp_path / check / "checkpoints/last.ckpt", weights_only=True)
    state = runs["deferred"]["state_dict"]
    assert not nonfinite_entries(state)
    for name, value in runs["step"]["state_dict"].items():
        assert torch.equal(value, state[name]), name
    if experiment == "cyclegan":
        assert all(torch.isfinite(pool["images"]).all() for pool in runs["deferred"]["image_pools"].values())
    with pytest.raises(NonFiniteLossError, match=r"loss\(es\) since the last check, the first of them the"):
        fit(tmp_path / "raise", *extra, "trainer.max_epochs=3", "model.nonfinite_check=deferred")
    last = torch.load(tmp_path / "raise" / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 4 and not nonfinite_entries(last["state_dict"])


@pytest.mark.slow
def test_memory_stays_flat_over_many_epochs(tmp_path):
    """RSS after epoch 10 vs after epoch 60 of tiny epochs, sample grids and validation history on."""
    rss: list[int] = []

    class RecordRSS(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            with open("/proc/self/statm") as statm:  # Linux: resident pages
                rss.append(int(statm.read().split()[1]) * 4096)

    fit(tmp_path, "data.train_length=4", "trainer.max_epochs=60", f"callbacks.samples={{_target_: "
        f"gan_translate.callbacks.SampleGrid, dirpath: '{tmp_path}/samples', num_images: 2}}",
        callbacks=[RecordRSS()])
    growth = rss[-1] - rss[9]
    assert growth < 32 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB between epoch 10 and 60"
