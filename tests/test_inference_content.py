"""Inference by content, from real tiny checkpoints: predict's size policies compute what they promise, and
predict/evaluate follow the checkpoint's ``model.test_batch_stats`` when ``batch_stats`` is left null."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import TINY_OVERRIDES, compose_train, random_rgb
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from gan_translate.checkpoint import model_from_checkpoint
from gan_translate.evaluate import evaluate
from gan_translate.predict import predict
from gan_translate.train import train

# Not multiples of the 5-level U-Net's 32: pad -> 64 x 64, resize -> 32 x 64 (nearest multiples),
# train_size -> 32 x 32 (the training size): three different computations.
HEIGHT, WIDTH = 40, 56
# A few steps leave a generator at its 0.02-scale initialisation, whose output hardly depends on the input;
# at gain 1 every output pixel does, so the checks below can tell the computations apart.
STRONG = ["generator.init_gain=1.0"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[bool, object]:
    """model.test_batch_stats -> last.ckpt of a tiny pix2pix run (32 px, widths 8, 2 batches of 4)."""
    paths = {}
    for batch_stats in (False, True):
        out = tmp_path_factory.mktemp(f"test_batch_stats_{batch_stats}")
        train(compose_train([*TINY_OVERRIDES, f"model.test_batch_stats={batch_stats}", "callbacks.samples=null",
                             *STRONG], out))
        paths[batch_stats] = out / "checkpoints" / "last.ckpt"
    return paths


def as_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


def as_levels(output: torch.Tensor) -> np.ndarray:
    return (output[0].clamp(-1, 1).permute(1, 2, 0).numpy() + 1) * 127.5


def with_batch_statistics(generator: torch.nn.Module) -> torch.nn.Module:
    """The reference test script's normalisation: every batch norm uses the statistics of its input."""
    generator = copy.deepcopy(generator)
    for module in generator.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train()
    return generator


def predict_one(ckpt, image: Image.Image, tmp_path, **options) -> np.ndarray:
    """`gan_translate.predict` composed from predict.yaml on one PNG; the written PNG as float levels."""
    inputs = tmp_path / "in"
    inputs.mkdir(exist_ok=True)
    image.save(inputs / "x.png")
    out = tmp_path / "_".join(f"{k}_{v}" for k, v in options.items())
    overrides = [f"ckpt_path={ckpt}", f"input={inputs}", f"output_dir={out}", "device=cpu"]
    overrides += [f"{key}={value}" for key, value in options.items()]
    (written,) = predict(compose_train(overrides, config_name="predict"))
    return np.asarray(Image.open(written), np.float64)


@torch.no_grad()
def test_size_policies_by_content(checkpoints, tmp_path):
    """Each policy's output is the generator run on the image made to fit as documented, then brought back."""
    generator = model_from_checkpoint(checkpoints[False]).generator  # eval: running statistics
    image = Image.fromarray(random_rgb(HEIGHT, WIDTH, 3))
    x = as_tensor(image)

    # pad: reflect-pad right and bottom to the next multiple of 32, translate, keep the original region.
    padded = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (0, 0), (0, 64 - HEIGHT), (0, 64 - WIDTH)), mode="reflect"))
    expected = {"pad": generator(padded)[..., :HEIGHT, :WIDTH]}
    # resize: to the nearest multiples of 32 and back; train_size: to the training crop (32 x 32) and back.
    for policy, size in (("resize", [32, 64]), ("train_size", [32, 32])):
        translated = generator(TF.resize(x, size, antialias=True))
        expected[policy] = TF.resize(translated, [HEIGHT, WIDTH], antialias=True)
    expected = {policy: as_levels(output) for policy, output in expected.items()}

    for policy in expected:
        written = predict_one(checkpoints[False], image, tmp_path, size_policy=policy)
        assert written.shape == (HEIGHT, WIDTH, 3)
        np.testing.assert_allclose(written, expected[policy], atol=0.55, err_msg=policy)  # rounded to 8-bit levels
        for other in set(expected) - {policy}:  # the check tells the policies apart
            assert np.abs(written - expected[other]).mean() > 2, (policy, other)


@torch.no_grad()
@pytest.mark.parametrize("trained_with", [False, True])
def test_predict_follows_test_batch_stats(checkpoints, tmp_path, trained_with):
    model = model_from_checkpoint(checkpoints[trained_with])
    assert model.test_batch_stats is trained_with
    image = Image.fromarray(random_rgb(32, 32, 4))
    x = as_tensor(image)
    running = as_levels(model.generator(x))
    batchwise = as_levels(with_batch_statistics(model.generator)(x))
    assert np.abs(running - batchwise).mean() > 2  # distinguishable

    written = predict_one(checkpoints[trained_with], image, tmp_path)  # batch_stats: null in predict.yaml
    np.testing.assert_allclose(written, batchwise if trained_with else running, atol=0.55)


@torch.no_grad()
@pytest.mark.parametrize("trained_with", [False, True])
def test_evaluate_follows_test_batch_stats(checkpoints, tmp_path, trained_with):
    ckpt = checkpoints[trained_with]
    model = model_from_checkpoint(ckpt)
    data = instantiate(OmegaConf.create(model.run_config["data"])).make_dataset("val", train=False)
    # L1 on [0, 1] images of each normalisation, over the validation split, one image at a time.
    l1 = {}
    for name, generator in (("running", model.generator), ("batch", with_batch_statistics(model.generator))):
        items = [data[i] for i in range(len(data))]  # procedural data: no IndexError ends a plain iteration
        errors = [(generator(item["A"][None]).clamp(-1, 1) - item["B"][None]).abs().mean() / 2 for item in items]
        l1[name] = float(torch.stack(errors).mean())
    assert abs(l1["running"] - l1["batch"]) > 1e-3

    overrides = [f"ckpt_path={ckpt}", "split=val", "device=cpu", f"output={tmp_path / 'report.json'}"]
    report = evaluate(compose_train(overrides, config_name="evaluate"))  # batch_stats: null in evaluate.yaml
    assert json.loads((tmp_path / "report.json").read_text())["num_images"] == len(data)
    expected = l1["batch"] if trained_with else l1["running"]
    assert report["metrics"]["l1"] == pytest.approx(expected, rel=1e-4)
