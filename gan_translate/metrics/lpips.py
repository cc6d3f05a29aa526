"""LPIPS without downloads.

torchmetrics' ``LearnedPerceptualImagePatchSimilarity`` builds its AlexNet/VGG16 backbone with torchvision's
pretrained weights, which downloads them when they are not cached. Here the LPIPS network is built with a random
backbone (``pnet_rand=True``: no download), the LPIPS linear heads are loaded from the copy that ships inside
torchmetrics, and the backbone is loaded from a local file.

Backbone lookup order for ``net`` in ``{"alex", "vgg"}``:

1. ``lpips_weights`` argument (config key ``metrics.lpips_weights``): a directory holding
   ``alexnet_features.pth`` / ``vgg16_features.pth`` (as written by ``python -m gan_translate.weights fetch
   lpips``) or one such file;
2. the environment variable ``GAN_TRANSLATE_LPIPS_WEIGHTS`` (same meaning);
3. the weights cache (``$GAN_TRANSLATE_CACHE`` or ``~/.cache/gan_translate``), where that command puts them;
4. torchvision's own ImageNet checkpoint if it is already in the torch hub cache;
5. otherwise a :class:`MissingWeightsError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from gan_translate.weights import MissingWeightsError, cache_dir, fetch_command, find_weights

from .features import explicit_weights

LPIPS_WEIGHTS_ENV = "GAN_TRANSLATE_LPIPS_WEIGHTS"
LPIPS_FETCH_COMMAND = fetch_command("lpips")  # both backbones, one download
_BACKBONES = {"alex": "alexnet", "vgg": "vgg16"}
_WEIGHTS_NAMES = {"alex": "lpips-alex", "vgg": "lpips-vgg"}  # gan_translate.weights names


def _lpips_missing_message(net: str, detail: str) -> str:
    fname = f"{_BACKBONES[net]}_features.pth"
    return (
        f"LPIPS ({net}) needs ImageNet backbone weights, and they are not available locally ({detail}). "
        f"Set `metrics.lpips_weights=DIR` (or {LPIPS_WEIGHTS_ENV}=DIR) to a folder containing {fname}; "
        f"or put it into the weights cache with `{LPIPS_FETCH_COMMAND}`. "
        "Or disable LPIPS with `metrics.collection.lpips=false`."
    )


def _torchvision_cached_backbone(net: str) -> Path | None:
    import torchvision

    weights_enum = {"alex": torchvision.models.AlexNet_Weights, "vgg": torchvision.models.VGG16_Weights}[net]
    name = weights_enum.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    return path if path.is_file() else None


def resolve_lpips_backbone(net: str, lpips_weights: str | os.PathLike | None = None) -> Path:
    """Path of a local state dict with torchvision ``features.N.*`` keys for the given LPIPS backbone."""
    if net not in _BACKBONES:
        raise ValueError(f"metrics.lpips_net must be one of {sorted(_BACKBONES)}, got {net!r}")
    fname = f"{_BACKBONES[net]}_features.pth"
    path = explicit_weights(
        lpips_weights, "metrics.lpips_weights", LPIPS_WEIGHTS_ENV, fname, lambda why: _lpips_missing_message(net, why)
    )
    if path is not None:
        return path
    for candidate in (find_weights(_WEIGHTS_NAMES[net]), _torchvision_cached_backbone(net)):
        if candidate is not None and candidate.is_file():
            return candidate
    raise MissingWeightsError(
        _lpips_missing_message(
            net,
            f"neither metrics.lpips_weights nor ${LPIPS_WEIGHTS_ENV} is set, nothing cached in {cache_dir()}",
        )
    )


def build_lpips_network(net: str = "alex", lpips_weights: str | os.PathLike | None = None) -> torch.nn.Module:
    """torchmetrics' LPIPS network (input in [-1, 1]) with a locally loaded backbone; frozen, eval mode."""
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    path = resolve_lpips_backbone(net, lpips_weights)
    # pnet_rand=True: torchvision backbone with weights=None (no download); pretrained=True: LPIPS linear heads
    # from the file shipped inside torchmetrics.
    lpips = _NoTrainLpips(net=net, pretrained=True, pnet_rand=True)
    try:
        source = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(
            f"Could not read LPIPS backbone file {path} (metrics.lpips_weights): {err}"
        ) from err
    if isinstance(source, dict) and "state_dict" in source and isinstance(source["state_dict"], dict):
        source = source["state_dict"]
    # lpips.net.sliceK.<idx>.<param> holds torchvision's features.<idx>.<param>.
    wanted: dict[str, Tensor] = {}
    missing: list[str] = []
    for name, _ in lpips.net.named_parameters():
        _slice, idx, pname = name.split(".", 2)
        key = f"features.{idx}.{pname}"
        if key in source:
            wanted[name] = source[key]
        else:
            missing.append(key)
    if missing:
        raise RuntimeError(
            f"LPIPS backbone file {path} (metrics.lpips_weights) lacks {len(missing)} keys for net={net!r}, "
            f"e.g. {missing[:3]}; expected torchvision {_BACKBONES[net]} 'features.N.weight/bias' keys."
        )
    try:
        lpips.net.load_state_dict(wanted, strict=True)
    except RuntimeError as err:
        raise RuntimeError(f"LPIPS backbone file {path} does not match net={net!r}: {err}") from err
    lpips.requires_grad_(False)
    lpips.eval()
    return lpips


class OfflineLPIPS(Metric):
    """Mean LPIPS over images, images in [-1, 1]; same network as torchmetrics' LPIPS, but never downloads.

    States are a sum and a count (``dist_reduce_fx="sum"``), so DDP sync is handled by torchmetrics.
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    sum_scores: Tensor
    total: Tensor

    def __init__(
        self, net: str = "alex", lpips_weights: str | os.PathLike | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.net = build_lpips_network(net, lpips_weights)
        self.add_state("sum_scores", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, img1: Tensor, img2: Tensor) -> None:
        if img1.shape != img2.shape or img1.ndim != 4 or img1.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two N x 3 x H x W tensors, got {tuple(img1.shape)} and {tuple(img2.shape)}"
            )
        scores = self.net(img1.float().clamp(-1, 1), img2.float().clamp(-1, 1)).reshape(img1.shape[0])
        self.sum_scores += scores.double().sum()
        self.total += img1.shape[0]

    def compute(self) -> Tensor:
        return (self.sum_scores / self.total).float()
