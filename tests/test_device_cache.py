"""data.device_cache: the training split kept as uint8 on the training device gives the normal loader's batches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import (
    TINY_CYCLEGAN_OVERRIDES,
    TINY_OVERRIDES,
    compose_train,
    logged,
    read_metrics,
    write_aligned,
    write_unaligned,
)
from hydra.utils import instantiate
from PIL import Image
from pytorch_lightning.plugins.io import AsyncCheckpointIO

from gan_translate.data import (
    AlignedDataModule,
    DataError,
    SyntheticFacadesDataModule,
    SyntheticShapesDataModule,
    UnalignedDataModule,
)
from gan_translate.data.device_cache import KEY
from gan_translate.resume import AtomicCheckpointIO, nonfinite_entries
from gan_translate.train import train

# Random crops (40 -> 32) and flips on, as in the papers' recipes (286 -> 256).
AUGMENTED = {"batch_size": 2, "num_workers": 0, "preprocess": "resize_and_crop", "load_size": 40, "crop_size": 32,
             "flip": True}
DATA = {
    "aligned": lambda root, **kw: AlignedDataModule(root=root / "aligned", **kw),
    "unaligned": lambda root, **kw: UnalignedDataModule(root=root / "unaligned", **kw),  # 3 A, 5 B: random B
    "synthetic_facades": lambda root, **kw: SyntheticFacadesDataModule(size=32, train_length=5, **kw),
    "synthetic_shapes": lambda root, **kw: SyntheticShapesDataModule(size=32, train_length=5, **kw),
}


@pytest.fixture
def data_root(tmp_path) -> Path:
    write_aligned(tmp_path / "aligned", splits=("train",), count=5)
    write_unaligned(tmp_path / "unaligned", count_a=3, count_b=5)
    return tmp_path


# A GPU, where there is one: the batches cut there must equal the CPU loader's too.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def epochs(datamodule, seed: int, device: str = "cpu", count: int = 2) -> tuple[list[dict], list[dict]]:
    """(loader batches, batches on ``device``) of ``count`` epochs from ``seed``, as a Trainer fetches them."""
    pl.seed_everything(seed)  # the run's seed: the shuffle and each item's augmentation seed derive from it
    datamodule.setup("fit")
    loaded = []
    for epoch in range(count):
        loader = datamodule.train_dataloader()
        loader.sampler.set_epoch(epoch)  # as the Trainer does
        loaded += list(loader)
    return loaded, [datamodule.transfer_batch_to_device(batch, torch.device(device), 0) for batch in loaded]


def assert_same_batches(expected: list[dict], actual: list[dict]) -> None:
    assert len(expected) == len(actual)
    for one, other in zip(expected, actual, strict=True):
        assert one.keys() == other.keys()
        for key, value in one.items():
            if torch.is_tensor(value):
                assert value.dtype == other[key].dtype and torch.equal(value, other[key]), key
            else:
                assert value == other[key], key


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", DATA)
def test_same_batches_as_the_normal_loader(data_root, kind, device):
    """Same seed: the cached path's batches equal the normal DataLoader's bit for bit (pixels of A and B, names),
    over two epochs (reshuffled), with random crops and flips drawn per image."""
    _, normal = epochs(DATA[kind](data_root, **AUGMENTED), seed=3, device=device)
    draws, cached = epochs(DATA[kind](data_root, device_cache=True, **AUGMENTED), seed=3, device=device)
    assert cached[0]["A"].device.type == device
    assert_same_batches(normal, cached)
    # The comparison covers what it should: crops at several offsets, both flip outcomes, a random B pick.
    rows = torch.cat([batch[KEY] for batch in draws])  # index A, index B, top, left, flip (A then B if unpaired)
    params = rows[:, 2:5] if DATA[kind] in (DATA["aligned"], DATA["synthetic_facades"]) else rows[:, 2:]
    assert len(set(rows[:, 2].tolist())) > 1 and len(set(rows[:, 3].tolist())) > 1
    assert set(params[:, 2].tolist()) == {0, 1}
    if kind == "unaligned":
        assert set(params[:, 5].tolist()) == {0, 1}
        assert any(a % 5 != b for a, b in rows[:, :2].tolist())  # B is not A's index: the random pairing
    # A different seed gives other batches (so equality above is not trivial).
    _, other = epochs(DATA[kind](data_root, device_cache=True, **AUGMENTED), seed=4, device=device)
    assert not all(torch.equal(a["A"], b["A"]) for a, b in zip(cached, other, strict=True))


def test_images_are_stored_once_as_uint8(data_root):
    """The cache holds each training image once, after the resize, as uint8 (channels per domain)."""
    datamodule = AlignedDataModule(root=data_root / "aligned", device_cache=True, input_nc=1, **AUGMENTED)
    datamodule.setup("fit")
    cache = datamodule.train_cache
    assert {d: (images.dtype, tuple(images.shape)) for d, images in cache.images.items()} == {
        "A": (torch.uint8, (5, 1, 40, 40)), "B": (torch.uint8, (5, 3, 40, 40))}
    assert cache.nbytes == 5 * (1 + 3) * 40 * 40
    # Validation stays on the normal path.
    val = next(iter(datamodule.val_dataloader())) if datamodule.val_set is not None else None
    assert val is None or KEY not in val


def test_images_of_several_sizes_are_refused(tmp_path):
    """Without a common resize (preprocess=none), files of different sizes cannot share one tensor: say so."""
    root = write_unaligned(tmp_path / "data", count_a=2, count_b=2)
    Image.fromarray(np.zeros((48, 40, 3), np.uint8)).save(root / "trainA" / "A9.png")
    datamodule = UnalignedDataModule(root=root, device_cache=True, preprocess="none", num_workers=0)
    with pytest.raises(DataError, match=r"device_cache needs every training image at one size.*A9"):
        datamodule.setup("fit")


class Recorder(pl.Callback):
    """The training batches as the model receives them, and the weights at the end."""

    def __init__(self) -> None:
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})

    def on_train_end(self, trainer, pl_module) -> None:
        self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


@pytest.mark.parametrize("overrides", [TINY_OVERRIDES, TINY_CYCLEGAN_OVERRIDES], ids=["pix2pix", "cyclegan"])
def test_training_run_equals_the_normal_path(tmp_path, overrides):
    """Hydra composition + train(): with data.device_cache=true a seeded run sees the same batches and ends with
    the same weights as with the normal loader, and its losses are finite."""
    overrides = [*overrides, "data.preprocess=resize_and_crop", "data.load_size=36", "data.crop_size=32",
                 "trainer.max_epochs=2"]
    runs = {}
    for cached in (False, True):
        recorder = Recorder()
        cfg = compose_train([*overrides, f"data.device_cache={cached}"], tmp_path / str(cached))
        train(cfg, extra_callbacks=[recorder])
        runs[cached] = recorder
    assert len(runs[True].batches) == 4  # 8 images / batch 4, two epochs
    assert_same_batches(runs[False].batches, runs[True].batches)
    for name, weight in runs[False].weights.items():
        assert torch.equal(weight, runs[True].weights[name]), name
    rows = read_metrics(tmp_path / "True")
    losses = [key for key in rows[0] if key.startswith("train/loss")]
    assert losses and all(math.isfinite(v) for key in losses for v in logged(rows, key))


def test_gpu_fast_switches(tmp_path):
    """trainer=gpu_fast turns on bf16, channels_last, the step graph and the device cache on top of an experiment;
    the same run trains on the CPU (its step captured and replayed as the CPU does: eagerly)."""
    cfg = compose_train(["trainer=gpu_fast", "experiment=facades_pix2pix", "data.root=/unused"])
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("gpu", "bf16-mixed")
    assert cfg.model.channels_last and cfg.model.step_graph and cfg.data.device_cache and cfg.optim.fused
    assert not cfg.model.compile and cfg.model.nonfinite_check == "deferred"
    assert cfg.callbacks.progress_bar.metrics_every_n_batches == cfg.trainer.log_every_n_steps == 50
    assert cfg.trainer.max_epochs == 200 and cfg.data.direction == "BtoA"  # the experiment still applies
    cfg = compose_train([*TINY_OVERRIDES, "trainer=gpu_fast", "trainer.accelerator=cpu", "data.batch_size=1",
                         "trainer.log_every_n_steps=2"], tmp_path)  # 8 batches: 3 eager, the capture, 4 replays
    trainer = instantiate(cfg.trainer)  # the checkpoints: written by a thread, atomically
    assert isinstance(trainer.strategy.checkpoint_io, AsyncCheckpointIO)
    assert isinstance(trainer.strategy.checkpoint_io.checkpoint_io, AtomicCheckpointIO)
    train(cfg)
    rows = read_metrics(tmp_path)
    assert all(math.isfinite(v) for v in logged(rows, "train/loss_G_L1")) and len(logged(rows, "train/loss_G_L1")) == 4
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["last.ckpt"]  # no .tmp left
    last = torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)
    assert last["global_step"] == 16 and last["optimizer_states"] and not nonfinite_entries(last["state_dict"])
