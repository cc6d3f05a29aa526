"""Bad input fails early and clearly (or is skipped when asked), naming the file or key."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from PIL import Image

from gan_translate.checkpoint import CheckpointError, model_from_checkpoint
from gan_translate.data import AlignedDataModule, UnalignedDataModule
from gan_translate.data.datasets import AlignedDataset, DataError, UnalignedDataset, convert
from gan_translate.data.transforms import build_transform
from gan_translate.models import CycleGAN
from gan_translate.predict import predict
from gan_translate.train import CONF_DIR


def save_pair(path, size=32):
    noise = torch.randint(0, 256, (size, 2 * size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(noise.numpy()).save(path)  # noise: most of the file is pixel data, after the header


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


@pytest.fixture
def aligned_root(tmp_path):
    (tmp_path / "train").mkdir()
    for i in range(4):
        save_pair(tmp_path / "train" / f"{i}.jpg")
    return tmp_path


def test_truncated_image_error_names_the_file(aligned_root):
    truncate(aligned_root / "train/2.jpg")
    dataset = AlignedDataset(aligned_root, "train")  # the header is intact: caught at load time
    with pytest.raises(DataError, match=r"2\.jpg"):
        dataset[2]


def test_corrupt_file_fails_at_construction(aligned_root):
    (aligned_root / "train/bad.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"bad\.png"):
        AlignedDataset(aligned_root, "train")
    # on_bad_image=skip leaves it out (it stopped the setup before, unlike the other layouts), with a warning.
    datamodule = AlignedDataModule(root=str(aligned_root), preprocess="none", num_workers=0, on_bad_image="skip")
    with pytest.warns(UserWarning, match=r"1 unreadable file\(s\) left out .*bad\.png"):
        datamodule.setup("fit")
    assert len(datamodule.train_set) == 4


def test_corrupt_file_in_a_cyclegan_domain_fails_at_construction(tmp_path):
    """As for the aligned layout: before training, naming the file; on_bad_image=skip leaves it to the reads."""
    for domain in ("trainA", "trainB"):
        (tmp_path / domain).mkdir()
        for i in range(2):
            Image.new("RGB", (32, 32), (40 * i, 80, 120)).save(tmp_path / domain / f"{i}.png")
    (tmp_path / "trainB" / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"trainB/bad\.png"):
        UnalignedDataset(tmp_path, "train")
    datamodule = UnalignedDataModule(root=str(tmp_path), preprocess="none", num_workers=0, on_bad_image="skip")
    datamodule.setup("fit")
    assert len(datamodule.train_set) == 3


def test_a_batch_of_files_of_different_sizes_names_them_and_the_keys(tmp_path):
    """preprocess=none keeps each file's size: a batch that mixes sizes says so (torch.stack's error named none)."""
    for domain in ("trainA", "trainB", "valA", "valB"):
        (tmp_path / domain).mkdir()
        for i, side in enumerate((40, 24, 40)):
            Image.new("RGB", (side, side), (40 * i, 80, 120)).save(tmp_path / domain / f"{i}.png")
    datamodule = UnalignedDataModule(root=str(tmp_path), preprocess="none", num_workers=0, val_batch_size=3)
    datamodule.setup("fit")
    with pytest.raises(DataError, match=r"different sizes \(0: 40x40, 1: 24x24, 2: 40x40\).*data\.batch_size=1"):
        next(iter(datamodule.val_dataloader()))


def test_skip_mode_replaces_bad_items_and_counts_them(aligned_root):
    truncate(aligned_root / "train/1.jpg")
    truncate(aligned_root / "train/3.jpg")
    datamodule = AlignedDataModule(root=str(aligned_root), preprocess="none", num_workers=0, on_bad_image="skip")
    datamodule.setup("fit")
    with pytest.warns(UserWarning, match=r"1\.jpg"):
        items = [datamodule.train_set[i] for i in range(len(datamodule.train_set))]
    assert [item["name"] for item in items] == ["0", "2", "2", "0"]
    assert datamodule.train_set.skipped == 2
    with pytest.raises(DataError, match="on_bad_image"):
        AlignedDataModule(root=str(aligned_root), on_bad_image="ignore")


def test_odd_width_pair_is_rejected(tmp_path):
    (tmp_path / "train").mkdir()
    Image.new("RGB", (63, 32)).save(tmp_path / "train/odd.png")
    with pytest.raises(DataError, match=r"odd\.png is 63x32") as error:
        AlignedDataset(tmp_path, "train", square_halves=False)
    assert "Set data.square_halves=false" not in str(error.value)  # it is false already


def test_image_modes_are_converted_and_16_bit_is_scaled():
    assert convert(Image.new("L", (4, 4), 7), 3).mode == "RGB"
    assert convert(Image.new("RGBA", (4, 4), (10, 20, 30, 0)), 3).getpixel((0, 0)) == (255, 255, 255)  # on white
    palette = Image.new("P", (4, 4))
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putpixel((0, 0), 1)
    assert convert(palette, 3).getpixel((0, 0)) == (200, 100, 50)
    assert convert(Image.new("RGB", (4, 4), (255, 0, 0)), 1).mode == "L"
    sixteen = Image.new("I;16", (2, 1))
    sixteen.putpixel((0, 0), 65535)
    sixteen.putpixel((1, 0), 32768)
    converted = convert(sixteen, 1)
    assert (converted.getpixel((0, 0)), converted.getpixel((1, 0))) == (255, 128)  # scaled, not clipped at 255


def test_image_smaller_than_crop_names_the_file(tmp_path):
    for domain in "AB":
        (tmp_path / f"train{domain}").mkdir()
        Image.new("RGB", (20, 20)).save(tmp_path / f"train{domain}/small_{domain}.png")
    dataset = UnalignedDataset(tmp_path, "train", transform_a=build_transform("crop", crop_size=32))
    with pytest.raises(DataError, match=r"small_A\.png \(20x20\).*resize_and_crop") as error:
        dataset[0]
    assert ".." not in str(error.value) and ".;" not in str(error.value)
    # scale_width_and_crop already upscales: its advice is about the height a wide image gets, not the mode.
    Image.new("RGB", (80, 20)).save(tmp_path / "trainA/small_A.png")
    wide = UnalignedDataset(tmp_path, "train", transform_a=build_transform("scale_width_and_crop", 40, 32))
    with pytest.raises(DataError, match=r"small_A\.png \(80x20\)") as error:
        wide[0]
    message = str(error.value)
    assert "data.load_size=40" in message and "larger data.load_size" in message
    assert "use data.preprocess=resize_and_crop or scale_width_and_crop" not in message
    # resize_and_crop upscales first: documented as the way to use small images
    upscaled = UnalignedDataset(tmp_path, "train", transform_a=build_transform("resize_and_crop", 36, 32))
    assert upscaled[0]["A"].shape[-2:] == (32, 32)


def test_validation_refuses_images_smaller_than_the_crop_instead_of_padding(tmp_path):
    """Evaluation's centre crop padded small images with black, and the metrics scored the padding."""
    for domain in "AB":
        (tmp_path / f"val{domain}").mkdir()
        Image.new("RGB", (20, 40), (200, 100, 50)).save(tmp_path / f"val{domain}/narrow_{domain}.png")
    narrow = UnalignedDataset(tmp_path, "val", transform_a=build_transform("crop", crop_size=32, train=False))
    with pytest.raises(DataError, match=r"narrow_A\.png \(20x40\).*data.preprocess=crop"):
        narrow[0]
    # scale_width_and_crop evaluates at training's scale (width -> load_size): a 2:1 image keeps a 48 px height.
    for domain in "AB":
        Image.new("RGB", (80, 40), (200, 100, 50)).save(tmp_path / f"val{domain}/narrow_{domain}.png")
    wide = UnalignedDataset(tmp_path, "val", transform_a=build_transform("scale_width_and_crop", 96, 32, train=False))
    image = wide[0]["A"]
    assert image.shape[-2:] == (32, 32) and bool((image > -0.9).all())  # no black (-1) padding


def test_missing_or_empty_folders_and_missing_domain(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        AlignedDataModule(root=str(tmp_path / "nowhere"))
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="contains no images"):
        AlignedDataset(tmp_path, "train")
    (tmp_path / "trainA").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "trainA/a.png")
    with pytest.raises(DataError, match="trainB/ is missing"):
        UnalignedDataModule(root=str(tmp_path))


def test_config_typo_names_the_key():
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="nonfinte"):
            compose("train", overrides=["model.nonfinte=skip"])
        with pytest.raises(ConfigCompositionException, match="generatr"):
            compose("train", overrides=["generatr=unet_64"])


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    """A checkpoint written by a real (one-batch) training run."""
    from gan_translate.train import train

    out = tmp_path_factory.mktemp("run")
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "generator.ngf=8", "discriminator.ndf=8", "data.train_length=4", "data.val_length=4",
            "data.batch_size=4", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.max_epochs=1",
            "trainer.num_sanity_val_steps=0", "callbacks.progress_bar=null", "callbacks.samples=null",
            "callbacks.lr_monitor=null", "logger=none", f"paths.output_dir={out}",
        ])
    train(cfg)
    return out / "checkpoints/last.ckpt"


def test_real_checkpoint_loads_with_weights_only(real_checkpoint):
    checkpoint = torch.load(real_checkpoint, map_location="cpu", weights_only=True)
    assert "RandomStateCheckpoint" in checkpoint["callbacks"]
    assert model_from_checkpoint(real_checkpoint) is not None


def test_wrong_model_type_and_mismatched_architecture(real_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="not a CycleGAN"):
        model_from_checkpoint(real_checkpoint, expected=CycleGAN)
    checkpoint = torch.load(real_checkpoint, map_location="cpu", weights_only=True)
    checkpoint["gan_translate"]["config"]["model"]["generator"]["ngf"] = 16
    changed = tmp_path / "changed.ckpt"
    torch.save(checkpoint, changed)
    with pytest.raises(CheckpointError, match=r"other shape: \d+ keys, e.g. \['generator\."):
        model_from_checkpoint(changed)


@pytest.mark.parametrize("content", ["torch_dict", "text"])
def test_predict_refuses_files_that_are_not_our_checkpoints(tmp_path, content):
    path = tmp_path / "model.ckpt"
    if content == "text":
        path.write_text("hello, I am not a checkpoint\n")
        expected = r"model\.ckpt is not a PyTorch checkpoint \(not the zip archive torch\.save writes\)"
    else:
        torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, path)
        expected = "not a gan_translate checkpoint"
    Image.new("RGB", (64, 64)).save(tmp_path / "in.png")
    cfg = OmegaConf.load(f"{CONF_DIR}/predict.yaml")
    cfg.merge_with({"ckpt_path": str(path), "input": str(tmp_path / "in.png"), "output_dir": str(tmp_path / "o")})
    with pytest.raises(CheckpointError, match=expected):
        predict(cfg)


class _UnreadableItems(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise DataError(f"cannot read image /data/train/bad{index}.png: image file is truncated")


def test_the_failure_line_names_the_file_also_from_a_loader_worker():
    """train's 'run failed' line said only "Caught DataError in DataLoader worker process 0"."""
    from gan_translate.train import failure_summary

    with pytest.raises(DataError) as error:
        next(iter(torch.utils.data.DataLoader(_UnreadableItems(), num_workers=1)))
    assert str(error.value).startswith("Caught DataError in DataLoader worker")
    assert failure_summary(error.value).endswith("cannot read image /data/train/bad0.png: image file is truncated")
    assert failure_summary(ValueError("plain")) == "plain"
