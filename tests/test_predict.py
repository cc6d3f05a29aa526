"""Checkpoint round trip: train -> checkpoint file -> Translator / model_from_checkpoint / `python -m gan_translate.predict`."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_OVERRIDES, compose_train, random_rgb, run_module
from hydra.utils import instantiate
from PIL import Image

from gan_translate.checkpoint import CheckpointError, build_model, load_checkpoint, model_from_checkpoint
from gan_translate.models import CycleGAN, Pix2Pix
from gan_translate.predict import predict, source_half
from gan_translate.translator import Translator

# A 6-level U-Net at 64 px has dropout in its innermost decoder level (the test-time noise of pix2pix).
DROPOUT_UNET = ["data.size=64", "generator.num_downs=6"]


def fit(cfg, max_steps: int = 4):
    """A real fit with the composed model and data, keeping the in-memory model."""
    pl.seed_everything(cfg.seed)
    datamodule = instantiate(cfg.data)
    model = build_model(cfg)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=cfg.paths.output_dir,
    )
    trainer.fit(model, datamodule=datamodule)
    return model, trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("pix2pix_ckpt")
    cfg = compose_train([*TINY_OVERRIDES, *DROPOUT_UNET], out)
    model, trainer = fit(cfg)
    path = out / "model.ckpt"
    trainer.save_checkpoint(path)
    return model.eval(), path


def test_in_memory_model_equals_checkpoint(trained):
    model, path = trained
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        expected = model(images)
    rebuilt = model_from_checkpoint(path, expected=Pix2Pix)
    assert not rebuilt.training
    with torch.no_grad():
        assert torch.allclose(rebuilt(images), expected, atol=1e-6)
    translator = Translator.from_checkpoint(path, device="cpu")
    assert torch.allclose(translator(images), expected.clamp(-1, 1), atol=1e-6)
    assert translator.train_size == 64  # synthetic data, preprocess none: the training size
    # Inference builds no validation metrics (with FID weights present they would load Inception), and keeps the
    # run's config as trained.
    assert model.metrics is not None and rebuilt.metrics is None
    assert rebuilt.run_config == model.run_config


def test_translator_on_pil_and_odd_sizes(trained):
    _, path = trained
    for policy in ("pad", "resize", "train_size"):
        translator = Translator.from_checkpoint(path, device="cpu", size_policy=policy)
        image = Image.fromarray(random_rgb(50, 70, 0))  # 70 wide, 50 high: not a multiple of 64
        output = translator(image)
        assert output.size == (70, 50) and output.mode == "RGB"
    with pytest.raises(ValueError, match="size_policy"):
        Translator.from_checkpoint(path, device="cpu", size_policy="crop")


def test_dropout_switch(trained):
    _, path = trained
    images = torch.rand(2, 3, 64, 64) * 2 - 1
    deterministic = Translator.from_checkpoint(path, device="cpu")
    assert torch.equal(deterministic(images), deterministic(images))
    noisy = Translator.from_checkpoint(path, device="cpu", dropout=True)
    torch.manual_seed(0)
    first = noisy(images)
    assert not torch.equal(first, noisy(images))
    assert not torch.equal(first, deterministic(images))


def test_pix2pix_has_one_direction(trained):
    _, path = trained
    with pytest.raises(ValueError, match="direction"):
        Translator.from_checkpoint(path, direction="BtoA")


def test_wrong_checkpoints_rejected(trained, tmp_path):
    _, path = trained
    with pytest.raises(CheckpointError, match="not a CycleGAN"):
        model_from_checkpoint(path, expected=CycleGAN)
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, plain)
    with pytest.raises(CheckpointError, match="not a gan_translate checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(CheckpointError, match="does not exist"):
        Translator.from_checkpoint(tmp_path / "missing.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt is not a PyTorch checkpoint"):
        model_from_checkpoint(tmp_path / "junk.ckpt")
    # A pix2pix checkpoint whose weights no longer fit its config: the error lists the keys.
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    checkpoint["state_dict"].pop("generator.model.model.0.weight")
    torch.save(checkpoint, tmp_path / "partial.ckpt")
    with pytest.raises(CheckpointError, match=r"missing: 1 keys"):
        model_from_checkpoint(tmp_path / "partial.ckpt")


def predict_cfg(path, input_dir, output_dir, **options):
    overrides = [f"ckpt_path={path}", f"input={input_dir}", f"output_dir={output_dir}", "device=cpu"]
    overrides += [f"{key}={value}" for key, value in options.items()]
    return compose_train(overrides, config_name="predict")


def test_predict_pairs_and_resize(trained, tmp_path):
    _, path = trained
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    left, right = random_rgb(64, 64, 1), random_rgb(64, 64, 2)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(pairs / "p.png")
    written = predict(predict_cfg(path, pairs, tmp_path / "out"))
    assert [p.name for p in written] == ["p.png"]
    output = Image.open(written[0])
    assert output.size == (64, 64)  # the A half was translated
    translator = Translator.from_checkpoint(path, device="cpu")
    np.testing.assert_array_equal(np.asarray(output), np.asarray(translator(Image.fromarray(left))))

    # pairs=false: the whole 128x64 image is translated.
    written = predict(predict_cfg(path, pairs, tmp_path / "whole", pairs="false", size_policy="resize"))
    assert Image.open(written[0]).size == (128, 64)


def test_pairs_auto_warns_for_a_model_trained_on_non_square_halves(trained):
    """data.square_halves=false: a 96x32 A|B pair looks like any image; auto translated it whole, silently."""
    _, path = trained
    translator = Translator.from_checkpoint(path, device="cpu")
    translator.config["data"].update({"_target_": "gan_translate.data.datamodule.AlignedDataModule",
                                      "square_halves": False})
    image = Image.fromarray(random_rgb(32, 96, 0))
    with pytest.warns(UserWarning, match="non-square halves.*pass pairs=true"):
        assert source_half(image, translator, "auto").size == (96, 32)
    assert source_half(image, translator, True).size == (48, 32)


def test_predict_module_subprocess(trained, tmp_path):
    _, path = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(random_rgb(64, 64, 0)).save(inputs / "square.png")
    Image.fromarray(random_rgb(50, 70, 1)).save(inputs / "odd.jpg")
    Image.fromarray(random_rgb(64, 64, 2)[..., 0], mode="L").save(inputs / "gray.png")
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    run_module("gan_translate.predict", f"ckpt_path={path}", f"input={inputs}", f"output_dir={out}",
               "size_policy=pad", cwd=tmp_path)
    sizes = {p.name: Image.open(p).size for p in out.iterdir()}
    assert sizes == {"square.png": (64, 64), "odd.png": (70, 50), "gray.png": (64, 64)}
    translator = Translator.from_checkpoint(path, device="cpu")
    expected = translator(Image.open(inputs / "square.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "square.png")), np.asarray(expected))


def test_predict_empty_input_names_folder(trained, tmp_path):
    _, path = trained
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        predict(predict_cfg(path, tmp_path / "empty", tmp_path / "out"))


def test_predict_refuses_inputs_that_would_write_one_output(trained, tmp_path):
    """x.png and x.jpg both translate to x.png: refused before anything is written, naming both."""
    _, path = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name, seed in (("x.png", 0), ("x.jpg", 1), ("y.png", 2)):
        Image.fromarray(random_rgb(32, 32, seed)).save(inputs / name)
    with pytest.raises(ValueError, match=r"share a name.*x\.jpg and x\.png"):
        predict(predict_cfg(path, inputs, tmp_path / "out"))
    assert not (tmp_path / "out").exists()
    (inputs / "x.jpg").unlink()
    with pytest.raises(ValueError, match="trained without instance maps"):  # pix2pixHD's option, named
        predict(predict_cfg(path, inputs, tmp_path / "out", instances=str(inputs)))


def test_predict_refuses_to_write_into_the_input_folder(trained, tmp_path):
    """output_dir = the inputs' folder replaced every PNG input by its translation (lost work)."""
    _, path = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(random_rgb(32, 32, 0)).save(inputs / "x.png")
    before = (inputs / "x.png").read_bytes()
    for source, output in ((inputs, inputs), (inputs / "x.png", inputs), (inputs, tmp_path / "inputs" / ".." / "inputs")):
        with pytest.raises(ValueError, match="is the folder of the inputs"):
            predict(predict_cfg(path, source, output))
    assert (inputs / "x.png").read_bytes() == before and sorted(inputs.iterdir()) == [inputs / "x.png"]
    assert [p.name for p in predict(predict_cfg(path, inputs, inputs / "translated"))] == ["x.png"]


def test_predict_seed_repeats_test_time_dropout(trained, tmp_path):
    """dropout=true (the paper's test-time noise): the same seed gives the same images, another seed others."""
    _, path = trained
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(random_rgb(64, 64, 3)).save(inputs / "a.png")

    def run(seed, name):
        return np.asarray(Image.open(predict(predict_cfg(path, inputs, tmp_path / name, dropout="true",
                                                         seed=seed))[0])).astype(int)

    first, again, other = run(1, "first"), run(1, "again"), run(2, "other")
    assert np.array_equal(first, again) and not np.array_equal(first, other)  # a tiny model: small changes


def test_batch_stats_leave_running_stats_untouched(trained):
    model, path = trained
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    translator = Translator.from_checkpoint(path, device="cpu", batch_stats=True)
    norms = [m for m in translator.generator.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    output = translator(images)
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, norms, strict=True))
    assert not torch.allclose(output, Translator.from_checkpoint(path, device="cpu")(images))


@pytest.mark.parametrize("module", ["predict", "export", "sample", "encode_features"])
def test_entry_points_name_a_required_value_left_out_without_a_traceback(module, tmp_path):
    """`python -m gan_translate.predict` alone printed omegaconf's MissingMandatoryValue with a traceback."""
    result = run_module(f"gan_translate.{module}", cwd=tmp_path, check=False)
    assert result.returncode != 0
    assert "required value not given: ckpt_path (pass ckpt_path=...)" in result.stderr
    assert "Traceback" not in result.stderr and "Missing mandatory value" not in result.stderr
