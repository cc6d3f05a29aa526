"""Download and safely extract the standard public pix2pix / CycleGAN datasets.

``download_dataset("facades", "datasets", kind="pix2pix")`` produces ``datasets/facades/{train,val,test}``;
``download_dataset("horse2zebra", "datasets")`` produces ``datasets/horse2zebra/{trainA,trainB,testA,testB}``.

Steps (nothing appears at ``ROOT/NAME`` unless every step succeeds):

1. If ``ROOT/NAME`` already exists and is not empty, skip (nothing is downloaded).
2. Stream the archive with :mod:`urllib` into a temporary file inside ``ROOT`` while computing its SHA256
   (``file://`` URLs work too; ``archive=`` uses a local file directly and never copies or deletes it).
3. Verify the SHA256 against ``sha256=`` or the :data:`KNOWN_SHA256` table; when neither is known the
   computed digest is printed and reported as *not verified*.
4. Extract into a temporary directory inside ``ROOT``. Every member is checked first: absolute paths,
   ``..`` components, links pointing outside the destination and device/FIFO members are rejected
   (tar additionally uses ``filter="data"`` where Python supports it).
5. Rename the extracted dataset folder to ``ROOT/NAME`` (atomic on one filesystem). A single top-level
   folder in the archive (``facades/...``) is unwrapped. Temporary files are always removed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

PIX2PIX_URL = "http://efrosgans.eecs.berkeley.edu/pix2pix/datasets/{name}.tar.gz"
CYCLEGAN_URL = "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/{name}.zip"

PIX2PIX_DATASETS = ("facades", "cityscapes", "maps", "edges2shoes", "edges2handbags", "night2day")
CYCLEGAN_DATASETS = (
    "horse2zebra",
    "apple2orange",
    "summer2winter_yosemite",
    "monet2photo",
    "cezanne2photo",
    "ukiyoe2photo",
    "vangogh2photo",
    "maps",
    "cityscapes",
    "facades",
    "iphone2dslr_flower",
)
KINDS = ("pix2pix", "cyclegan")

# URL -> expected SHA256 (lower-case hex). Empty: the digests could not be fetched when this was written
# (offline). Add entries as they are confirmed; until then the computed digest is printed, not verified.
KNOWN_SHA256: dict[str, str] = {}

# Top-level folder names that are part of a dataset layout and must not be unwrapped.
_LAYOUT_DIRS = {"train", "val", "test", "trainA", "trainB", "valA", "valB", "testA", "testB"}
_CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """Download, checksum or extraction failure (the message names the URL / archive / member)."""


@dataclass(frozen=True)
class DatasetSource:
    name: str
    kind: str  # "pix2pix", "cyclegan" or "custom"
    url: str


def available_datasets() -> dict[str, tuple[str, ...]]:
    return {"pix2pix": PIX2PIX_DATASETS, "cyclegan": CYCLEGAN_DATASETS}


def resolve_source(name: str, kind: str | None = None) -> DatasetSource:
    """Standard URL of a known dataset. Names known to both kinds (maps, cityscapes, facades) need ``kind``."""
    if kind is not None and kind not in KINDS:
        raise DownloadError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    in_kinds = [k for k, names in available_datasets().items() if name in names]
    if kind is not None:
        if kind not in in_kinds:
            names = ", ".join(available_datasets()[kind])
            raise DownloadError(f"{name!r} is not a known {kind} dataset; known: {names}")
        in_kinds = [kind]
    if not in_kinds:
        listing = "; ".join(f"{k}: {', '.join(v)}" for k, v in available_datasets().items())
        raise DownloadError(
            f"unknown dataset {name!r} (pass --url or --archive for others). Known - {listing}"
        )
    if len(in_kinds) > 1:
        raise DownloadError(
            f"{name!r} exists as both a pix2pix (aligned A|B) and a CycleGAN (unaligned) dataset; "
            "pass kind='pix2pix' or kind='cyclegan' (--kind)"
        )
    template = PIX2PIX_URL if in_kinds[0] == "pix2pix" else CYCLEGAN_URL
    return DatasetSource(name=name, kind=in_kinds[0], url=template.format(name=name))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_url(url: str, dest: Path, timeout: float = 60.0, log: Callable[[str], None] | None = None) -> str:
    """Stream ``url`` into ``dest`` (overwritten); returns the SHA256 of the bytes written."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "gan_translate-dataset-downloader"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, next_report = 0, 0.1
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if log is not None and total and done / total >= next_report:
                    log(f"  {done / 2**20:.1f} / {total / 2**20:.1f} MiB")
                    next_report += 0.1
            if total and done != total:
                raise DownloadError(f"incomplete download from {url}: got {done} of {total} bytes")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from exc
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------
# Safe extraction
# --------------------------------------------------------------------------------------------------------


def _check_member_path(name: str, archive: Path) -> PurePosixPath:
    """Reject absolute names, drive letters and ``..`` components; return the normalised relative path."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise DownloadError(f"unsafe member {name!r} in {archive}: absolute path")
    parts = [p for p in posix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise DownloadError(f"unsafe member {name!r} in {archive}: '..' path component (path traversal)")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _inside(base: Path, target: Path) -> bool:
    base = base.resolve()
    target = target.resolve()
    return target == base or base in target.parents


def _check_tar_members(tar: tarfile.TarFile, archive: Path, dest: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for m in members:
        rel = _check_member_path(m.name, archive)
        if not _inside(dest, dest / rel):
            raise DownloadError(f"unsafe member {m.name!r} in {archive}: escapes the destination")
        if m.ischr() or m.isblk() or m.isfifo() or m.isdev():
            raise DownloadError(f"unsafe member {m.name!r} in {archive}: device or FIFO")
        if m.issym():
            link = m.linkname.replace("\\", "/")
            if link.startswith("/") or not _inside(dest, dest / rel.parent / link):
                raise DownloadError(
                    f"unsafe member {m.name!r} in {archive}: symlink to {m.linkname!r} outside"
                )
        elif m.islnk():
            link_rel = _check_member_path(m.linkname, archive)
            if not _inside(dest, dest / link_rel):
                raise DownloadError(
                    f"unsafe member {m.name!r} in {archive}: hard link to {m.linkname!r} outside"
                )
    return members


def safe_extract(archive: str | Path, dest: str | Path) -> None:
    """Extract a .tar/.tar.gz/.tgz/.tar.bz2/.tar.xz or .zip archive into ``dest`` after checking members."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                rel = _check_member_path(info.filename, archive)
                if not _inside(dest, dest / rel):
                    raise DownloadError(
                        f"unsafe member {info.filename!r} in {archive}: escapes the destination"
                    )
            try:
                zf.extractall(dest, members=infos)
            except (zipfile.BadZipFile, OSError) as exc:
                raise DownloadError(f"cannot extract {archive}: {exc}") from exc
        return
    try:
        is_tar = tarfile.is_tarfile(archive)
    except OSError as exc:
        raise DownloadError(f"cannot read archive {archive}: {exc}") from exc
    if not is_tar:
        raise DownloadError(f"{archive} is neither a zip nor a tar archive")
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = _check_tar_members(tar, archive, dest)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # pragma: no cover - Python without extraction filters; members were checked above
                tar.extractall(dest, members=members)
    except DownloadError:
        raise
    except (tarfile.TarError, OSError) as exc:
        raise DownloadError(f"cannot extract {archive}: {exc}") from exc


# --------------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------------


def _validate_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise DownloadError(f"invalid dataset name {name!r}: must be a plain folder name")


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise DownloadError(f"invalid SHA256 {sha256!r}: expected 64 hexadecimal characters")
    return value


def download_dataset(
    name: str,
    root: str | Path,
    *,
    kind: str | None = None,
    url: str | None = None,
    archive: str | Path | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Fetch dataset ``name`` into ``root/name`` and return that path (see the module docstring).

    ``url`` overrides the standard URL (any scheme urllib supports, e.g. ``file://``; a plain existing path
    is treated as ``archive``). ``archive`` extracts a local archive file instead of downloading.
    """
    _validate_name(name)
    expected = _normalise_sha256(sha256)
    if url is not None and archive is not None:
        raise DownloadError("pass either url or archive, not both")
    if url is not None and not urllib.parse.urlparse(url).scheme and Path(url).exists():
        archive, url = url, None
    if archive is not None:
        archive = Path(archive)
        if not archive.is_file():
            raise DownloadError(f"archive file not found: {archive}")
        source = DatasetSource(name=name, kind="custom", url=archive.resolve().as_uri())
    elif url is not None:
        source = DatasetSource(name=name, kind="custom", url=url)
    else:
        source = resolve_source(name, kind)
    if expected is None:
        expected = KNOWN_SHA256.get(source.url)

    root = Path(root)
    dest = root / name
    if dest.is_dir() and any(dest.iterdir()):
        if log is not None:
            log(f"{dest} already exists and is not empty; skipping download")
        return dest
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)

    tmp_file: Path | None = None
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}.extract-", dir=root))
    try:
        if archive is not None:
            archive_path = archive
            if log is not None:
                log(f"using local archive {archive}")
            digest = sha256_file(archive)
        else:
            fd, tmp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=root)
            os.close(fd)
            tmp_file = Path(tmp_name)
            if log is not None:
                log(f"downloading {source.url}")
            digest = fetch_url(source.url, tmp_file, timeout=timeout, log=log)
            archive_path = tmp_file

        if expected is not None:
            if digest != expected:
                raise DownloadError(
                    f"SHA256 mismatch for {source.url}: expected {expected}, got {digest}; nothing was extracted"
                )
            if log is not None:
                log(f"sha256 {digest} verified")
        elif log is not None:
            log(f"sha256 {digest} (NOT verified: no known checksum; pass --sha256 to verify)")

        extract_root = tmp_dir / "x"
        safe_extract(archive_path, extract_root)
        shutil.rmtree(extract_root / "__MACOSX", ignore_errors=True)
        entries = list(extract_root.iterdir())
        if not entries:
            raise DownloadError(f"archive {source.url} is empty")
        content = extract_root
        if len(entries) == 1 and entries[0].is_dir() and entries[0].name not in _LAYOUT_DIRS:
            content = entries[0]  # unwrap the archive's single top-level folder (e.g. facades/)
        if dest.is_dir():
            dest.rmdir()  # empty (checked above)
        os.rename(content, dest)
    finally:
        if tmp_file is not None:
            tmp_file.unlink(missing_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
    if log is not None:
        log(f"{source.kind} dataset {name!r} ready at {dest}")
    return dest
