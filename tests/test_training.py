"""Real pix2pix training through the entry point: `gan_translate.train.train(cfg)` and `python -m gan_translate.train`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import (
    BATCHES,
    TINY_OVERRIDES,
    changed_parameters,
    compose_train,
    initial_state,
    logged,
    on_disk,
    read_metrics,
    run_module,
    write_aligned,
)
from omegaconf import OmegaConf
from PIL import Image

from gan_translate.predict import predict
from gan_translate.train import train
from gan_translate.translator import Translator


@pytest.fixture(scope="module")
def pix2pix_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pix2pix")
    cfg = compose_train(TINY_OVERRIDES, run_dir)
    before = initial_state(cfg)
    metric = train(cfg)
    return cfg, run_dir, before, metric


def test_run_folder(pix2pix_run):
    _, run_dir, _, _ = pix2pix_run
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    # The test session has no FID/LPIPS weights (conftest), so monitor=auto selects nothing: val/l1 would
    # reward blur. No "best" checkpoint is written.
    assert not list((run_dir / "checkpoints").glob("best_epoch*.ckpt"))
    assert list((run_dir / "samples").glob("*.png"))
    assert (run_dir / "csv" / "metrics.csv").is_file()


def test_both_networks_trained(pix2pix_run):
    _, run_dir, before, _ = pix2pix_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for prefix in ("generator.", "discriminator."):
        changed, total = changed_parameters(before, checkpoint, prefix)
        assert total > 0 and changed == total, f"{prefix}: {changed}/{total} parameters changed"
    # Two optimizer steps (D, then G) per batch.
    assert checkpoint["global_step"] == 2 * BATCHES
    assert len(checkpoint["optimizer_states"]) == 2


def test_losses_logged_and_finite(pix2pix_run):
    _, run_dir, _, metric = pix2pix_run
    rows = read_metrics(run_dir)
    for key in ("train/loss_D", "train/loss_G_GAN", "train/loss_G_L1", "train/D_real", "train/D_fake"):
        values = logged(rows, key)
        assert len(values) == BATCHES, key
        assert all(math.isfinite(v) for v in values), key
    val = logged(rows, "val/l1")
    assert len(val) == 1 and 0 < val[0] < 2  # an L1 distance between images in [-1, 1]
    assert metric is None  # nothing monitored (see test_run_folder)


def test_explicit_monitor_keeps_best_and_is_returned(tmp_path):
    cfg = compose_train([*TINY_OVERRIDES, "monitor.metric=val/psnr", "monitor.mode=max"], tmp_path)
    metric = train(cfg)
    assert len(list((tmp_path / "checkpoints").glob("best_epoch*.ckpt"))) == 1
    assert metric == pytest.approx(logged(read_metrics(tmp_path), "val/psnr")[-1])


def test_checkpoint_carries_run_config(pix2pix_run):
    cfg, run_dir, _, _ = pix2pix_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    stored = checkpoint["gan_translate"]
    assert stored["model_class"] == "gan_translate.models.pix2pix.Pix2Pix"
    assert stored["config"] == OmegaConf.to_container(cfg, resolve=True)


def test_train_module_subprocess(tmp_path):
    run_dir = tmp_path / "run"
    result = run_module(
        "gan_translate.train", *TINY_OVERRIDES, "data.train_length=4", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert saved.data.train_length == 4 and saved.generator.ngf == 8
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert logged(read_metrics(run_dir), "train/loss_G_L1")
    assert f"run folder: {run_dir}" in result.stdout + result.stderr


def test_pix2pix_on_aligned_folder_end_to_end(tmp_path):
    """facades layout on disk (train/ and test/ only, BtoA) -> training -> predict on A|B files."""
    root = write_aligned(tmp_path / "facades", splits=("train", "test"), count=3, size=40)
    run_dir = tmp_path / "run"
    cfg = compose_train(
        ["data=aligned", *on_disk(TINY_OVERRIDES), f"data.root={root}", "data.batch_size=2", "data.direction=BtoA"],
        run_dir,
    )
    with pytest.warns(UserWarning, match="no val split, so validation uses the TEST split"):
        train(cfg)
    rows = read_metrics(run_dir)
    assert logged(rows, "train/loss_G_L1")
    assert all(math.isfinite(v) for v in logged(rows, "val/l1"))  # validated on test/, and said so

    path = run_dir / "checkpoints" / "last.ckpt"
    overrides = [f"ckpt_path={path}", f"input={root / 'test'}", f"output_dir={tmp_path / 'out'}", "device=cpu"]
    written = predict(compose_train(overrides, config_name="predict"))
    assert sorted(p.name for p in written) == ["000.png", "001.png", "002.png"]
    pair = Image.open(root / "test" / "001.png")
    right_half = pair.crop((40, 0, 80, 40))  # BtoA: B, the right half, is the input
    output = Image.open(tmp_path / "out" / "001.png")
    assert output.size == (40, 40)
    expected = Translator.from_checkpoint(path, device="cpu")(right_half)
    np.testing.assert_array_equal(np.asarray(output), np.asarray(expected))


def test_metrics_every_few_epochs_pick_the_best_checkpoint_at_those_epochs(tmp_path):
    """metrics.every_n_epochs=2 with a monitored metric: ModelCheckpoint failed at the end of epoch 0, whose
    validation ran no metric; the best checkpoint now follows the metrics' epochs."""
    cfg = compose_train([*TINY_OVERRIDES, "metrics.every_n_epochs=2", "monitor.metric=val/psnr", "monitor.mode=max",
                         "trainer.max_epochs=3", "data.train_length=4"], tmp_path)
    train(cfg)
    assert [path.name for path in (tmp_path / "checkpoints").glob("best_*.ckpt")] == ["best_epoch001.ckpt"]
    psnr = [row["val/psnr"] for row in read_metrics(tmp_path) if row.get("val/psnr")]
    assert len(psnr) == 1
