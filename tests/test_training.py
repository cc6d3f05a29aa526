"""Real pix2pix training through the entry point: `gan_translate.train.train(cfg)` and `python -m gan_translate.train`."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import TINY_OVERRIDES, compose_train, run_module
from gan_translate.checkpoint import build_model
from gan_translate.train import train

BATCHES = 2  # data.train_length=8 / data.batch_size=4


def initial_state(cfg) -> dict[str, torch.Tensor]:
    """The weights `train(cfg)` starts from: same seed, same construction order."""
    pl.seed_everything(cfg.seed, workers=True)
    instantiate(cfg.data)
    return {k: v.clone() for k, v in build_model(cfg).state_dict().items()}


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def logged(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


def changed_parameters(model_before: dict, checkpoint: dict, prefix: str) -> tuple[int, int]:
    """(changed, total) parameter tensors under ``prefix`` between the initial and the trained state."""
    state = checkpoint["state_dict"]
    names = [k for k in state if k.startswith(prefix) and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    changed = sum(not torch.equal(model_before[k], state[k]) for k in names)
    return changed, len(names)


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
    assert list((run_dir / "checkpoints").glob("best_epoch*.ckpt"))
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
    assert len(val) == 1 and metric == pytest.approx(val[0])
    assert 0 < metric < 2  # an L1 distance between images in [-1, 1]


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
