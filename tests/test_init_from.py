"""init_from: a new run (fine-tune) starts from a checkpoint's weights, with fresh optimizers, schedules and counters."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import initial_state, run_module
from hydra import compose, initialize_config_dir

from gan_translate.checkpoint import CheckpointError
from gan_translate.config import ConfigError
from gan_translate.train import CONF_DIR, train

TINY = [
    "generator.ngf=8", "discriminator.ndf=8", "data.train_length=8", "data.val_length=4", "data.batch_size=4",
    "data.num_workers=0", "trainer.accelerator=cpu", "trainer.deterministic=true", "trainer.num_sanity_val_steps=0",
    "trainer.max_epochs=1", "callbacks.progress_bar=null", "callbacks.samples=null", "callbacks.lr_monitor=null",
    "logger=none", "metrics=none",
]


def compose_train(output_dir: Path, *overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[*TINY, f"paths.output_dir={output_dir}", *overrides])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


class StartOfTraining(pl.Callback):
    """What the run starts from: the weights, the step counter, the optimizers' states and learning rates."""

    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.clone() for k, v in pl_module.state_dict().items()}
        self.global_step = trainer.global_step
        self.optimizer_states = [len(opt.state) for opt in trainer.optimizers]
        self.lrs = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A finished pix2pix run (seed 1): the checkpoint the fine-tunes start from."""
    run = tmp_path_factory.mktemp("pretrained")
    train(compose_train(run, "seed=1", "optim.lr=1e-3"))
    return run / "checkpoints" / "last.ckpt"


def test_fine_tune_starts_from_the_weights_with_fresh_optimizers_and_counters(pretrained, tmp_path):
    start = StartOfTraining()
    train(compose_train(tmp_path, "seed=2", f"init_from={pretrained}"), extra_callbacks=[start])
    before = weights(pretrained)
    assert start.state.keys() == before.keys()
    assert all(torch.equal(start.state[k], before[k]) for k in before)
    # Fresh: no Adam moments, step 0, this config's learning rate (the pretrained run had 1e-3 and decayed it).
    assert start.global_step == 0 and start.optimizer_states == [0, 0]
    assert start.lrs == [2e-4, 2e-4]
    saved = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)
    assert saved["global_step"] == 4  # this run's own 2 batches x 2 optimizer steps
    assert saved["gan_translate"]["config"]["init_from"] == str(pretrained)  # absolute, as given here


def test_init_modules_copies_only_the_named_networks(pretrained, tmp_path):
    cfg = compose_train(tmp_path, "seed=2", f"init_from={pretrained}", "init_modules=[generator]")
    fresh = initial_state(cfg)
    start = StartOfTraining()
    train(cfg, extra_callbacks=[start])
    before = weights(pretrained)
    generator = [k for k in before if k.startswith("generator.")]
    discriminator = [k for k in before if k.startswith("discriminator.")]
    assert all(torch.equal(start.state[k], before[k]) for k in generator)
    assert all(torch.equal(start.state[k], fresh[k]) for k in discriminator)  # the new run's own seeded init
    assert not all(torch.equal(fresh[k], before[k]) for k in discriminator)


def test_a_resumed_fine_tune_continues_its_own_run(pretrained, tmp_path):
    """resume=RUN with init_from still given (the same command re-submitted): the weights come from the run's
    last.ckpt, not again from init_from, and the result equals an uninterrupted fine-tune."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    train(compose_train(whole, "seed=2", f"init_from={pretrained}"))
    train(compose_train(split, "seed=2", f"init_from={pretrained}", "trainer.max_steps=2"))
    train(compose_train(split, "seed=2", f"init_from={pretrained}", f"resume={split}"))
    a, b = weights(whole / "checkpoints/last.ckpt"), weights(split / "checkpoints/last.ckpt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoints_that_do_not_fit_are_named_before_training(pretrained, tmp_path):
    cyclegan = tmp_path / "cyclegan"
    train(compose_train(cyclegan, "experiment=shapes_cyclegan", "generator=unet_64", "data.train_length=4",
                        "trainer.max_steps=2"))
    cases = {
        r"a CycleGAN checkpoint\) does not fit this config's Pix2Pix.generator: has no generator weights": [
            f"init_from={cyclegan / 'checkpoints/last.ckpt'}"],
        "other shape": [f"init_from={pretrained}", "generator.ngf=16"],
        "init_from: checkpoint .*missing.ckpt does not exist": [f"init_from={tmp_path / 'missing.ckpt'}"],
    }
    for i, (message, overrides) in enumerate(cases.items()):
        with pytest.raises(CheckpointError, match=message):
            train(compose_train(tmp_path / str(i), *overrides))
        assert not (tmp_path / str(i) / "checkpoints").exists()
    with pytest.raises(ConfigError, match=r"Pix2Pix has the networks \['generator', 'discriminator'\], not \['gen'\]"):
        train(compose_train(tmp_path / "typo", f"init_from={pretrained}", "init_modules=[gen]"))


def test_the_command_line_names_a_bad_init_from_without_a_traceback(tmp_path):
    result = run_module("gan_translate.train", "init_from=nowhere.ckpt", "trainer.max_epochs=1",
                        f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "init_from: checkpoint" in result.stderr and "nowhere.ckpt does not exist" in result.stderr
    assert "Traceback" not in result.stderr
