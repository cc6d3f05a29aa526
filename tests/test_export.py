"""Export: ONNX (run with onnxruntime) and TorchScript files reproduce the PyTorch generator in eval mode,
at two batch sizes and two spatial sizes (dynamic axes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny_run import tiny_run

from gan_translate import Translator
from gan_translate.export import export_generator

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pix2pix_ckpt(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export_pix2pix")
    tiny_run(run_dir)
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def cyclegan_ckpt(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("export_cyclegan")
    tiny_run(run_dir, ["experiment=shapes_cyclegan"])
    return run_dir / "checkpoints" / "last.ckpt"


def _inputs(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(*shape, generator=g) * 2 - 1 for shape in shapes]


# pix2pix U-Net with 5 halvings: multiples of 32; batch 1 and 3, 32x32 and 64x96.
UNET_SHAPES = [(1, 3, 32, 32), (3, 3, 64, 96)]


def _onnx_outputs(path: Path, inputs):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, {"input": x.numpy()})[0] for x in inputs]


def test_onnx_matches_pytorch_eval_mode(pix2pix_ckpt, tmp_path):
    path = export_generator(pix2pix_ckpt, format="onnx", output=tmp_path / "g.onnx")
    translator = Translator.from_checkpoint(pix2pix_ckpt, device="cpu")
    inputs = _inputs(UNET_SHAPES)
    for x, out in zip(inputs, _onnx_outputs(path, inputs), strict=True):
        assert out.shape == tuple(x.shape)
        np.testing.assert_allclose(out, translator(x).numpy(), atol=1e-4, rtol=1e-4)
    # The same image gives the same output alone and inside a batch: no batch statistics, no dropout.
    single = _onnx_outputs(path, [inputs[1][:1]])[0]
    np.testing.assert_allclose(single[0], _onnx_outputs(path, [inputs[1]])[0][0], atol=1e-5)
    metadata = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert metadata["size_divisor"] == 32 and metadata["normalization"] == "running_statistics"


def test_onnx_batch_statistics_matches_translator(pix2pix_ckpt, tmp_path):
    path = export_generator(pix2pix_ckpt, format="onnx", output=tmp_path / "g_bs.onnx", batch_stats=True)
    translator = Translator.from_checkpoint(pix2pix_ckpt, device="cpu", batch_stats=True)
    eval_translator = Translator.from_checkpoint(pix2pix_ckpt, device="cpu")
    inputs = _inputs([(4, 3, 32, 32), (2, 3, 64, 32)], seed=1)
    for x, out in zip(inputs, _onnx_outputs(path, inputs), strict=True):
        np.testing.assert_allclose(out, translator(x).numpy(), atol=1e-4, rtol=1e-4)
        assert not np.allclose(out, eval_translator(x).numpy(), atol=1e-3)


def test_default_export_follows_the_models_test_batch_stats(tmp_path):
    """The paper's facades setting (model.test_batch_stats=true): predict normalised with batch statistics, the
    default export with running ones, up to 74/255 apart."""
    tiny_run(tmp_path / "run", ["model.test_batch_stats=true"])
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    path = export_generator(ckpt, format="onnx", output=tmp_path / "g.onnx")
    inputs = _inputs([(2, 3, 32, 32)], seed=2)
    np.testing.assert_allclose(_onnx_outputs(path, inputs)[0], Translator.from_checkpoint(ckpt, device="cpu")(
        inputs[0]).numpy(), atol=1e-4, rtol=1e-4)
    metadata = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert metadata["normalization"] == "batch_statistics"
    running = export_generator(ckpt, format="onnx", output=tmp_path / "r.onnx", batch_stats=False)
    assert not np.allclose(_onnx_outputs(running, inputs)[0], _onnx_outputs(path, inputs)[0], atol=1e-3)


def test_torchscript_matches_pytorch(pix2pix_ckpt, tmp_path):
    path = export_generator(pix2pix_ckpt, format="torchscript", output=tmp_path / "g.pt")
    files = {"gan_translate.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=files)
    assert json.loads(files["gan_translate.json"])["size_divisor"] == 32
    translator = Translator.from_checkpoint(pix2pix_ckpt, device="cpu")
    for x in _inputs(UNET_SHAPES):
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), translator(x), atol=1e-5, rtol=1e-5)


def test_cyclegan_resnet_onnx_both_directions(cyclegan_ckpt, tmp_path):
    inputs = _inputs([(1, 3, 32, 32), (2, 3, 20, 28)], seed=2)  # ResNet: multiples of 4
    outputs = {}
    for direction in ("AtoB", "BtoA"):
        path = export_generator(cyclegan_ckpt, format="onnx", direction=direction)
        assert path == cyclegan_ckpt.with_name(f"last_{direction}.onnx")
        translator = Translator.from_checkpoint(cyclegan_ckpt, direction=direction, device="cpu")
        outputs[direction] = _onnx_outputs(path, inputs)
        for x, out in zip(inputs, outputs[direction], strict=True):
            np.testing.assert_allclose(out, translator(x).numpy(), atol=1e-4, rtol=1e-4)
    assert not np.allclose(outputs["AtoB"][0], outputs["BtoA"][0], atol=1e-3)
    default = export_generator(cyclegan_ckpt, format="onnx", output=tmp_path / "default.onnx")
    metadata = {p.key: json.loads(p.value) for p in onnx.load(str(default)).metadata_props}
    assert metadata["direction"] == "AtoB" and metadata["min_size"] == 8  # the generator it holds; its smallest side


def test_export_config_drives_the_entry_point(pix2pix_ckpt, tmp_path):
    """conf/export.yaml composed as the CLI does, passed to the entry point's function (no subprocess)."""
    from hydra import compose, initialize_config_dir

    from gan_translate import export

    with initialize_config_dir(config_dir=export.CONF_DIR, version_base="1.3"):
        cfg = compose("export", overrides=[f"ckpt_path={pix2pix_ckpt}", f"output={tmp_path / 'cfg.onnx'}"])
    path = export.main.__wrapped__(cfg)
    assert path == tmp_path / "cfg.onnx" and path.is_file()


@pytest.mark.slow
def test_cli_writes_default_path(pix2pix_ckpt):
    cmd = [sys.executable, "-m", "gan_translate.export", f"ckpt_path={pix2pix_ckpt}", "format=torchscript"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert pix2pix_ckpt.with_name("last.torchscript.pt").is_file()


def test_bad_format_and_direction_are_named(pix2pix_ckpt, cyclegan_ckpt):
    with pytest.raises(ValueError, match="format must be one of"):
        export_generator(pix2pix_ckpt, format="tflite")
    with pytest.raises(ValueError, match="direction must be AtoB or BtoA"):
        export_generator(cyclegan_ckpt, direction="sideways")
