"""data=paired_folders with the scale_width preprocess modes, composed by Hydra and trained for a few steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, changed_parameters, compose_train, initial_state, on_disk, random_rgb
from hydra.utils import instantiate
from PIL import Image

from gan_translate.data import PairedFoldersDataModule
from gan_translate.train import train

# 40 wide, 80 high: scale_width to data.load_size=32 gives 32 x 64, which the 5-level U-Net (multiples of 32) takes
# as it is, also with data.crop_size=40 (which scale_width does not use); scale_width_and_crop scales to 40, then
# crops 32.
WIDTH, HEIGHT = 40, 80


def write_paired_folders(root, counts={"train": 4, "val": 2}) -> None:  # noqa: B006 - read only
    """``root/{split}A/i.png`` and ``root/{split}B/i.png``: matching names, B a function of A (a colour swap)."""
    for split, count in counts.items():
        for domain in "AB":
            (root / f"{split}{domain}").mkdir(parents=True)
        for i in range(count):
            a = random_rgb(HEIGHT, WIDTH, hash((split, i)) % 2**32)
            Image.fromarray(a).save(root / f"{split}A" / f"{i}.png")
            Image.fromarray(np.ascontiguousarray(a[..., ::-1])).save(root / f"{split}B" / f"{i}.png")


@pytest.mark.parametrize(
    ("preprocess", "load_size", "train_shape", "val_shape"),
    [("scale_width", 32, (64, 32), (64, 32)), ("scale_width_and_crop", 40, (32, 32), (32, 32))],
    ids=["scale_width", "scale_width_and_crop"],
)
def test_paired_folders_trains_with_scale_width(tmp_path, preprocess, load_size, train_shape, val_shape):
    root = tmp_path / "pairs"
    write_paired_folders(root)
    overrides = [o for o in on_disk(TINY_OVERRIDES) if not o.startswith(("data.batch_size", "data.load_size", "data.crop_size"))]
    overrides += ["data=paired_folders", f"data.root={root}", f"data.preprocess={preprocess}",
                  f"data.load_size={load_size}", f"data.crop_size={40 if preprocess == 'scale_width' else 32}",
                  "data.batch_size=2", "callbacks.samples=null"]
    cfg = compose_train(overrides, tmp_path / "run")

    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, PairedFoldersDataModule)
    datamodule.setup("fit")
    item = datamodule.train_set[0]
    assert item["A"].shape[-2:] == item["B"].shape[-2:] == train_shape
    assert datamodule.val_set[0]["A"].shape[-2:] == val_shape  # val/ is found and used for validation
    # The pair stays aligned through the preprocessing: B is A with its channels reversed.
    torch.testing.assert_close(item["B"], item["A"].flip(0))

    before = initial_state(cfg)
    train(cfg)
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2 * 2  # 4 pairs / batch 2, one generator and one discriminator step each
    for prefix in ("generator.", "discriminator."):
        changed, total = changed_parameters(before, checkpoint, prefix)
        assert changed == total > 0, prefix
