"""DCGAN, conditional GAN, InfoGAN and the adversarial autoencoder: real Hydra-composed training runs on the
embedded digits (16 px, widths 8), sampling and export from the checkpoint alone, the class-folder data."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from conftest import CONF_DIR, compose_train, logged, read_metrics
from hydra import compose, initialize_config_dir
from PIL import Image

from gan_translate.checkpoint import CheckpointError, build_model, model_from_checkpoint
from gan_translate.data.classes import ImageFolderDataModule, SyntheticClassesDataModule
from gan_translate.data.datasets import DataError
from gan_translate.export import export_generator
from gan_translate.networks.dcgan import DCGANDiscriminator, DCGANGenerator
from gan_translate.sample import sample
from gan_translate.sampler import Sampler
from gan_translate.train import train
from gan_translate.translator import Translator

RUN = [
    "data.image_size=16", "data.train_length=16", "data.val_length=8", "data.batch_size=8", "data.val_batch_size=8",
    "data.num_workers=0", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1", "+trainer.enable_model_summary=false", "~callbacks.progress_bar",
    "+trainer.enable_progress_bar=false", "logger=csv", "generator.ngf=8",
]
TINY = {
    "dcgan": ["experiment=demo_dcgan", "discriminator.ndf=8"],
    "cgan": ["experiment=demo_cgan", "discriminator.ndf=8"],
    # Also the switches: the information loss in D's step, fully connected layers in G and in D (shared with Q).
    "infogan": ["experiment=demo_infogan", "discriminator.ndf=8", "model.q_hidden=16", "model.noise_dim=8",
                "model.info_in_discriminator_step=true", "discriminator.fc_features=16", "generator.fc_features=16",
                "model.generator_lr=0.001"],
    "aae": ["experiment=demo_aae", "model.encoder.nef=8", "discriminator.hidden=16", "model.latent_dim=4"],
}
LOSSES = {
    "dcgan": ["loss_D", "loss_G"],
    "cgan": ["loss_D", "loss_G"],
    "infogan": ["loss_D", "loss_G", "loss_info_cat", "loss_info_cont", "loss_info_cat_D"],
    "aae": ["loss_rec", "loss_D", "loss_G"],
}
FIGURES = {"dcgan": [], "cgan": [], "infogan": ["traversal_c1", "traversal_c2"], "aae": ["samples", "latent"]}


def tiny(model: str, *overrides: str) -> list[str]:
    return [*TINY[model], *RUN, *overrides]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """One tiny training run per model (2 batches); name -> run folder."""
    folders = {}
    for name in TINY:
        folder = tmp_path_factory.mktemp(name)
        train(compose_train(tiny(name), folder))
        folders[name] = folder
    return folders


@pytest.mark.parametrize("name", list(TINY))
def test_trains_with_finite_losses_and_writes_pictures(runs, name):
    folder = runs[name]
    rows = read_metrics(folder)
    for loss in LOSSES[name]:
        values = logged(rows, f"train/{loss}")
        assert len(values) == 2 and all(math.isfinite(v) for v in values), (loss, values)
    assert (folder / "samples" / "epoch_0000.png").is_file()
    for figure in FIGURES[name]:
        assert (folder / "figures" / f"{figure}_epoch_0000.png").is_file()
    # The fixed sample noise is part of the checkpoint, so grids after a resume show the same latent points.
    checkpoint = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    model = build_model(compose_train(tiny(name), folder))
    assert torch.equal(checkpoint["state_dict"]["fixed_noise"], model.fixed_noise)


@pytest.mark.parametrize("size", [16, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_dcgan_networks_sizes_and_range(size, channels):
    generator = DCGANGenerator(channels, size, latent_dim=10, ngf=4)
    images = generator(torch.randn(3, 10) * 10)
    assert images.shape == (3, channels, size, size)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    assert DCGANDiscriminator(channels, size, ndf=4)(images).shape == (3,)


def test_dcgan_size_and_conditioning_errors():
    with pytest.raises(ValueError, match="data.image_size=30"):
        DCGANGenerator(1, 30)
    with pytest.raises(ValueError, match="conditioning=projection needs class labels"):
        DCGANDiscriminator(1, 16, conditioning="projection")
    for conditioning in ("concat", "projection"):
        discriminator = DCGANDiscriminator(1, 16, ndf=4, num_classes=3, conditioning=conditioning)
        images = torch.randn(2, 1, 16, 16)
        # The label changes D's verdict on the same image.
        assert not torch.allclose(discriminator(images, torch.tensor([0, 0])), discriminator(images, torch.tensor([1, 2])))


@pytest.mark.parametrize("in_discriminator_step", [True, False])
def test_infogan_q_head_learns_with_the_player_that_minimises_the_information_loss(in_discriminator_step, tmp_path):
    """true (the authors' code): Q's head is part of D and learns in D's step; false: it learns with G."""
    overrides = tiny("infogan", f"model.info_in_discriminator_step={in_discriminator_step}")
    model = build_model(compose_train(overrides, tmp_path))
    optimizers = model.configure_optimizers()
    optimizers = optimizers[0] if isinstance(optimizers, tuple) else optimizers  # (optimizers, schedulers)
    generator, discriminator = ({id(p) for group in opt.param_groups for p in group["params"]} for opt in optimizers)
    q_head = {id(p) for p in model.q_head.parameters()}
    assert q_head <= (discriminator if in_discriminator_step else generator)
    assert not q_head & (generator if in_discriminator_step else discriminator)
    assert {id(p) for p in model.discriminator.parameters()} <= discriminator
    assert {id(p) for p in model.generator.parameters()} <= generator


def test_resume_with_q_moved_to_the_other_optimizer_fails_before_training(runs, tmp_path):
    """The run trained with Q in D's optimizer; resuming it with Q in G's would restore Adam states into the wrong
    parameters: refused before the Trainer starts, naming the file and the changed key."""
    ckpt = runs["infogan"] / "checkpoints" / "last.ckpt"
    cfg = compose_train(tiny("infogan", f"ckpt_path={ckpt}", "trainer.max_epochs=2",
                             "model.info_in_discriminator_step=false"), tmp_path)
    with pytest.raises(CheckpointError, match=r"cannot be resumed.*optimizer.*model\.info_in_discriminator_step"):
        train(cfg)
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()
    # The same settings resume.
    train(compose_train(tiny("infogan", f"ckpt_path={ckpt}", "trainer.max_epochs=2"), tmp_path / "same"))
    assert torch.load(tmp_path / "same" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


@pytest.mark.parametrize("name", ["cgan", "infogan"])
def test_samples_depend_on_the_label_or_code(runs, name):
    sampler = Sampler.from_checkpoint(runs[name] / "checkpoints" / "last.ckpt", device="cpu")
    first, again = sampler(n=6, labels=0, seed=1), sampler(n=6, labels=0, seed=1)
    other = sampler(n=6, labels=[1, 2, 3, 4, 5, 6], seed=1)
    assert first.shape == (6, 1, 16, 16) and first.min() >= -1 and first.max() <= 1
    assert torch.equal(first, again)  # same seed, same label: same images
    # Same noise, another class / categorical code: every image changes (outputs are small after 2 steps: relative).
    change = (first - other).abs().flatten(1).amax(dim=1)
    assert (change > 1e-3 * first.abs().flatten(1).amax(dim=1)).all(), change
    with pytest.raises(ValueError, match="must lie in 0..9"):
        sampler(n=2, labels=10)


@pytest.mark.parametrize("name", list(TINY))
def test_a_seeded_sample_does_not_depend_on_n_or_the_batch_size(runs, name):
    """Sample i of a seed is the same whatever n and batch_size: the first 5 of 7 are the 5 of n=5."""
    path = runs[name] / "checkpoints" / "last.ckpt"
    many = Sampler.from_checkpoint(path, device="cpu", batch_size=3)(n=7, seed=4)
    few = Sampler.from_checkpoint(path, device="cpu")(n=5, seed=4)
    torch.testing.assert_close(many[:5], few, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(many[0], many[1])  # each sample its own noise


def test_unconditional_models_refuse_labels(runs):
    sampler = Sampler.from_checkpoint(runs["dcgan"] / "checkpoints" / "last.ckpt", device="cpu")
    assert sampler(n=3, seed=0).shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match="unconditional"):
        sampler(n=3, labels=1)


def test_sample_command_grid_and_per_file(runs, tmp_path):
    ckpt = runs["cgan"] / "checkpoints" / "last.ckpt"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        grid_cfg = compose("sample", overrides=[f"ckpt_path={ckpt}", "n=20", f"output={tmp_path / 'grid.png'}"])
        files_cfg = compose("sample", overrides=[f"ckpt_path={ckpt}", "n=5", "label=3", "per_file=true",
                                                 f"output={tmp_path / 'each'}"])
    with Image.open(sample(grid_cfg)) as grid:
        assert grid.size == (10 * 18 + 2, 2 * 18 + 2)  # one column per class, 16 px + 2 px padding
    assert sample(files_cfg) == tmp_path / "each"
    files = sorted((tmp_path / "each").glob("*.png"))
    assert len(files) == 5
    with Image.open(files[0]) as image:
        assert image.size == (16, 16)
    # A label the model does not have is refused before the output folder is made.
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        bad_cfg = compose("sample", overrides=[f"ckpt_path={ckpt}", "n=5", "label=12", "per_file=true",
                                               f"output={tmp_path / 'bad'}"])
    with pytest.raises(ValueError, match="12"):
        sample(bad_cfg)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("name", ["cgan", "infogan", "aae"])
def test_onnx_export_reproduces_the_sampler(runs, name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    ckpt = runs[name] / "checkpoints" / "last.ckpt"
    path = export_generator(ckpt, format="onnx", output=tmp_path / "g.onnx")
    model = model_from_checkpoint(ckpt)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):  # dynamic batch size
        inputs = model.latent(n, generator=torch.Generator().manual_seed(n))
        (output,) = session.run(None, {key: value.numpy() for key, value in inputs.items()})
        with torch.no_grad():
            expected = model.sampling_network()(*inputs.values())
        assert output.shape == (n, 1, 16, 16)
        np.testing.assert_allclose(output, expected.numpy(), atol=1e-4)


def test_torchscript_export(runs, tmp_path):
    ckpt = runs["dcgan"] / "checkpoints" / "last.ckpt"
    path = export_generator(ckpt, format="torchscript", output=tmp_path / "g.pt")
    network, model = torch.jit.load(str(path)), model_from_checkpoint(ckpt)
    z = torch.randn(3, 100)
    with torch.no_grad():
        assert torch.allclose(network(z), model(z), atol=1e-5)
    with pytest.raises(ValueError, match="generates from noise"):
        export_generator(ckpt, direction="AtoB")
    # Predict's translator on a noise model names the file and the command that fits it.
    with pytest.raises(ValueError, match=rf"{re.escape(str(ckpt))}: DCGAN generates images from noise.*sample"):
        Translator.from_checkpoint(ckpt, device="cpu")


def test_aae_reconstruction_falls(tmp_path):
    overrides = tiny("aae", "data.train_length=64", "data.batch_size=16", "data.val_length=32", "trainer.max_epochs=3",
                     "data.val_batch_size=32", "loss.lambda_adversarial=0.1", "optim.lr=0.002")
    train(compose_train(overrides, tmp_path))
    rows = read_metrics(tmp_path)
    train_rec, val_rec = logged(rows, "train/loss_rec"), logged(rows, "val/rec_l1")
    assert len(train_rec) == 12 and train_rec[-1] < 0.75 * train_rec[0], train_rec
    # Validation uses batch norm's running statistics, which trail the first steps: a smaller, steady fall.
    assert len(val_rec) == 3 and val_rec[0] > val_rec[1] > val_rec[2], val_rec


# ----- data -----
def write_classes(root, split: str, counts: dict[str, int], size=(20, 18)) -> None:
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(root / split / name / f"{i}.png")


def test_image_folder_labels_sizes_and_training(tmp_path):
    root = tmp_path / "shapes"
    write_classes(root, "train", {"b_circle": 4, "a_square": 4, "c_star": 4})
    write_classes(root, "val", {"c_star": 2, "a_square": 2})
    data = ImageFolderDataModule(root, num_classes=3, image_size=16, channels=1, batch_size=4, num_workers=0)
    data.setup("fit")
    assert data.classes == ["a_square", "b_circle", "c_star"]
    assert [item["label"] for item in data.val_set] == [0, 2, 0, 2]  # train's indices, classes interleaved
    batch = next(iter(data.train_dataloader()))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (4, 1, 16, 16) and batch["label"].dtype == torch.long
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1

    on_disk = [o for o in tiny("cgan") if not o.startswith(("data.train_length", "data.val_length"))]
    overrides = [*on_disk, "data=image_folder", f"data.root={root}", "data.num_classes=3", "data.channels=3"]
    train(compose_train(overrides, tmp_path / "run"))
    model = model_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert model.num_classes == 3 and Sampler(model, device="cpu")(4).shape == (4, 3, 16, 16)


def test_numbered_class_folders_keep_their_numbers(tmp_path, caplog):
    """Folders 0..11: text order made folder '10' class 2, so sample label=2 drew tens."""
    root = tmp_path / "digits"
    write_classes(root, "train", {str(n): 1 for n in range(12)})
    with caplog.at_level("INFO", logger="gan_translate.data.classes"):
        data = ImageFolderDataModule(root, num_classes=12, image_size=16, channels=1, num_workers=0)
    assert data.classes == [str(n) for n in range(12)]
    assert "2=2, 3=3" in caplog.text and "10=10, 11=11" in caplog.text


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="data.root: folder .*missing does not exist"):
        ImageFolderDataModule(tmp_path / "missing")
    with pytest.raises(DataError, match="train split: folder .*train does not exist"):
        ImageFolderDataModule(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="has no class sub-folders"):
        ImageFolderDataModule(tmp_path)
    write_classes(tmp_path, "train", {"cat": 1, "dog": 1})
    with pytest.raises(DataError, match="data.num_classes=10, but .* holds 2 class folders"):
        ImageFolderDataModule(tmp_path)
    (tmp_path / "train" / "emu").mkdir()
    data = ImageFolderDataModule(tmp_path, num_classes=3, num_workers=0)
    with pytest.raises(DataError, match="class 'emu' of the train split: folder .*emu contains no images"):
        data.setup("fit")
    write_classes(tmp_path, "train", {"emu": 1})
    write_classes(tmp_path, "val", {"yak": 1})
    with pytest.raises(DataError, match=r"class folders that the train split lacks: \['yak'\]"):
        ImageFolderDataModule(tmp_path, num_classes=3, num_workers=0).setup("fit")


def test_synthetic_classes_deterministic_and_balanced():
    data = SyntheticClassesDataModule(train_length=20, val_length=10, image_size=16, channels=3, num_workers=0)
    data.setup("fit")
    first, again = data.val_set[3], data.val_set[3]
    assert torch.equal(first["image"], again["image"]) and first["image"].shape == (3, 16, 16)
    assert [data.train_set[i]["label"] for i in range(20)] == [i % 10 for i in range(20)]
    assert not torch.equal(data.train_set[3]["image"], data.val_set[3]["image"])  # splits differ


def test_cgan_names_its_own_sample_key(tmp_path):
    with pytest.raises(Exception, match=r"model\.samples_per_class must be >= 1, got 0"):  # in Hydra's error
        build_model(compose_train(tiny("cgan", "model.samples_per_class=0"), tmp_path))


def test_a_training_set_smaller_than_one_dropped_batch_fails_before_training(tmp_path):
    """drop_last with fewer items than data.batch_size: Lightning said 'No training batches' and exited 0."""
    with pytest.raises(DataError, match=r"6 item\(s\), fewer than data.batch_size=8.*data.drop_last=false"):
        train(compose_train(tiny("cgan", "data.train_length=6", "data.batch_size=8"), tmp_path / "small"))
    assert not (tmp_path / "small" / "checkpoints").exists()
    train(compose_train(tiny("cgan", "data.train_length=6", "data.batch_size=8", "data.drop_last=false"), tmp_path / "kept"))
    assert (tmp_path / "kept" / "checkpoints" / "last.ckpt").exists()
