"""Loggers from conf/logger/*: real tiny runs write CSV, TensorBoard and offline W&B files (no account, no network)."""

from __future__ import annotations

import time

import pytest
from _tiny_run import compose_train, tiny_run
from hydra.utils import instantiate
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger

from gan_translate.loggers import ResumableCSVLogger

LOSS_KEYS = ["train/loss_D", "train/loss_G_GAN", "train/loss_G_L1", "val/l1"]


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """W&B with no account and no network: offline mode, its settings and caches in the test's folder."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for variable in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(variable, str(tmp_path / "wandb_home"))


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("csv", [ResumableCSVLogger]),
        ("tensorboard", [ResumableCSVLogger, TensorBoardLogger]),
        ("wandb", [ResumableCSVLogger, WandbLogger]),
        ("many", [ResumableCSVLogger, TensorBoardLogger, WandbLogger]),
        ("none", []),
    ],
)
def test_logger_configs_compose(choice, expected, tmp_path):
    cfg = compose_train(tmp_path, [f"logger={choice}"])
    loggers = [type(instantiate(node)) for node in cfg.logger.values()]
    assert sorted(loggers, key=lambda c: c.__name__) == expected
    if choice == "wandb":
        assert cfg.logger.wandb.offline is True and cfg.logger.wandb.save_dir == str(tmp_path)


def _wandb_run_file(run_dir):
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline W&B run under {run_dir}, found {files}"
    return files[0]


def _wandb_record(run_dir, *keys: str, timeout: float = 30.0) -> bytes:
    """The run's .wandb log once it holds ``keys``: W&B's service process writes it on its own schedule, and now
    and then after ``finish()`` has returned (seen: only the 7-byte header at first)."""
    deadline = time.monotonic() + timeout
    while True:
        record = _wandb_run_file(run_dir).read_bytes()
        if all(key.encode() in record for key in keys) or time.monotonic() > deadline:
            return record
        time.sleep(0.2)


def test_many_loggers_write_their_files(tmp_path, offline_wandb):
    tiny_run(tmp_path, ["logger=many"])

    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert set(LOSS_KEYS) | {"lr-generator", "lr-discriminator"} <= set(header)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert set(LOSS_KEYS) <= set(accumulator.Tags()["scalars"])
    assert "samples" in accumulator.Tags()["images"]
    # Pictures on the scalars' step axis: the sample grid after the epoch's validation, at its last logged step.
    last_scalar_step = max(event.step for event in accumulator.Scalars(LOSS_KEYS[0]))
    assert [image.step for image in accumulator.Images("samples")][-1] >= last_scalar_step > 0

    # The .wandb file is W&B's protobuf log: the logged keys, the config and the image key are in it.
    record = _wandb_record(tmp_path, *LOSS_KEYS, "lr-generator", "samples", "lambda_l1")
    for key in [*LOSS_KEYS, "lr-generator", "samples", "lambda_l1"]:
        assert key.encode() in record, key
    assert list((tmp_path / "wandb").glob("offline-run-*/files/media/images/samples_*.png"))


def test_wandb_runs_in_one_process_stay_separate(tmp_path, offline_wandb):
    """A sweep runs jobs in one process: each job must get its own W&B run in its own run folder."""
    first, second = tmp_path / "job0", tmp_path / "job1"
    tiny_run(first, ["logger=wandb"])
    tiny_run(second, ["logger=wandb", "loss.lambda_l1=10"])
    assert _wandb_run_file(first) != _wandb_run_file(second)
    assert b"train/loss_G_L1" in _wandb_record(second, "train/loss_G_L1")


def test_model_figures_reach_wandb(tmp_path, offline_wandb):
    """The AAE's latent scatter plot (a torchvision Image tensor) made W&B's image logging fail at the end of the
    first validation, losing the run."""
    from conftest import compose_train as compose
    from test_gan_family import tiny

    from gan_translate.train import train

    train(compose(tiny("aae", "logger=wandb"), tmp_path))
    assert list((tmp_path / "wandb").glob("offline-run-*/files/media/images/latent_*.png"))


def test_no_logger_run_trains(tmp_path):
    """logger=none with the default callbacks (LearningRateMonitor needs a logger: it is left out)."""
    assert tiny_run(tmp_path, ["logger=none", "monitor.metric=val/psnr", "monitor.mode=max"]) is not None
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file() and not (tmp_path / "csv").exists()
