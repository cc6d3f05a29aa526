"""Feature networks for FID / KID, resolved strictly offline.

Every extractor here follows the torchmetrics convention for custom ``feature=`` modules used with
``normalize=True``: input is a float tensor ``N x 3 x H x W`` in ``[0, 1]``, output is ``N x num_features``,
and the module exposes an integer ``num_features`` (torchmetrics reads it instead of probing the network).

Nothing in this module downloads anything. Where the FID Inception weights come from, in order:

1. the ``fid_weights`` argument (config key ``metrics.fid_weights``);
2. the environment variable ``GAN_TRANSLATE_FID_WEIGHTS``;
3. the weights cache: ``$GAN_TRANSLATE_CACHE/fid_inception_v3.pt`` or ``~/.cache/gan_translate/...``, where
   ``python -m gan_translate.weights fetch fid`` puts it;
4. torch-fidelity's Inception weights, only if torch-fidelity is installed and its weight file is already in
   the torch hub cache (``$TORCH_HOME/hub/checkpoints``);
5. otherwise a :class:`MissingWeightsError` explaining how to get the file.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_translate.weights import (
    MissingWeightsError,
    NamedWeightsMissingError,
    cache_dir,
    fetch_command,
    find_weights,
    load_torchscript,
)

FID_WEIGHTS_ENV = "GAN_TRANSLATE_FID_WEIGHTS"
FID_WEIGHTS_FILENAME = "fid_inception_v3.pt"
FID_FETCH_COMMAND = fetch_command("fid")
# torch-fidelity's release asset name; it lands in the torch hub checkpoint cache when torch-fidelity downloads it.
_TORCH_FIDELITY_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def _fid_missing_message(detail: str) -> str:
    return (
        f"FID/KID need the FID Inception-v3 weights, and they are not available locally ({detail}). "
        f"Set `metrics.fid_weights=PATH` (or the environment variable {FID_WEIGHTS_ENV}=PATH) to a TorchScript "
        f"file `{FID_WEIGHTS_FILENAME}`, or put it into the weights cache with `{FID_FETCH_COMMAND}`. "
        "Or disable them with `metrics.collection.fid=false metrics.collection.kid=false`."
    )


def explicit_weights(
    value: str | os.PathLike | None, key: str, env_var: str, filename: str, missing: Callable[[str], str]
) -> Path | None:
    """The weights file named by a setting (``key``) or, when that is unset, by ``env_var``; ``None`` if neither.

    A folder means ``folder/filename``. A named file that does not exist is an error (``missing`` builds its
    message) rather than a silent fallback to a cache.
    """
    source = key
    if value is None or str(value) == "":
        value, source = os.environ.get(env_var, ""), f"${env_var}"
    if value is None or str(value) == "":
        return None
    path = Path(os.path.expanduser(str(value)))
    if path.is_dir():
        path = path / filename
    if not path.is_file():
        raise NamedWeightsMissingError(missing(f"{source}={value!s}: no such file {path}"))
    return path


def resolve_fid_weights(fid_weights: str | os.PathLike | None = None) -> Path | None:
    """Return the path of the FID TorchScript file to use, or ``None`` if none is configured or cached.

    An explicitly given path (argument or environment variable) that does not exist is an error rather than
    silently falling back. A directory is accepted if it contains ``fid_inception_v3.pt``.
    """
    path = explicit_weights(fid_weights, "metrics.fid_weights", FID_WEIGHTS_ENV, FID_WEIGHTS_FILENAME,
                            _fid_missing_message)
    if path is not None:
        return path
    return find_weights("fid")


def _torch_fidelity_cached_weights() -> Path | None:
    """torch-fidelity's Inception weight file if torch-fidelity is importable and the file is already cached."""
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as tfi  # noqa: F401
    except ImportError:
        return None
    url = getattr(tfi, "URL_INCEPTION_V3", "") or ""
    name = url.rsplit("/", 1)[-1] or _TORCH_FIDELITY_INCEPTION_FILE
    path = Path(torch.hub.get_dir()) / "checkpoints" / name
    return path if path.is_file() else None


class InceptionFeatureExtractor(nn.Module):
    """The standard FID Inception-v3 (pool3, 2048-d) from a local TorchScript file.

    The TorchScript network expects ``N x 3 x 299 x 299`` floats in ``[-1, 1]``. This wrapper takes torchmetrics'
    ``normalize=True`` input (float in ``[0, 1]``, any size), resizes to 299x299 with bilinear interpolation
    (``align_corners=False``, no antialiasing, as in pytorch-fid) and rescales to ``[-1, 1]``.
    The network is frozen and always stays in eval mode.
    """

    INPUT_SIZE = 299

    def __init__(self, weights_path: str | os.PathLike, num_features: int = 2048) -> None:
        super().__init__()
        path = Path(weights_path)
        if not path.is_file():
            raise MissingWeightsError(_fid_missing_message(f"no such file {path}"))
        try:
            net = load_torchscript(path)
        except Exception as err:  # noqa: BLE001 - re-raised with the file named
            raise RuntimeError(
                f"Could not load FID Inception TorchScript file {path} (metrics.fid_weights): {err}"
            ) from err
        self.net = net
        self.num_features = int(num_features)
        self.weights_path = str(path)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:  # noqa: ARG002 - always eval
        return super().train(False)

    # A TorchScript module does not pickle, and DDP's spawn launcher pickles the LightningModule with its metrics:
    # the copy carries the file's path and loads the network again.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_modules"] = {name: module for name, module in self._modules.items() if name != "net"}
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.net = load_torchscript(self.weights_path)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"InceptionFeatureExtractor expects N x 3 x H x W images, got {tuple(x.shape)}")
        x = x.float()
        if x.shape[-2:] != (self.INPUT_SIZE, self.INPUT_SIZE):
            x = F.interpolate(
                x, size=(self.INPUT_SIZE, self.INPUT_SIZE), mode="bilinear", align_corners=False
            )
        x = x * 2.0 - 1.0
        feats = self.net(x)
        return feats.reshape(x.shape[0], -1)


class _TorchFidelityInception(nn.Module):
    """torchmetrics' own Inception (needs torch-fidelity), built from an already-cached weight file only."""

    num_features = 2048

    def __init__(self, weights_path: Path) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(
            name="inception-v3-compat",
            features_list=["2048"],
            feature_extractor_weights_path=str(weights_path),
        )
        self.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        # torch-fidelity wants uint8 in [0, 255]; input follows the normalize=True convention ([0, 1] floats).
        return self.net((x.clamp(0, 1) * 255).to(torch.uint8))


def build_fid_feature_extractor(fid_weights: str | os.PathLike | None = None) -> nn.Module:
    """Build the FID/KID feature network from local files only (see module docstring for the lookup order)."""
    path = resolve_fid_weights(fid_weights)
    if path is not None:
        return InceptionFeatureExtractor(path)
    cached = _torch_fidelity_cached_weights()
    if cached is not None:
        return _TorchFidelityInception(cached)
    raise MissingWeightsError(
        _fid_missing_message(
            f"neither metrics.fid_weights nor ${FID_WEIGHTS_ENV} is set, and nothing is cached at "
            f"{cache_dir() / FID_WEIGHTS_FILENAME}"
        )
    )


class TinyFeatureExtractor(nn.Module):
    """A tiny, randomly initialised (seeded) conv net usable as a FID/KID ``feature=`` module.

    FOR TESTS AND SMOKE RUNS ONLY: its features are not Inception features, so the resulting "FID"/"KID" values
    are not comparable to published numbers. It lets the FID/KID plumbing run without any weight file.
    Input: float ``N x 3 x H x W`` in ``[0, 1]`` (any H, W >= 4); output ``N x num_features``.
    """

    def __init__(self, num_features: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.num_features = int(num_features)
        gen = torch.Generator().manual_seed(seed)
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(32, self.num_features, 3, padding=1),
        )
        with torch.no_grad():  # unit-scale init so features (and FID/KID values) stay O(1)
            for p in self.body.parameters():
                if p.ndim > 1:
                    p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: Tensor) -> Tensor:
        x = x.float() * 2.0 - 1.0
        return self.body(x).mean(dim=(2, 3))


class _MemoFeatures(nn.Module):
    """Wraps a feature extractor so FID and KID, fed the very same tensor, run the network only once."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor
        num = getattr(extractor, "num_features", None)
        if isinstance(num, Tensor):
            num = int(num.item())
        if num is None:
            with torch.no_grad():
                probe = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
                param = next(iter(extractor.parameters()), None)
                if param is not None:
                    probe = probe.to(param.device)
                num = int(extractor(probe).shape[-1])
        self.num_features = int(num)
        self._key: tuple | None = None
        self._value: Tensor | None = None

    def clear(self) -> None:
        self._key, self._value = None, None

    def forward(self, x: Tensor) -> Tensor:
        key = (id(x), x._version, x.data_ptr(), tuple(x.shape), x.device)
        if self._key == key and self._value is not None:
            return self._value
        value = self.extractor(x)
        self._key, self._value = key, value
        return value
