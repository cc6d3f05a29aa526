"""Tests for gan_translate.metrics (fast, CPU, no downloaded weights; real-weight checks are opt-in `slow`)."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REAL_WEIGHTS, REAL_WEIGHTS_CACHE
from PIL import Image
from torch import nn

from gan_translate.data.datasets import DataError
from gan_translate.metrics import (
    FID_WEIGHTS_ENV,
    LPIPS_WEIGHTS_ENV,
    InceptionFeatureExtractor,
    MissingWeightsError,
    TinyFeatureExtractor,
    TranslationMetrics,
    build_metrics,
    evaluate_folders,
)
from gan_translate.metrics.translation import selection_metric
from gan_translate.weights import find_weights

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin contention on small shared CPUs (restored after)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _images(n: int, size: int = 32, seed: int = 0, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * (high - low) + low


@pytest.fixture
def no_weights_env(monkeypatch, tmp_path):
    """No env variables and empty HOME / TORCH_HOME caches, so nothing can be found locally."""
    monkeypatch.delenv("GAN_TRANSLATE_CACHE", raising=False)
    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


class _FakeInception(nn.Module):
    """Stands in for the FID TorchScript file: checks the wrapper's contract (299x299, [-1, 1]), outputs 2048-d."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(48, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2] != 299 or x.shape[3] != 299:
            raise RuntimeError("expected 299x299 input")
        if bool(x.min() < -1.0001) or bool(x.max() > 1.0001):
            raise RuntimeError("expected input in [-1, 1]")
        return torch.relu(self.fc(torch.flatten(self.pool(x), 1)))


@pytest.fixture
def fake_fid_file(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "fid_inception_v3.pt"
    torch.jit.script(_FakeInception()).save(str(path))
    return path


@pytest.fixture
def fake_lpips_dir(tmp_path) -> Path:
    """Random-but-valid AlexNet backbone file in the fetch script's format (features.N.weight)."""
    import torchvision

    torch.manual_seed(0)
    feats = torchvision.models.alexnet(weights=None).features
    out = tmp_path / "lpips"
    out.mkdir()
    torch.save({f"features.{k}": v for k, v in feats.state_dict().items()}, out / "alexnet_features.pth")
    return out


# ---------------------------------------------------------------------------------------------- pixel metrics


def test_identical_images_give_perfect_scores():
    m = TranslationMetrics()
    x = _images(4)
    m.update(x, x.clone())
    out = m.compute()
    assert set(out) == {"l1", "psnr", "ssim"}
    assert out["l1"] == 0.0
    assert out["ssim"] == pytest.approx(1.0, abs=1e-6)
    # Documented convention: per-image PSNR is capped at psnr_max_db (100 dB), never inf.
    assert out["psnr"] == pytest.approx(100.0)


def test_known_shift_gives_expected_l1_and_psnr():
    real = _images(6, seed=1, low=-0.8, high=0.8)
    fake = real + 0.2  # stays inside [-1, 1]: no clamping
    m = TranslationMetrics(ssim=False)
    m.update(fake, real)
    out = m.compute()
    diff01 = 0.2 / 2  # metrics are measured on the [0, 1] scale
    assert out["l1"] == pytest.approx(diff01, rel=1e-4)
    assert out["psnr"] == pytest.approx(10 * math.log10(1.0 / diff01**2), rel=1e-4)  # 20 dB


def test_psnr_is_mean_of_per_image_values():
    real = torch.zeros(2, 3, 16, 16)
    fake = real.clone()
    fake[0] += 0.2  # [0,1] error 0.1 -> 20 dB
    fake[1] += 0.02  # [0,1] error 0.01 -> 40 dB
    m = TranslationMetrics(l1=False, ssim=False)
    m.update(fake, real)
    assert m.compute()["psnr"] == pytest.approx(30.0, rel=1e-4)


def test_accumulates_over_batches_and_reset_clears():
    real = _images(8, seed=2, low=-0.5, high=0.5)
    m = TranslationMetrics(psnr=False, ssim=False)
    m.update(real[:4] + 0.4, real[:4])
    m.update(real[4:], real[4:])
    assert m.compute()["l1"] == pytest.approx(0.1, rel=1e-4)  # half the images off by 0.2 on [0, 1]
    m.reset()
    m.update(real, real)
    assert m.compute()["l1"] == 0.0


def test_max_images_caps_accumulation():
    real = _images(12, seed=3, low=-0.5, high=0.5)
    fake = real.clone()
    fake[6:] += 0.4  # only images beyond the cap differ
    m = TranslationMetrics(psnr=False, ssim=False, max_images=6)
    for i in range(0, 12, 4):
        m.update(fake[i : i + 4], real[i : i + 4])
    assert m.compute()["l1"] == 0.0
    assert int(m._count.compute()[0]) == 6


def test_unpaired_skips_paired_metrics_and_accepts_different_batch_sizes():
    m = TranslationMetrics(paired=False, fid=True, kid=True, feature_extractor=TinyFeatureExtractor(16))
    m.update(_images(5, seed=4), _images(7, seed=5))
    out = m.compute()
    assert set(out) == {"fid", "kid_mean", "kid_std"}
    assert all(math.isfinite(v) for v in out.values())


def test_paired_shape_mismatch_is_an_error():
    m = TranslationMetrics()
    with pytest.raises(ValueError, match="same shape"):
        m.update(_images(2, size=32), _images(2, size=16))


def test_compute_without_update_returns_empty():
    with pytest.warns(UserWarning, match="before any update"):
        assert TranslationMetrics().compute() == {}


# ---------------------------------------------------------------------------------------------- FID / KID


def test_fid_tiny_extractor_self_zero_and_different_distribution_positive():
    real = _images(24, seed=6)
    other = _images(24, seed=7, low=-1.0, high=-0.4)  # darker images: a different distribution
    m = TranslationMetrics(paired=False, fid=True, feature_extractor=TinyFeatureExtractor(32))
    m.update(real, real)
    fid_self = m.compute()["fid"]
    m.reset()
    m.update(other, real)
    fid_other = m.compute()["fid"]
    assert abs(fid_self) < 1e-3
    assert fid_other > 0.1
    assert fid_other > 100 * max(abs(fid_self), 1e-6)


def test_kid_with_fewer_images_than_subset_size():
    m = TranslationMetrics(
        paired=False, kid=True, kid_subset_size=100, feature_extractor=TinyFeatureExtractor(32)
    )
    real = _images(8, seed=8)
    m.update(_images(8, seed=9, low=-1.0, high=-0.2), real)
    out = m.compute()
    # 8 images a side, subsets of 8: every subset is the whole set, so there is no spread to report.
    assert math.isfinite(out["kid_mean"]) and math.isnan(out["kid_std"])
    assert out["kid_mean"] > 0
    m.reset()
    assert m._metrics["kid"].subset_size == 100  # configured value restored after reset
    m.update(real, real)
    assert abs(m.compute()["kid_mean"]) < abs(out["kid_mean"])


def test_kid_std_from_subsets_smaller_than_the_set():
    m = TranslationMetrics(paired=False, kid=True, kid_subset_size=6, feature_extractor=TinyFeatureExtractor(32))
    m.update(_images(12, seed=9, low=-1.0, high=-0.2), _images(12, seed=8))
    out = m.compute()
    assert math.isfinite(out["kid_std"]) and out["kid_std"] > 0


def test_fid_kid_with_one_image_is_nan_with_warning():
    m = TranslationMetrics(paired=False, fid=True, kid=True, feature_extractor=TinyFeatureExtractor(8))
    m.update(_images(1), _images(1, seed=1))
    with pytest.warns(UserWarning, match="at least 2 images"):
        out = m.compute()
    assert math.isnan(out["fid"]) and math.isnan(out["kid_mean"])


def test_feature_network_runs_once_per_side_for_fid_and_kid():
    calls = []

    class Counting(TinyFeatureExtractor):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    m = TranslationMetrics(paired=False, fid=True, kid=True, feature_extractor=Counting(8))
    m.update(_images(3), _images(4, seed=1))
    assert calls == [3, 4]


def test_cached_real_features_feed_only_generated_images_and_give_the_same_scores():
    """cache_real_features: after the first complete pass, FID/KID keep the real side's features; later passes run
    the feature network on the generated images only, and score as a fresh collection would. A pass that was reset
    before its compute() (an interrupted validation) is not what gets kept."""
    calls = []

    class Counting(TinyFeatureExtractor):
        def forward(self, x):
            calls.append(x.shape[0])
            return super().forward(x)

    def scores(metrics: TranslationMetrics, fake: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
        metrics.reset()
        metrics.update(fake, real)
        torch.manual_seed(0)  # KID draws random subsets
        return metrics.compute()

    real = _images(6, seed=1)
    cached = TranslationMetrics(paired=False, fid=True, kid=True, kid_subset_size=4, feature_extractor=Counting(8),
                                cache_real_features=True)
    cached.update(_images(2, seed=5), _images(3, seed=6))  # interrupted: reset before any compute
    scores(cached, _images(6, seed=2), real)
    calls.clear()
    for seed in (3, 4):
        fake = _images(6, seed=seed, low=-0.5)
        fresh = TranslationMetrics(paired=False, fid=True, kid=True, kid_subset_size=4,
                                   feature_extractor=TinyFeatureExtractor(8))
        got, want = scores(cached, fake, real), scores(fresh, fake, real)
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6) and got["fid"] > 0
    assert calls == [6, 6]  # the generated images only

    # Off (the Python API's default): every pass feeds both sides.
    plain = TranslationMetrics(paired=False, fid=True, feature_extractor=Counting(8))
    calls.clear()
    for seed in (3, 4):
        scores(plain, _images(6, seed=seed), real)
    assert calls == [6, 6, 6, 6]


def test_tiny_extractor_is_valid_torchmetrics_feature_module():
    from torchmetrics.image.fid import FrechetInceptionDistance

    ext = TinyFeatureExtractor(num_features=16)
    fid = FrechetInceptionDistance(feature=ext, normalize=True)
    x01 = (_images(4) + 1) / 2
    fid.update(x01, real=True)
    fid.update(x01, real=False)
    assert fid.real_features_sum.shape == (16,)
    assert abs(float(fid.compute())) < 1e-3
    # seeded: two instances give the same features
    assert torch.equal(TinyFeatureExtractor(16)(x01), ext(x01))


def test_inception_wrapper_resizes_and_rescales(fake_fid_file):
    ext = InceptionFeatureExtractor(fake_fid_file)
    assert ext.num_features == 2048
    x01 = (_images(2, size=40) + 1) / 2  # the fake network raises unless it sees 299x299 in [-1, 1]
    feats = ext(x01)
    assert feats.shape == (2, 2048)
    assert not any(p.requires_grad for p in ext.parameters())


def test_fid_weights_from_env_variable(monkeypatch, fake_fid_file):
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(fake_fid_file))
    # KID rather than FID: FID on 2048-d features needs a 2048x2048 eigen-decomposition (~40 s on a small CPU).
    m = TranslationMetrics(paired=False, kid=True)
    assert isinstance(m._memo.extractor, InceptionFeatureExtractor)
    x = _images(3, size=24)
    m.update(x, x)
    assert abs(m.compute()["kid_mean"]) < 1e-2


def test_missing_fid_weights_error_names_key_env_and_command(no_weights_env):
    with pytest.raises(MissingWeightsError) as err:
        TranslationMetrics(fid=True)
    msg = str(err.value)
    assert "metrics.fid_weights" in msg and FID_WEIGHTS_ENV in msg
    assert "`python -m gan_translate.weights fetch fid`" in msg
    with pytest.raises(MissingWeightsError, match="fid_weights"):
        TranslationMetrics(kid=True)


def test_nonexistent_fid_weights_path_is_an_error_not_a_fallback(no_weights_env, monkeypatch):
    with pytest.raises(MissingWeightsError, match="no_such.pt"):
        TranslationMetrics(fid=True, fid_weights=str(no_weights_env / "no_such.pt"))
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(no_weights_env / "also_missing.pt"))
    with pytest.raises(MissingWeightsError, match=FID_WEIGHTS_ENV):
        TranslationMetrics(fid=True)


def test_a_named_missing_weights_file_is_an_error_under_auto_too(no_weights_env, monkeypatch):
    """metrics=default switches FID and LPIPS on when found ("auto"): a path the user gave that does not exist
    quietly dropped the metric, and with it the checkpoint-selection metric."""
    with pytest.raises(MissingWeightsError, match="metrics.fid_weights=.*no_such.pt"):
        TranslationMetrics(fid="auto", lpips=False, fid_weights=str(no_weights_env / "no_such.pt"))
    with pytest.raises(MissingWeightsError, match="metrics.lpips_weights"):
        TranslationMetrics(fid=False, lpips="auto", lpips_weights=str(no_weights_env / "no_such_dir"))
    with pytest.raises(MissingWeightsError, match="no_such.pt"):
        selection_metric({"fid": "auto", "fid_weights": str(no_weights_env / "no_such.pt")}, paired=True)
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(no_weights_env / "also_missing.pt"))
    with pytest.raises(MissingWeightsError, match=FID_WEIGHTS_ENV):
        TranslationMetrics(fid="auto", lpips=False)
    monkeypatch.delenv(FID_WEIGHTS_ENV)
    # Nothing named and nothing cached: "auto" is off, quietly.
    assert TranslationMetrics(fid="auto", lpips="auto").output_keys == ["l1", "psnr", "ssim"]


def test_missing_lpips_weights_error(no_weights_env):
    with pytest.raises(MissingWeightsError) as err:
        TranslationMetrics(lpips=True)
    assert "metrics.lpips_weights" in str(err.value)
    assert "`python -m gan_translate.weights fetch lpips`" in str(err.value)


def test_disabled_metrics_need_no_weights(no_weights_env):
    # fid/kid/lpips off: nothing is looked up, nothing can be downloaded
    assert TranslationMetrics(fid=False, kid=False, lpips=False).output_keys == ["l1", "psnr", "ssim"]


# ---------------------------------------------------------------------------------------------- LPIPS


def test_lpips_loads_local_backbone(fake_lpips_dir):
    m = TranslationMetrics(l1=False, psnr=False, ssim=False, lpips=True, lpips_weights=str(fake_lpips_dir))
    net = m._metrics["lpips"].net.net
    saved = torch.load(fake_lpips_dir / "alexnet_features.pth")
    assert torch.equal(net.slice1[0].weight, saved["features.0.weight"])
    assert torch.equal(getattr(net.slice5, "10").bias, saved["features.10.bias"])
    x = _images(2, size=64)
    m.update(x, x)
    assert m.compute()["lpips"] == pytest.approx(0.0, abs=1e-6)
    m.reset()
    m.update(x, _images(2, size=64, seed=1))
    assert m.compute()["lpips"] > 0


def test_lpips_backbone_file_with_wrong_keys(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "alexnet_features.pth")
    with pytest.raises(RuntimeError, match="lacks"):
        TranslationMetrics(lpips=True, lpips_weights=str(tmp_path))


# ---------------------------------------------------------------------------------------------- checkpoints


def test_state_dict_has_no_metric_weights(fake_fid_file, fake_lpips_dir, tmp_path):
    import pytorch_lightning as pl

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.generator = nn.Conv2d(3, 3, 3, padding=1)
            self.val_metrics = TranslationMetrics(
                fid=True,
                kid=True,
                lpips=True,
                fid_weights=str(fake_fid_file),
                lpips_weights=str(fake_lpips_dir),
            )

    module = Module()
    assert module.val_metrics.output_keys == ["l1", "psnr", "ssim", "lpips", "fid", "kid_mean", "kid_std"]
    x = _images(2, size=32)
    module.val_metrics.update(x, x)  # states filled: still nothing in the state dict
    assert int(module.val_metrics._metrics["fid"].fake_features_num_samples) == 2
    keys = set(module.state_dict())
    assert keys == {"generator.weight", "generator.bias"}
    # Loading a plain checkpoint strictly works (no missing metric keys), and the optimizer sees only the generator.
    module.load_state_dict({k: v.clone() for k, v in module.state_dict().items()}, strict=True)
    assert sum(p.numel() for p in module.parameters()) == 3 * 3 * 9 + 3
    path = tmp_path / "ckpt.pt"
    torch.save(module.state_dict(), path)
    assert path.stat().st_size < 10_000
    # Parent dtype changes do not reach the metrics (they keep running in float32).
    module.double()
    assert module.generator.weight.dtype == torch.float64
    assert module.val_metrics._memo.extractor.net.fc.weight.dtype == torch.float32
    assert module.val_metrics._metrics["lpips"].net.lin0.model[-1].weight.dtype == torch.float32


def test_device_move_is_forwarded():
    m = TranslationMetrics(paired=False, fid=True, feature_extractor=TinyFeatureExtractor(8))
    parent = nn.Sequential(nn.Identity())
    parent.add_module("metrics", m)
    parent.to("meta")  # meta moves are ignored (no real device)
    assert m.device == torch.device("cpu")
    parent.to("cpu")
    assert m._metrics["fid"].device == torch.device("cpu")


# ---------------------------------------------------------------------------------------------- folders


def _write_png(path: Path, value: int, size: tuple[int, int]) -> None:
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def test_evaluate_folders_matched_and_resized(tmp_path):
    pred, target = tmp_path / "pred", tmp_path / "target"
    pred.mkdir()
    target.mkdir()
    for i in range(3):
        _write_png(pred / f"img{i}.png", 100, (16, 16))
    _write_png(target / "img0.png", 120, (16, 16))
    _write_png(target / "img1.jpg", 120, (32, 32))  # any image extension; larger: resized down
    _write_png(target / "img2.png", 120, (16, 24))  # different size: resized to the prediction's size
    with pytest.warns(UserWarning, match=r"1 target\(s\) have another aspect ratio.*img2.png 16x24 -> 16x16\)$"):
        out = evaluate_folders(pred, target, TranslationMetrics(ssim=False), batch_size=2)
    assert out["num_images"] == 3
    assert out["l1"] == pytest.approx(20 / 255, rel=1e-4)
    assert out["psnr"] == pytest.approx(20 * math.log10(255 / 20), rel=1e-4)


def test_evaluate_folders_warns_that_pair_images_as_targets_are_stretched(tmp_path):
    pred, target = tmp_path / "pred", tmp_path / "target"
    pred.mkdir()
    target.mkdir()
    _write_png(pred / "x.png", 100, (16, 16))
    _write_png(target / "x.png", 120, (32, 16))  # an A|B pair: the whole of it was squashed to 16x16
    with pytest.warns(UserWarning, match="look like A|B pair images"):
        evaluate_folders(pred, target, TranslationMetrics(ssim=False))


def test_evaluate_folders_unmatched_names(tmp_path):
    pred, target = tmp_path / "pred", tmp_path / "target"
    pred.mkdir()
    target.mkdir()
    _write_png(pred / "a.png", 0, (8, 8))
    _write_png(pred / "b.png", 0, (8, 8))
    _write_png(target / "a.png", 0, (8, 8))
    _write_png(target / "c.png", 0, (8, 8))
    with pytest.raises(ValueError) as err:
        evaluate_folders(pred, target, TranslationMetrics())
    assert "without target: b" in str(err.value) and "without prediction: c" in str(err.value)


def test_evaluate_folders_empty_or_missing(tmp_path):
    pred, target = tmp_path / "pred", tmp_path / "target"
    pred.mkdir()
    target.mkdir()
    _write_png(target / "a.png", 0, (8, 8))
    (pred / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="prediction folder: folder .*pred contains no images"):
        evaluate_folders(pred, target, TranslationMetrics())
    with pytest.raises(DataError, match="nope does not exist"):
        evaluate_folders(tmp_path / "nope", target, TranslationMetrics())


def test_smallest_sides_are_those_the_metrics_take(fake_lpips_dir):
    """MIN_SIDE is exact: SSIM and LPIPS score images of their smallest side, and torch fails one pixel below it,
    where update now stops first with the metric and the key that switches it off."""
    from gan_translate.metrics.translation import MIN_SIDE

    for name, kwargs in (("ssim", {"ssim": True}), ("lpips:alex", {"lpips": True, "lpips_weights": str(fake_lpips_dir)})):
        side = MIN_SIDE[name]
        metrics = TranslationMetrics(**{"l1": False, "psnr": False, "ssim": False, **kwargs})
        metrics.update(_images(2, size=side), _images(2, size=side, seed=1))
        assert all(math.isfinite(v) for v in metrics.compute().values())
        key = name.split(":")[0]
        with pytest.raises(ValueError, match=rf"{side - 1}x{side - 1} images are too small: .*{side} px.*"
                                             rf"metrics\.collection\.{key}=false"):
            metrics.update(_images(2, size=side - 1), _images(2, size=side - 1))
        metrics.size_problem = lambda height, width: None  # what torch does without the check
        with pytest.raises(RuntimeError):
            metrics.update(_images(2, size=side - 1), _images(2, size=side - 1))
            metrics.compute()


def test_evaluate_folders_names_an_image_too_small_before_scoring(tmp_path):
    pred, target = tmp_path / "pred", tmp_path / "target"
    pred.mkdir()
    target.mkdir()
    for name, size in (("a", (16, 16)), ("b", (1, 1)), ("c", (16, 16))):
        _write_png(pred / f"{name}.png", 100, size)
        _write_png(target / f"{name}.png", 120, size)
    metrics = TranslationMetrics()
    with pytest.raises(ValueError, match=r"prediction .*b\.png: 1x1 images are too small: ssim needs at least 6"):
        evaluate_folders(pred, target, metrics)
    assert metrics._seen == [0, 0]  # nothing scored
    assert evaluate_folders(pred, target, TranslationMetrics(ssim=False))["num_images"] == 3


# ---------------------------------------------------------------------------------------------- Hydra configs


def _compose(name: str, overrides: list[str] | None = None):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=None, overrides=[f"+metrics={name}", *(overrides or [])])


def test_config_default_instantiates(monkeypatch):
    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    cfg = _compose("default")
    assert cfg.metrics.every_n_epochs == 1 and cfg.metrics.max_images == 200
    assert cfg.metrics.fid_weights is None
    metrics = build_metrics(cfg.metrics)
    assert isinstance(metrics, TranslationMetrics)
    assert metrics.output_keys == ["psnr", "ssim"]  # val/l1 comes from the model itself
    assert metrics.max_images == 200


def test_config_env_variable_and_override_reach_collection(monkeypatch):
    monkeypatch.setenv(FID_WEIGHTS_ENV, "/from/env.pt")
    cfg = _compose("default")
    assert cfg.metrics.collection.fid_weights == "/from/env.pt"
    cfg = _compose("default", ["metrics.fid_weights=/from/cli.pt", "metrics.max_images=50"])
    assert cfg.metrics.collection.fid_weights == "/from/cli.pt"
    assert cfg.metrics.collection.max_images == 50


def test_config_full_instantiates_with_local_weights(monkeypatch, fake_fid_file, fake_lpips_dir):
    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    cfg = _compose(
        "full", [f"metrics.fid_weights={fake_fid_file}", f"metrics.lpips_weights={fake_lpips_dir}"]
    )
    assert cfg.metrics.every_n_epochs == 1
    metrics = build_metrics(cfg.metrics)
    assert metrics.output_keys == ["psnr", "ssim", "lpips", "fid", "kid_mean", "kid_std"]
    assert isinstance(metrics._memo.extractor, InceptionFeatureExtractor)
    assert metrics._memo.extractor.weights_path == str(fake_fid_file)
    # FID on 2048-d features is slow on CPU (2048x2048 eigvals): compute the whole group with a tiny
    # extractor given through the config instead.
    cfg = _compose(
        "full",
        [
            f"metrics.lpips_weights={fake_lpips_dir}",
            "+metrics.collection.feature_extractor._target_=gan_translate.metrics.TinyFeatureExtractor",
            "+metrics.collection.feature_extractor.num_features=16",
        ],
    )
    metrics = build_metrics(cfg.metrics)
    assert isinstance(metrics._memo.extractor, TinyFeatureExtractor)
    x = _images(3, size=32)
    metrics.update(x, x)
    out = metrics.compute()
    assert "l1" not in out and out["lpips"] == pytest.approx(0.0, abs=1e-6)


def test_config_full_without_weights_fails_clearly(no_weights_env):
    cfg = _compose("full")
    from hydra.errors import InstantiationException

    with pytest.raises((MissingWeightsError, InstantiationException)) as err:
        build_metrics(cfg.metrics)
    # one error naming both missing weight sets
    assert "metrics.fid_weights" in str(err.value) and "metrics.lpips_weights" in str(err.value)


def test_config_none():
    cfg = _compose("none")
    assert build_metrics(cfg.metrics) is None
    assert build_metrics(None) is None


def test_config_files_load_with_omegaconf(monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    for name in ("default", "none", "full"):
        cfg = OmegaConf.load(CONF_DIR / "metrics" / f"{name}.yaml")
        OmegaConf.to_container(cfg, resolve=True)  # all interpolations resolve


# ---------------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, fake: torch.Tensor, real: torch.Tensor, queue) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        m = TranslationMetrics(
            fid=True, kid=True, kid_subset_size=100, feature_extractor=TinyFeatureExtractor(16)
        )
        # uneven split across ranks
        idx = slice(0, 5) if rank == 0 else slice(5, None)
        m.update(fake[idx], real[idx])
        out = m.compute()
        queue.put((rank, out))
    finally:
        dist.destroy_process_group()


def test_ddp_sync_matches_single_process():
    import torch.multiprocessing as mp

    real = _images(8, seed=10, low=-0.8, high=0.8)
    fake = (real + 0.1 * _images(8, seed=11)).clamp(-1, 1)
    single = TranslationMetrics(
        fid=True, kid=True, kid_subset_size=100, feature_extractor=TinyFeatureExtractor(16)
    )
    single.update(fake, real)
    expected = single.compute()

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(
        _ddp_worker, args=(2, _free_port(), fake, real, queue), nprocs=2, join=True, start_method="spawn"
    )
    results = dict(queue.get() for _ in range(2))
    for rank in (0, 1):
        for key in ("l1", "psnr", "ssim", "fid", "kid_mean"):
            assert results[rank][key] == pytest.approx(expected[key], rel=1e-3, abs=1e-5), (rank, key)


# ---------------------------------------------------------------------------------------------- slow, real weights


@pytest.mark.slow
def test_real_fid_inception_weights():
    path = REAL_WEIGHTS["fid"] or find_weights("fid", REAL_WEIGHTS_CACHE)
    if not path or not Path(path).is_file():
        pytest.skip(f"no FID weights: `python -m gan_translate.weights fetch fid` (or set {FID_WEIGHTS_ENV})")
    ext = InceptionFeatureExtractor(path)
    x01 = (_images(4, size=64) + 1) / 2
    feats = ext(x01)
    assert feats.shape == (4, 2048) and bool((feats >= 0).all())  # pool3 of ReLU activations
    m = TranslationMetrics(paired=False, fid=True, kid=True, fid_weights=path)
    noise = _images(8, size=64, seed=1)
    smooth = torch.nn.functional.interpolate(_images(8, size=8, seed=2), size=64, mode="bilinear")
    m.update(noise, noise)
    same = m.compute()
    m.reset()
    m.update(smooth, noise)
    diff = m.compute()
    assert abs(same["fid"]) < 1e-2 and diff["fid"] > 10 and diff["kid_mean"] > same["kid_mean"]


@pytest.mark.slow
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_real_lpips_backbone_weights(net):
    fname = {"alex": "alexnet_features.pth", "vgg": "vgg16_features.pth"}[net]
    folder = REAL_WEIGHTS["lpips"] or REAL_WEIGHTS_CACHE
    if not (Path(folder) / fname).is_file():
        pytest.skip(f"no {fname}: `python -m gan_translate.weights fetch lpips` (or set {LPIPS_WEIGHTS_ENV})")
    m = TranslationMetrics(l1=False, psnr=False, ssim=False, lpips=True, lpips_net=net, lpips_weights=folder)

    def smooth(seed: int) -> torch.Tensor:  # natural-ish images: upsampled low-resolution colour fields
        low_res = _images(4, size=8, seed=seed)
        return torch.nn.functional.interpolate(low_res, size=64, mode="bicubic", align_corners=False).clamp(
            -1, 1
        )

    def lpips(fake: torch.Tensor, real: torch.Tensor) -> float:
        m.reset()
        m.update(fake, real)
        return m.compute()["lpips"]

    x = smooth(1)
    assert lpips(x, x) == pytest.approx(0.0, abs=1e-6)
    slight = lpips((x + 0.05 * _images(4, size=64, seed=3)).clamp(-1, 1), x)
    other = lpips(smooth(2), x)
    noise = lpips(_images(4, size=64, seed=4), x)
    # a trained backbone ranks a faint perturbation << a different image < pure noise
    assert 0 < slight < 0.2 * other and other < noise
