"""The GAN family under bf16 autocast and real 2-process DDP (gloo, spawn), through the same Hydra-composed
runs as tests/test_gan_family.py."""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_train
from hydra.utils import instantiate
from test_gan_family import TINY, tiny
from test_precision import fp16_on_cpu

from gan_translate.checkpoint import build_model, model_from_checkpoint
from gan_translate.models.nonfinite import NonFiniteLossError
from gan_translate.resume import nonfinite_entries
from gan_translate.train import train

ROOT = Path(__file__).resolve().parents[1]

# The networks each model trains (the AAE's generator is its decoder).
TRAINED = {"dcgan": {"generator", "discriminator"}, "cgan": {"generator", "discriminator"},
           "infogan": {"generator", "discriminator", "q_head"}, "aae": {"encoder", "decoder", "discriminator"}}


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name", list(TINY))
def test_family_trains_under_mixed_precision(tmp_path, name, precision):
    """bf16 autocast, and 16-mixed: fp16 autocast with a GradScaler (on the CPU, as tests/test_precision.py does:
    a small initial scale, so that the two tiny steps are not skipped as overflows)."""
    bf16 = precision == "bf16-mixed"
    cfg = compose_train(tiny(name, *(["trainer.precision=bf16-mixed"] if bf16 else [])), tmp_path)
    trainer_kwargs = {} if bf16 else fp16_on_cpu(init_scale=2.0**4)
    dtype = torch.bfloat16 if bf16 else torch.float16
    model = build_model(cfg)
    dtypes: list[torch.dtype] = []
    model.discriminator.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          **trainer_kwargs)
    trainer.fit(model, datamodule=instantiate(cfg.data))
    assert dtype in dtypes  # the precision plugin's autocast reached the manual G and D steps
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    assert losses and all(math.isfinite(v) for v in losses.values()), losses
    moved = {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, initial[n])}
    assert moved == TRAINED[name], moved
    assert all(torch.isfinite(p).all() for p in model.parameters())


class RankProbe(pl.Callback):
    """Inside each DDP worker: fingerprints of the images this rank trained on, and its final parameters."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.seen: list[str] = []
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += [hashlib.sha1(image.cpu().numpy().tobytes()).hexdigest() for image in batch["image"]]

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        params = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        torch.save({"world_size": trainer.world_size, "seen": self.seen, "params": params, "initial": self.initial},
                   self.out_dir / f"rank{trainer.global_rank}.pt")


# InfoGAN (a Q head on D's trunk, stepped with D) and the AAE (three optimizers, an encoder) are the two
# update rules furthest from pix2pix's; DCGAN and the cGAN share InfoGAN's networks and GANModule path.
@pytest.mark.parametrize("name", ["infogan", "aae", pytest.param("cgan", marks=pytest.mark.slow)])
def test_family_ddp_cpu_two_processes(tmp_path, name):
    probe = tmp_path / "probe"
    cfg = compose_train(
        tiny(name, "trainer=ddp_cpu", "data.train_length=32", "data.batch_size=4",
             "+callbacks.probe._target_=test_gan_family_scaling.RankProbe", f"+callbacks.probe.out_dir={probe}"),
        tmp_path / "run",
    )
    train(cfg)
    rank0, rank1 = (torch.load(probe / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert rank0["world_size"] == rank1["world_size"] == 2
    # Each rank trained on its own half of the 32 images (4 batches of 4 each).
    assert len(rank0["seen"]) == len(rank1["seen"]) == 16
    assert not set(rank0["seen"]) & set(rank1["seen"]) and len(set(rank0["seen"]) | set(rank1["seen"])) == 32
    # Every network moved from its init and ended bit-identical on both ranks; rank 0's checkpoint holds it.
    moved = {n.split(".")[0] for n, p in rank0["params"].items() if not torch.equal(p, rank0["initial"][n])}
    assert moved == TRAINED[name], moved
    for param_name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][param_name]), param_name
    model = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    for param_name, value in model.named_parameters():
        assert torch.equal(value, rank0["params"][param_name]), param_name


class PoisonFromEpoch(pl.Callback):
    """NaN in the images from epoch 1 on (a broken file or a bad normalisation)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch >= 1:
            batch["image"][0, 0, 0, 0] = float("nan")


@pytest.mark.parametrize(("name", "term"), [("cgan", "discriminator loss"), ("aae", "autoencoder loss")])
def test_family_nan_loss_stops_naming_the_term_and_keeps_the_good_checkpoint(tmp_path, name, term):
    cfg = compose_train(tiny(name, "trainer.max_epochs=3"), tmp_path)
    with pytest.raises(NonFiniteLossError, match=rf"{term} is nan at global step \d+ \(epoch 1\)"):
        train(cfg, extra_callbacks=[PoisonFromEpoch()])
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0 and not nonfinite_entries(last["state_dict"])


def test_family_multirun_and_tensorboard_figures(tmp_path):
    """A Hydra sweep over an InfoGAN key, each job in its own folder; TensorBoard receives the losses, the sample
    grid and the latent traversals."""
    command = [sys.executable, "-m", "gan_translate.train", "-m", *tiny("infogan", "logger=tensorboard"),
               "loss.lambda_categorical=0.5,2", f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for job, weight in (("0", 0.5), ("1", 2.0)):
        assert model_from_checkpoint(tmp_path / job / "checkpoints" / "last.ckpt").loss.lambda_categorical == weight
        events = EventAccumulator(str(next((tmp_path / job / "tensorboard").rglob("events.out.tfevents.*")).parent))
        events.Reload()
        assert {"train/loss_D", "train/loss_G", "train/loss_info_cat"} <= set(events.Tags()["scalars"])
        assert {"samples", "traversal_c1", "traversal_c2"} <= set(events.Tags()["images"])
