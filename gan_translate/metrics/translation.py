"""TranslationMetrics: the evaluation metrics of an image-to-image translation model.

Images come in as float tensors ``N x C x H x W`` in ``[-1, 1]`` (generator tanh output). Conventions:

* ``l1``: mean absolute error on the ``[0, 1]`` scale (i.e. half the L1 measured on ``[-1, 1]``).
* ``psnr``: mean over images of the per-image PSNR in dB with ``data_range=1`` on the ``[0, 1]`` scale.
  Each image's PSNR is capped at ``psnr_max_db`` (default 100 dB) so identical images give 100, not ``inf``,
  and a single perfect image cannot turn the mean into ``inf``.
* ``ssim``: torchmetrics SSIM (gaussian 11x11, sigma 1.5) with ``data_range=1`` on ``[0, 1]``, mean over images.
* ``lpips``: mean LPIPS (AlexNet or VGG16 backbone) on ``[-1, 1]`` inputs, see :mod:`.lpips`.
* ``fid``, ``kid_mean``, ``kid_std``: torchmetrics FID / KID with a local feature network, see :mod:`.features`.
  KID's ``subset_size`` is ``min(kid_subset_size, images seen per side)`` at compute time; ``kid_std`` is NaN when
  that takes every image of both sides (each subset is then the whole set, and their spread means nothing).
  ``cache_real_features=True`` (the training configs): the real side's features of the first complete pass (up to
  the first ``compute()``) are kept, and later passes feed FID/KID only the generated images. The validation set is
  the same every epoch, so this halves the Inception work of every validation after the first.

``l1``, ``psnr``, ``ssim`` and ``lpips`` compare each output with its target and are computed only when
``paired=True``; with ``paired=False`` (CycleGAN on unpaired data) they are skipped and ``real`` is just a sample
of the target domain for FID/KID.

Distributed: every metric is a torchmetrics ``Metric``; ``compute()`` syncs their states across processes
(sums for L1/PSNR/SSIM/LPIPS/FID, gathered feature lists for KID). Every process must call ``compute()``.
``max_images`` caps the images accumulated *per process*.

Checkpoints: the metric objects (and with them the Inception / LPIPS networks) are kept out of the ``nn.Module``
tree on purpose, so they never appear in ``state_dict()`` of a LightningModule holding this module, are never
touched by ``load_state_dict``, are not wrapped/broadcast by DDP and are not counted in model summaries.
Device moves (``.to(device)``, ``.cuda()``) of the parent are forwarded to them; dtype conversions are not
(the metrics always run in float32).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchmetrics import Metric

from .features import (
    MissingWeightsError,
    NamedWeightsMissingError,
    _MemoFeatures,
    _torch_fidelity_cached_weights,
    build_fid_feature_extractor,
    resolve_fid_weights,
)
from .lpips import resolve_lpips_backbone

__all__ = ["TranslationMetrics", "build_metrics", "selection_metric"]


def _found(resolve: Callable[[], object]) -> bool:
    """Whether weights are found; a file named by a key or an environment variable that does not exist still
    raises (NamedWeightsMissingError): "auto" must not quietly drop a metric that the user pointed at."""
    try:
        return resolve() is not None
    except NamedWeightsMissingError:
        raise
    except MissingWeightsError:
        return False


def fid_weights_found(fid_weights: str | os.PathLike | None = None) -> bool:
    return _found(lambda: resolve_fid_weights(fid_weights) or _torch_fidelity_cached_weights())


def lpips_weights_found(net: str = "alex", lpips_weights: str | os.PathLike | None = None) -> bool:
    return _found(lambda: resolve_lpips_backbone(net, lpips_weights))


def switch_on(switch: bool | str, available: Callable[[], bool]) -> bool:
    if switch == "auto":
        return available()
    if not isinstance(switch, bool):
        raise ValueError(f"a metric switch is true, false or auto, got {switch!r}")
    return switch


def selection_metric(collection: Any, paired: bool) -> str | None:
    """The metric that should pick checkpoints for a metrics config (``collection`` of conf/metrics/*.yaml):
    ``val/fid`` when FID runs, else ``val/lpips`` (paired models), else None. Pixel losses such as val/l1 are
    never chosen: they reward blurry outputs, the averages the GAN term is there to avoid."""
    if not collection:
        return None
    custom = collection.get("feature_extractor") is not None
    fid = switch_on(collection.get("fid", False), lambda: custom or fid_weights_found(collection.get("fid_weights")))
    if fid:
        return "val/fid"
    paired = paired and collection.get("paired", True)
    lpips_net, lpips_weights = collection.get("lpips_net", "alex"), collection.get("lpips_weights")
    if paired and switch_on(collection.get("lpips", False), lambda: lpips_weights_found(lpips_net, lpips_weights)):
        return "val/lpips"
    return None


class _MeanPSNR(Metric):
    """Mean of per-image PSNR (dB), images in [0, 1], each capped at ``max_db``."""

    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    sum_psnr: Tensor
    total: Tensor

    def __init__(self, max_db: float = 100.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_db = float(max_db)
        self.add_state("sum_psnr", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        mse = (preds.double() - target.double()).square().flatten(1).mean(dim=1)
        psnr = (-10.0 * torch.log10(mse.clamp_min(10.0 ** (-self.max_db / 10.0)))).clamp_max(self.max_db)
        self.sum_psnr += psnr.sum()
        self.total += preds.shape[0]

    def compute(self) -> Tensor:
        return (self.sum_psnr / self.total).float()


class _ImageCount(Metric):
    """Number of images seen per side (index 0: fake, 1: real), summed across processes."""

    full_state_update = False
    counts: Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("counts", torch.zeros(2, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, n_fake: int, n_real: int) -> None:
        self.counts += torch.tensor([n_fake, n_real], dtype=torch.long, device=self.counts.device)

    def compute(self) -> Tensor:
        return self.counts.clone()


def _to_rgb(x: Tensor) -> Tensor:
    if x.shape[1] == 3:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1)
    raise ValueError(f"FID/KID/LPIPS need 1- or 3-channel images, got {x.shape[1]} channels")


class TranslationMetrics(nn.Module):
    """Collection of image-translation metrics built from plain arguments (Hydra-instantiable).

    Args:
        paired: a pixel-aligned target exists for every output (pix2pix); enables l1/psnr/ssim/lpips.
        l1, psnr, ssim, lpips, fid, kid: switch each metric on or off. Networks are only built when enabled.
            ``lpips``, ``fid`` and ``kid`` also take ``"auto"``: on when their weights are found locally.
        fid_weights: TorchScript FID Inception file (or a folder holding ``fid_inception_v3.pt``); falls back to
            ``$GAN_TRANSLATE_FID_WEIGHTS``, then the local cache, then a clear error. Unused when
            ``feature_extractor`` is given.
        lpips_net: ``"alex"`` or ``"vgg"``.
        lpips_weights: folder with ``alexnet_features.pth`` / ``vgg16_features.pth`` (or one file); falls back to
            ``$GAN_TRANSLATE_LPIPS_WEIGHTS``, then the local caches, then a clear error.
        kid_subset_size: KID subset size; reduced to the number of images per side when fewer were seen.
        kid_subsets: number of KID subsets.
        feature_extractor: custom FID/KID feature module (input float ``[0, 1]``, output ``N x d``, ideally with a
            ``num_features`` attribute), e.g. :class:`TinyFeatureExtractor` in tests. Replaces Inception.
        max_images: stop accumulating after this many images per side (per process); ``None``: no cap.
        psnr_max_db: per-image PSNR cap in dB.
        cache_real_features: after the first ``compute()``, FID/KID keep the real images' features and take only
            generated images (for repeated validation on an unchanging set); paired metrics still use ``real``.
    """

    _memo: _MemoFeatures | None  # set with object.__setattr__: deliberately not registered submodules
    _count: _ImageCount

    def __init__(
        self,
        paired: bool = True,
        l1: bool = True,
        psnr: bool = True,
        ssim: bool = True,
        lpips: bool | str = False,
        fid: bool | str = False,
        kid: bool | str = False,
        fid_weights: str | os.PathLike | None = None,
        lpips_net: str = "alex",
        lpips_weights: str | os.PathLike | None = None,
        kid_subset_size: int = 100,
        kid_subsets: int = 100,
        feature_extractor: nn.Module | None = None,
        max_images: int | None = None,
        psnr_max_db: float = 100.0,
        cache_real_features: bool = False,
    ) -> None:
        super().__init__()
        # "auto": on when its weights are found (or a custom feature extractor is given), quietly off otherwise.
        fid = switch_on(fid, lambda: feature_extractor is not None or fid_weights_found(fid_weights))
        kid = switch_on(kid, lambda: feature_extractor is not None or fid_weights_found(fid_weights))
        lpips = switch_on(lpips, lambda: lpips_weights_found(lpips_net, lpips_weights))
        if kid and (not isinstance(kid_subset_size, int) or kid_subset_size < 2):
            raise ValueError(f"metrics kid_subset_size must be an int >= 2, got {kid_subset_size!r}")
        if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
            raise ValueError(f"metrics max_images must be a positive int or null, got {max_images!r}")
        if feature_extractor is not None and not isinstance(feature_extractor, nn.Module):
            raise TypeError(f"feature_extractor must be an nn.Module, got {type(feature_extractor).__name__}")
        self.paired = bool(paired)
        self.lpips_net = lpips_net
        self.max_images = max_images
        self.kid_subset_size = int(kid_subset_size)
        self._device = torch.device("cpu")
        self._seen = [0, 0]  # fake, real (this process)
        self.cache_real_features = bool(cache_real_features)
        self._cached_real: int | None = None  # real images behind FID/KID's kept features (all processes)

        # Look up all needed weights first, so one error lists everything that is missing.
        extractor: nn.Module | None = feature_extractor
        missing: list[str] = []
        if (fid or kid) and extractor is None:
            try:
                extractor = build_fid_feature_extractor(fid_weights)
            except MissingWeightsError as err:
                missing.append(str(err))
        if lpips and self.paired:
            try:
                resolve_lpips_backbone(lpips_net, lpips_weights)
            except MissingWeightsError as err:
                missing.append(str(err))
        if missing:
            raise MissingWeightsError("\n".join(missing))

        # Plain dict on purpose: keeps the metrics (and their networks) out of the module tree / state_dict.
        metrics: dict[str, Metric] = {}
        if self.paired:
            from torchmetrics.image import StructuralSimilarityIndexMeasure
            from torchmetrics.regression import MeanAbsoluteError

            if l1:
                metrics["l1"] = MeanAbsoluteError()
            if psnr:
                metrics["psnr"] = _MeanPSNR(max_db=psnr_max_db)
            if ssim:
                metrics["ssim"] = StructuralSimilarityIndexMeasure(data_range=1.0)
            if lpips:
                from .lpips import OfflineLPIPS

                metrics["lpips"] = OfflineLPIPS(net=lpips_net, lpips_weights=lpips_weights)
        object.__setattr__(self, "_memo", None)
        if fid or kid:
            assert extractor is not None
            extractor.requires_grad_(False)
            extractor.eval()
            # object.__setattr__: not a registered submodule (see module docstring).
            object.__setattr__(self, "_memo", _MemoFeatures(extractor))
            if fid:
                from torchmetrics.image.fid import FrechetInceptionDistance

                metrics["fid"] = FrechetInceptionDistance(feature=self._memo, normalize=True)
            if kid:
                from torchmetrics.image.kid import KernelInceptionDistance

                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
                    metrics["kid"] = KernelInceptionDistance(
                        feature=self._memo,
                        subsets=kid_subsets,
                        subset_size=self.kid_subset_size,
                        normalize=True,
                    )
        self._metrics = metrics
        object.__setattr__(self, "_count", _ImageCount())

    # ------------------------------------------------------------------ module plumbing
    @property
    def enabled(self) -> list[str]:
        """Names of the metrics that will be computed (``kid`` yields ``kid_mean`` and ``kid_std``)."""
        return list(self._metrics)

    @property
    def output_keys(self) -> list[str]:
        keys: list[str] = []
        for name in self._metrics:
            keys += ["kid_mean", "kid_std"] if name == "kid" else [name]
        return keys

    def extra_repr(self) -> str:
        return f"paired={self.paired}, metrics={self.output_keys}, max_images={self.max_images}"

    def _apply(self, fn: Callable, recurse: bool = True) -> TranslationMetrics:
        super()._apply(fn, recurse)
        probe = fn(torch.zeros(1, device=self._device))
        if isinstance(probe, Tensor) and probe.device.type != "meta" and probe.device != self._device:
            self._device = probe.device
            for metric in self._all_metrics():
                metric.to(self._device)
        return self

    def _all_metrics(self) -> list[Metric]:
        return [*self._metrics.values(), self._count]

    @property
    def device(self) -> torch.device:
        return self._device

    # ------------------------------------------------------------------ metric API
    def _take(self, x: Tensor, side: int) -> Tensor:
        if self.max_images is None:
            return x
        left = max(self.max_images - self._seen[side], 0)
        return x[:left]

    def size_problem(self, height: int, width: int) -> str | None:
        """Why the paired metrics cannot score ``height`` x ``width`` images (each has a smallest side below which
        it fails inside torch), naming the key that switches each off; None when they can."""
        sides = {"ssim": ("ssim", MIN_SIDE["ssim"]),
                 "lpips": (f"lpips ({self.lpips_net})", MIN_SIDE.get(f"lpips:{self.lpips_net}", 1))}
        short = [f"{label} needs at least {side} px a side (metrics.collection.{key}=false leaves it out)"
                 for key, (label, side) in sides.items() if key in self._metrics and min(height, width) < side]
        return f"{height}x{width} images are too small: {'; '.join(short)}" if short else None

    @torch.no_grad()
    def update(self, fake: Tensor, real: Tensor) -> None:
        """Accumulate a batch. ``fake``: generator outputs, ``real``: targets (paired) or target-domain samples."""
        for name, x in (("fake", fake), ("real", real)):
            if not isinstance(x, Tensor) or x.ndim != 4:
                raise ValueError(
                    f"TranslationMetrics.update expects N x C x H x W tensors, got {name}={_shape(x)}"
                )
        if self.paired and fake.shape != real.shape:
            raise ValueError(
                f"paired metrics need fake and real of the same shape, got {tuple(fake.shape)} and {tuple(real.shape)}"
            )
        if self.paired and fake.shape[0] and (problem := self.size_problem(*fake.shape[-2:])):
            raise ValueError(problem)
        fake = self._take(fake.detach(), 0).to(self._device, torch.float32).clamp(-1.0, 1.0)
        real = self._take(real.detach(), 1).to(self._device, torch.float32).clamp(-1.0, 1.0)
        n_fake, n_real = fake.shape[0], real.shape[0]
        if n_fake == 0 and n_real == 0:
            return
        if self.paired and n_fake != n_real:  # pragma: no cover - same cap on both sides keeps them equal
            n = min(n_fake, n_real)
            fake, real, n_fake, n_real = fake[:n], real[:n], n, n
        self._seen[0] += n_fake
        self._seen[1] += n_real
        fake01, real01 = (fake + 1.0) / 2.0, (real + 1.0) / 2.0

        for name in ("l1", "psnr", "ssim"):
            if name in self._metrics and n_fake:
                self._metrics[name].update(fake01, real01)
        if "lpips" in self._metrics and n_fake:
            self._metrics["lpips"].update(_to_rgb(fake), _to_rgb(real))
        dist_metrics = [self._metrics[k] for k in ("fid", "kid") if k in self._metrics]
        if dist_metrics:
            fake_rgb, real_rgb = _to_rgb(fake01), _to_rgb(real01)
            try:
                # Same tensor object to FID then KID: the memo wrapper runs the network once per side.
                for x, is_real in ((fake_rgb, False), (real_rgb, True)):
                    if x.shape[0] and not (is_real and self._cached_real is not None):
                        for metric in dist_metrics:
                            metric.update(x, real=is_real)
            finally:
                if self._memo is not None:
                    self._memo.clear()
        self._count.update(n_fake, n_real)

    def compute(self) -> dict[str, float]:
        """Compute (and, under DDP, sync) all metrics. Keys: ``l1 psnr ssim lpips fid kid_mean kid_std`` (enabled ones).

        FID/KID need at least 2 images per side; with fewer they are reported as NaN with a warning.
        Returns ``{}`` (with a warning) if nothing was accumulated on any process.
        """
        n_fake, n_real = (int(v) for v in self._count.compute().tolist())
        if n_fake == 0 and n_real == 0:
            warnings.warn("TranslationMetrics.compute() called before any update; returning {}", stacklevel=2)
            return {}
        if self._cached_real is not None:
            n_real = self._cached_real
        out: dict[str, float] = {}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*was called before the ``update`` method.*")
            for name, metric in self._metrics.items():
                if name == "fid":
                    if min(n_fake, n_real) < 2:
                        _warn_few(name, n_fake, n_real)
                        out["fid"] = math.nan
                    else:
                        out["fid"] = float(metric.compute())
                elif name == "kid":
                    subset = min(self.kid_subset_size, n_fake, n_real)
                    if subset < 2:
                        _warn_few(name, n_fake, n_real)
                        out["kid_mean"], out["kid_std"] = math.nan, math.nan
                    else:
                        metric.subset_size = subset
                        kid_mean, kid_std = metric.compute()
                        # Subsets as large as both sides are all the same set: their spread says nothing (~1e-7).
                        spread = math.nan if subset == n_fake == n_real else float(kid_std)
                        out["kid_mean"], out["kid_std"] = float(kid_mean), spread
                else:
                    out[name] = float(metric.compute())
        self._keep_real_features(n_real)
        return out

    def _keep_real_features(self, n_real: int) -> None:
        """After a complete first pass: from now on FID/KID's reset keeps the real side, and update skips it."""
        distribution = [self._metrics[k] for k in ("fid", "kid") if k in self._metrics]
        if self.cache_real_features and distribution and self._cached_real is None and n_real >= 2:
            self._cached_real = n_real
            for metric in distribution:
                metric.reset_real_features = False

    def reset(self) -> None:
        for metric in self._all_metrics():
            metric.reset()
        if "kid" in self._metrics:
            self._metrics["kid"].subset_size = self.kid_subset_size
        if self._memo is not None:
            self._memo.clear()
        self._seen = [0, 0]

    def forward(self, fake: Tensor, real: Tensor) -> None:
        """Same as :meth:`update` (no per-batch values are returned)."""
        self.update(fake, real)


# The smallest image side (px) each paired metric takes. SSIM: its 11 x 11 window, reflection-padded by 5. LPIPS: the
# downsampling of its backbone (AlexNet: a stride-4 11 x 11 conv and 3 max pools; VGG16: 4 max pools).
MIN_SIDE = {"ssim": 6, "lpips:alex": 31, "lpips:vgg": 16}


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


def _warn_few(name: str, n_fake: int, n_real: int) -> None:
    warnings.warn(
        f"{name} needs at least 2 images per side, got fake={n_fake}, real={n_real}; reporting NaN",
        stacklevel=3,
    )


def build_metrics(cfg: Any, **overrides: Any) -> TranslationMetrics | None:
    """Instantiate ``cfg.collection`` of a ``conf/metrics/*.yaml`` group node; ``None`` when metrics are off.

    The collection may be a factory (``_partial_: true``, as in conf/metrics): ``overrides`` such as
    ``paired=False`` are applied when it is called.
    """
    if cfg is None:
        return None
    collection = cfg.get("collection") if hasattr(cfg, "get") else None
    if collection is None:
        return None
    from hydra.utils import instantiate

    built = instantiate(collection)
    if isinstance(built, TranslationMetrics):
        return built
    return built(**overrides)
