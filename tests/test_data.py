"""Datasets on disk (A|B and unaligned folders written with PIL), paired transforms, synthetic datasets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import random_rgb, write_unaligned
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from gan_translate.data import (
    AlignedDataModule,
    AlignedDataset,
    DataError,
    SyntheticFacades,
    SyntheticShapes,
    UnalignedDataModule,
    UnalignedDataset,
)
from gan_translate.data.transforms import build_transform


def as_uint8(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def write_pair(path, left: np.ndarray, right: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(path)


def test_aligned_splits_halves(tmp_path):
    left, right = random_rgb(16, 16, 1), random_rgb(16, 16, 2)
    write_pair(tmp_path / "train" / "x.png", left, right)
    item = AlignedDataset(tmp_path, "train")[0]
    assert item["name"] == "x"
    np.testing.assert_array_equal(as_uint8(item["A"]), left)
    np.testing.assert_array_equal(as_uint8(item["B"]), right)

    swapped = AlignedDataset(tmp_path, "train", direction="BtoA")[0]
    np.testing.assert_array_equal(as_uint8(swapped["A"]), right)
    np.testing.assert_array_equal(as_uint8(swapped["B"]), left)


def test_same_random_crop_and_flip_on_both_halves(tmp_path):
    # A == B on disk, so any difference after the random transform would be a different crop or flip.
    image = random_rgb(40, 40, 3)
    write_pair(tmp_path / "train" / "x.png", image, image)
    dataset = AlignedDataset(tmp_path, "train", transform=build_transform("resize_and_crop", 48, 32, flip=True))
    torch.manual_seed(0)
    crops = set()
    for _ in range(20):
        item = dataset[0]
        assert item["A"].shape == (3, 32, 32) and item["A"].dtype == torch.float32
        assert -1 <= item["A"].min() and item["A"].max() <= 1
        assert torch.equal(item["A"], item["B"])
        crops.add(item["A"].sum().item())
    assert len(crops) > 1  # the transform really was random


def test_aligned_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        AlignedDataset(tmp_path / "nowhere", "train")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="contains no images"):
        AlignedDataset(tmp_path / "empty", "train")

    Image.fromarray(random_rgb(16, 40, 0)).save(tmp_path / "wide.png")
    (tmp_path / "bad" / "train").mkdir(parents=True)
    Image.fromarray(random_rgb(16, 40, 0)).save(tmp_path / "bad" / "train" / "wide.png")
    with pytest.raises(DataError, match=r"wide\.png is 40x16"):
        AlignedDataset(tmp_path / "bad", "train")
    # Non-square halves are fine when asked for.
    assert len(AlignedDataset(tmp_path / "bad", "train", square_halves=False)) == 1

    (tmp_path / "corrupt" / "train").mkdir(parents=True)
    (tmp_path / "corrupt" / "train" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        AlignedDataset(tmp_path / "corrupt", "train")


def test_truncated_image_named_when_read(tmp_path):
    write_pair(tmp_path / "train" / "cut.png", random_rgb(32, 32, 0), random_rgb(32, 32, 1))
    path = tmp_path / "train" / "cut.png"
    dataset = AlignedDataset(tmp_path, "train")  # the header is intact
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"cut\.png"):
        dataset[0]


def test_grayscale_converted(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (16, 32), dtype=np.uint8)
    (tmp_path / "train").mkdir()
    Image.fromarray(gray, mode="L").save(tmp_path / "train" / "g.png")
    item = AlignedDataset(tmp_path, "train", input_nc=3, output_nc=1)[0]
    assert item["A"].shape == (3, 16, 16) and item["B"].shape == (1, 16, 16)
    for channel in item["A"]:
        np.testing.assert_array_equal(channel.numpy(), gray[:, :16])
    np.testing.assert_array_equal(item["B"][0].numpy(), gray[:, 16:])


def test_unaligned(tmp_path):
    root = write_unaligned(tmp_path, count_a=3, count_b=5)
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(root / "trainA" / "Agray.png")
    dataset = UnalignedDataset(root, "train", serial=True)
    assert len(dataset) == 5  # max(|A| = 4, |B| = 5)
    names = [dataset[i]["name"] for i in range(5)]
    assert names == ["A0", "A1", "A2", "Agray", "A0"]  # A cycles in order
    assert [dataset[i]["name_B"] for i in range(5)] == ["B0", "B1", "B2", "B3", "B4"]
    gray = dataset[3]["A"]
    assert gray.shape == (3, 32, 32) and (gray == 0).all()


def test_unaligned_random_b(tmp_path):
    dataset = UnalignedDataset(write_unaligned(tmp_path, count_a=1, count_b=5), "train", serial=False)
    assert len({dataset[0]["name_B"] for _ in range(50)}) > 1


def test_unaligned_missing_domain(tmp_path):
    root = write_unaligned(tmp_path)
    for path in (root / "trainB").iterdir():
        path.unlink()
    (root / "trainB").rmdir()
    with pytest.raises(DataError, match="trainB"):
        UnalignedDataset(root, "train")
    with pytest.raises(DataError, match="trainB"):
        UnalignedDataModule(root=str(root))


def test_datamodules_give_batches(aligned_root, unaligned_root, tmp_path):
    aligned = AlignedDataModule(root=str(aligned_root), batch_size=2, num_workers=0, load_size=36, crop_size=32)
    aligned.setup("fit")
    batch = next(iter(aligned.train_dataloader()))
    assert batch["A"].shape == (2, 3, 32, 32)
    assert len(aligned.train_set) == len(aligned.val_set) == 4
    with pytest.raises(DataError, match="data.root"):
        AlignedDataModule(root=str(tmp_path / "missing"))
    with pytest.raises(DataError, match="data.root is not set"):
        AlignedDataModule(root="???")
    with pytest.raises(DataError, match="data.direction"):
        AlignedDataModule(root=str(aligned_root), direction="AtoC")

    unaligned = UnalignedDataModule(root=str(unaligned_root), batch_size=2, num_workers=0, load_size=36, crop_size=32)
    unaligned.setup("fit")
    assert unaligned.val_set is None and unaligned.val_dataloader() == []
    assert next(iter(unaligned.train_dataloader()))["B"].shape == (2, 3, 32, 32)


def test_eval_transform_is_deterministic(tmp_path):
    transform = build_transform("resize_and_crop", 48, 32, flip=True, train=False)
    image = TF.to_image(Image.fromarray(random_rgb(40, 40, 0)))
    assert torch.equal(transform(image), transform(image))
    with pytest.raises(ValueError, match="data.preprocess"):
        build_transform("zoom")


def test_synthetic_datasets_are_deterministic_per_index():
    facades = SyntheticFacades(length=4, size=32)
    first, again = facades[2], SyntheticFacades(length=4, size=32)[2]
    assert torch.equal(first["A"], again["A"]) and torch.equal(first["B"], again["B"])
    assert not torch.equal(facades[1]["B"], facades[2]["B"])
    assert not torch.equal(SyntheticFacades(4, 32, split="val")[2]["B"], first["B"])
    assert not torch.equal(SyntheticFacades(4, 32, seed=1)[2]["B"], first["B"])
    swapped = SyntheticFacades(4, 32, direction="BtoA")[2]
    assert torch.equal(swapped["A"], first["B"]) and torch.equal(swapped["B"], first["A"])

    shapes = SyntheticShapes(length=4, size=32)
    a = shapes[1]
    assert torch.equal(a["A"], SyntheticShapes(4, 32)[1]["A"]) and torch.equal(a["B"], SyntheticShapes(4, 32)[1]["B"])
    assert a["A"].shape == a["B"].shape == (3, 32, 32)
    assert not torch.equal(a["A"], a["B"])


def test_a_misspelt_direction_is_refused_on_the_embedded_data_too():
    """SyntheticFacades read anything but "AtoB" as BtoA: data.direction=atob trained the reverse task."""
    from gan_translate.data.datamodule import SyntheticFacadesDataModule
    from gan_translate.data.datasets import DataError

    with pytest.raises(DataError, match="data.direction.*'atob'"):
        SyntheticFacadesDataModule(direction="atob")
    assert SyntheticFacadesDataModule(direction="BtoA").direction == "BtoA"


@pytest.mark.parametrize("module", ["SyntheticFacadesDataModule", "SyntheticShapesDataModule"])
def test_the_embedded_rgb_data_refuses_other_channel_counts(module):
    """data.input_nc=1 on the demo built 1-channel networks for RGB images: a conv error in the first step."""
    import gan_translate.data.datamodule as datamodules
    from gan_translate.data.datasets import DataError

    with pytest.raises(DataError, match="data.input_nc=1.*RGB"):
        getattr(datamodules, module)(input_nc=1)
