"""Tiny real training runs shared by the API, export, logger and notebook tests (32 px, 8 images, 1 epoch)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# Widths of 8 keep a CPU epoch to a few seconds.
TINY = [
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "+trainer.enable_model_summary=false",
    "data.size=32",
    "data.train_length=8",
    "data.val_length=4",
    "data.batch_size=4",
    "data.val_batch_size=4",
    "data.num_workers=0",
    "generator.ngf=8",
    "discriminator.ndf=8",
    "~callbacks.progress_bar",
]


def compose_train(output_dir: Path, overrides: list[str] = ()):
    """conf/train.yaml with the tiny settings; ``paths.output_dir`` replaces Hydra's run folder."""
    # pix2pix: a U-Net with 5 halvings takes 32 px; CycleGAN: a ResNet generator with one block.
    generator = ["generator.n_blocks=1"] if "experiment=shapes_cyclegan" in overrides else ["generator.num_downs=5"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            config_name="train", overrides=[*TINY, *generator, f"paths.output_dir={output_dir}", *overrides]
        )


def tiny_run(output_dir: Path, overrides: list[str] = ()) -> float | None:
    from gan_translate.train import train

    return train(compose_train(output_dir, overrides))
