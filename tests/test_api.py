"""Python API: ``from gan_translate import Translator`` on a checkpoint of a real (tiny) training run."""

from __future__ import annotations

import pytest
import torch
from _tiny_run import tiny_run
from PIL import Image

import gan_translate
from gan_translate import Translator
from gan_translate.checkpoint import model_from_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("api_run")
    tiny_run(run_dir)
    path = run_dir / "checkpoints" / "last.ckpt"
    assert path.is_file()
    return path


def _random_pil(width: int, height: int, seed: int = 0) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy(), "RGB")


def test_public_names_are_exported():
    from gan_translate.models import CycleGAN, Pix2Pix
    from gan_translate.translator import Translator as translator_class

    assert gan_translate.Translator is translator_class
    assert gan_translate.Pix2Pix is Pix2Pix and gan_translate.CycleGAN is CycleGAN
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        gan_translate.Nope  # noqa: B018


def test_pil_in_pil_out_same_size(checkpoint):
    translator = Translator.from_checkpoint(checkpoint, device="cpu")
    for size in [(32, 32), (45, 37), (70, 20)]:  # one the U-Net takes as it is, two it must pad
        out = translator(_random_pil(*size))
        assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == size
    # A grayscale image is converted to the model's 3 input channels.
    assert translator(_random_pil(32, 32).convert("L")).size == (32, 32)


def test_tensor_batch_matches_generator_in_eval_mode(checkpoint):
    translator = Translator.from_checkpoint(checkpoint, device="cpu")
    batch = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    out = translator(batch)
    assert out.shape == (3, 3, 32, 32)
    generator = model_from_checkpoint(checkpoint).generator.eval()
    with torch.no_grad():
        expected = generator(batch)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # One image without the batch dimension gives the same as its row of the batch.
    torch.testing.assert_close(translator(batch[1]), out[1], atol=1e-5, rtol=1e-5)


def test_list_of_pil(checkpoint):
    translator = Translator.from_checkpoint(checkpoint, device="cpu")
    images = [_random_pil(32, 32, seed=s) for s in range(3)] + [_random_pil(40, 24)]
    outputs = translator(images)
    assert [o.size for o in outputs] == [i.size for i in images]
    assert outputs[0].tobytes() != outputs[1].tobytes()  # different inputs, different outputs


def test_batch_stats_uses_batch_statistics_and_leaves_running_stats(checkpoint):
    batch = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    running = Translator.from_checkpoint(checkpoint, device="cpu")
    batchwise = Translator.from_checkpoint(checkpoint, device="cpu", batch_stats=True)
    stats_before = {k: v.clone() for k, v in batchwise.generator.state_dict().items() if "running" in k}
    assert not torch.allclose(running(batch), batchwise(batch), atol=1e-3)
    stats_after = {k: v for k, v in batchwise.generator.state_dict().items() if "running" in k}
    assert stats_before and all(torch.equal(stats_before[k], stats_after[k]) for k in stats_before)


def test_bf16_precision_close_to_fp32(checkpoint):
    batch = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    full = Translator.from_checkpoint(checkpoint, device="cpu")(batch)
    half = Translator.from_checkpoint(checkpoint, device="cpu", precision="bf16")(batch)
    assert half.dtype == torch.float32 and half.shape == full.shape
    assert (half - full).abs().mean() < 0.05


def test_bad_inputs_are_named(checkpoint):
    translator = Translator.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="3-channel images, got 1 channels"):
        translator(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="float tensor in \\[-1, 1\\]"):
        translator(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="precision must be"):
        Translator.from_checkpoint(checkpoint, precision="8")


# Inductor builds C++ with gcc on the CPU: tens of seconds per graph, so one case runs by default.
@pytest.mark.parametrize("batch_stats", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_compiled_translator_matches_eager(checkpoint, batch_stats):
    from torch._dynamo.utils import counters

    batch = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    eager = Translator.from_checkpoint(checkpoint, device="cpu", batch_stats=batch_stats)
    compiled = Translator.from_checkpoint(checkpoint, device="cpu", batch_stats=batch_stats, compile=True)
    frames = counters["stats"]["unique_graphs"]
    torch.testing.assert_close(compiled(batch), eager(batch), atol=1e-4, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] > frames  # inductor compiled a graph, not an eager fallback
    if batch_stats:  # a size that needs padding: a second graph, through the same compiled generator
        assert compiled(_random_pil(45, 37)).size == (45, 37)
