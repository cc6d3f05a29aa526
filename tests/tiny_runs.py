"""Tiny Hydra-composed configs for real Trainer runs in the perf/precision/DDP tests (32 px, 8 channels)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

from gan_translate.train import CONF_DIR

TINY = {
    "pix2pix": ["generator.num_downs=5"],
    "cyclegan": ["experiment=shapes_cyclegan", "generator.n_blocks=2", "model.pool_size=4"],
}


def tiny_config(model: str, output_dir: Path, *overrides: str, train_length: int = 8) -> DictConfig:
    """The real train.yaml composition, shrunk: 32 px, ngf = ndf = 8, no workers, no progress bar."""
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            *TINY[model], "generator.ngf=8", "discriminator.ndf=8", "data.size=32",
            f"data.train_length={train_length}", "data.val_length=4", "data.num_workers=0", "data.batch_size=2",
            "trainer.max_epochs=1", "trainer.log_every_n_steps=1", "callbacks.progress_bar=null",
            "+trainer.enable_model_summary=false", *overrides,
        ])
    with open_dict(cfg):  # outside a Hydra run there is no hydra:runtime.output_dir to resolve
        cfg.paths.output_dir = str(output_dir)
    return cfg
