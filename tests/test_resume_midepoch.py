"""Exact resume from interval checkpoints: a real training process is SIGKILLed one batch after an interval
checkpoint (mid-epoch, or at an epoch's end), the run is resumed from its folder, and its final weights must
equal the uninterrupted run's bit for bit (CPU, deterministic mode), with and without DataLoader workers."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir

from gan_translate.data import SyntheticShapesDataModule
from gan_translate.train import CONF_DIR, train

# 32 px, widths 8, 4 images in batches of 1: 4 batches = 8 optimizer steps per epoch, 2 epochs. last.ckpt is
# refreshed every 4 steps (and at each epoch end); the run is killed one batch (2 steps) after the checkpoint
# of step 12 (the middle of the second epoch) or 8, so the batch trained after it is lost.
COMMON = [
    "generator.ngf=8", "discriminator.ndf=8", "data.train_length=4", "data.batch_size=1",
    "data.val_length=2", "data.val_batch_size=2", "trainer.max_epochs=2", "trainer.accelerator=cpu",
    "trainer.deterministic=true", "trainer.num_sanity_val_steps=0", "seed=7", "logger=none",
    "callbacks.interval_checkpoint.every_n_train_steps=4", "callbacks.progress_bar=null",
    "callbacks.samples=null", "callbacks.lr_monitor=null",
]
MODELS = {
    # dropout in the U-Net, random flips
    "pix2pix": ["data.size=32", "generator.num_downs=5"],
    # random B pairing, random flips, image pools
    "cyclegan": ["data.size=32", "experiment=shapes_cyclegan", "generator.n_blocks=1", "model.pool_size=4"],
    # generation from noise: random z and codes drawn every batch, a Q head stepped with G (16 px digits)
    "infogan": ["experiment=demo_infogan", "data.image_size=16", "model.q_hidden=16", "model.noise_dim=8",
                "data.train_length=8", "data.batch_size=2"],  # batch norm in the Q head needs 2 per batch
}


class StallAt(pl.Callback):
    """Used by the killed process: at optimizer step ``step`` it says so in ``marker`` and hangs, so that the
    test kills it at a known point (a preemption that comes one batch after the last checkpoint)."""

    def __init__(self, step: int, marker: Path) -> None:
        self.step, self.marker = step, marker

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.marker.touch()
            time.sleep(600)


def overrides(model: str, workers: int, *extra: str) -> list[str]:
    return [*COMMON, *MODELS[model], f"data.num_workers={workers}", *extra]


def run_in_process(*args: str, extra_callbacks: list[pl.Callback] | None = None) -> None:
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        train(compose("train", overrides=list(args)), extra_callbacks)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Final weights of the uninterrupted run of each model, trained once for the module. Each item's
    augmentation follows its own seed, so the worker count does not change them: 0 workers serve all."""
    runs: dict[str, dict[str, torch.Tensor]] = {}

    def get(model: str) -> dict[str, torch.Tensor]:
        if model not in runs:
            out = tmp_path_factory.mktemp(f"full_{model}")
            run_in_process(*overrides(model, 0), f"paths.output_dir={out}")
            runs[model] = weights(out / "checkpoints/last.ckpt")
        return runs[model]

    return get


@pytest.mark.parametrize(
    ("model", "workers", "saved_at", "extra"),
    [
        ("pix2pix", 0, 12, []),
        ("pix2pix", 2, 12, []),
        ("cyclegan", 2, 12, []),
        ("infogan", 2, 12, []),
        # Due at the first epoch's last batch, so written after its validation and scheduler step (interval
        # checkpoints only); the resumed loader's workers must start in the second epoch's order.
        ("pix2pix", 2, 8, ["callbacks.best_checkpoint=null"]),
    ],
    ids=["pix2pix-0workers", "pix2pix-2workers", "cyclegan-2workers", "infogan-2workers", "pix2pix-2workers-epoch-end"],
)
def test_sigkill_after_interval_checkpoint_then_resume_matches_uninterrupted_run(
    tmp_path, uninterrupted, model, workers, saved_at, extra
):
    run_dir, marker, killed_at = tmp_path / "run", tmp_path / "stalled", saved_at + 2
    # The killed run is a forked copy of this process (a fresh interpreter would spend longer importing
    # Lightning than training): a real process with its own files and workers, SIGKILLed with no cleanup.
    # It inherits the one CPU thread of the test session (conftest): no OpenMP pool to fork, and the same
    # kernels as the in-process runs.
    process = multiprocessing.get_context("fork").Process(
        target=run_in_process,
        args=(*overrides(model, workers, *extra), f"resume={run_dir}", f"paths.output_dir={run_dir}"),
        kwargs={"extra_callbacks": [StallAt(killed_at, marker)]},
    )
    process.start()
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and process.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.join()
    assert marker.exists(), f"training ended (exit code {process.exitcode}) before step {killed_at}"
    assert process.exitcode == -signal.SIGKILL

    checkpoint = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == saved_at
    assert checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"], "no data-loader position saved"

    # Continue the run in its folder, as a re-submitted job would (resume=RUN_DIR).
    run_in_process(*overrides(model, workers, *extra), f"resume={run_dir}", f"paths.output_dir={run_dir}")
    resumed = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 16
    expected, got = uninterrupted(model), resumed["state_dict"]
    assert expected.keys() == got.keys()
    different = {k: float((expected[k].float() - got[k].float()).abs().max()) for k in expected
                 if not torch.equal(expected[k], got[k])}
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, max |dw|: {different}"


class StopAt(pl.Callback):
    """Sets ``trainer.should_stop`` after optimizer step ``step``, as max_time's Timer does when time is up."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            trainer.should_stop = True


@pytest.mark.parametrize("stop", ["max_steps", "should_stop"])
def test_run_stopped_mid_epoch_resumes_that_epoch(tmp_path, uninterrupted, stop):
    """max_steps=10 (or should_stop, as max_time sets it) stops in the second epoch (8 steps per epoch). Lightning
    still runs the epoch-end hooks then; last.ckpt must hold the state after step 10, mid-epoch, and a resume must
    train the epoch's remaining batches: the same final weights as the uninterrupted run."""
    run_dir = tmp_path / "run"
    common = [*overrides("pix2pix", 0, "callbacks.interval_checkpoint=null"), f"resume={run_dir}",
              f"paths.output_dir={run_dir}"]
    if stop == "max_steps":
        run_in_process(*common, "trainer.max_steps=10")
    else:
        run_in_process(*common, extra_callbacks=[StopAt(10)])
    stopped = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert stopped["global_step"] == 10 and stopped["epoch"] == 1
    run_in_process(*common)
    resumed = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert resumed["global_step"] == 16
    expected, got = uninterrupted("pix2pix"), resumed["state_dict"]
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_loader_position_resumes_with_another_worker_count_and_after_an_epoch_end(monkeypatch):
    """Batches (order, crops/flips, content) are a function of (seed, epoch, position) only: a position saved
    with 2 workers resumes with none, and one saved after an epoch's last batch resumes at the next epoch."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "3")  # what seed_everything exports; the loaders' shuffle seed

    def loader(workers: int):
        datamodule = SyntheticShapesDataModule(size=32, train_length=6, batch_size=2, num_workers=workers)
        datamodule.setup("fit")
        return datamodule.train_dataloader()

    def take(iterator, n: int) -> list:
        return [next(iterator) for _ in range(n)]

    def assert_same(batches: list, expected: list) -> None:
        for got, want in zip(batches, expected, strict=True):
            assert got["name"] == want["name"]
            assert torch.equal(got["A"], want["A"]) and torch.equal(got["B"], want["B"])

    reference = loader(0)
    expected = list(reference)  # epoch 0: 3 batches
    reference.sampler.set_epoch(1)
    expected += list(reference)

    with_workers = loader(2)
    iterator = iter(with_workers)
    assert_same(take(iterator, 2), expected[:2])
    resumed = loader(0)
    resumed.load_state_dict(with_workers.state_dict())
    assert_same(list(resumed), expected[2:3])

    # Lightning stops after len(loader) batches: an epoch-end state is "all yielded, not finished".
    single = loader(0)
    take(iter(single), 3)
    resumed = loader(0)
    resumed.load_state_dict(single.state_dict())
    assert_same(list(resumed), expected[3:])
