"""Tests of the dataset tools (combine / edges / colorization / download). Everything is generated in tmp_path."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_translate.data import tools
from gan_translate.data.datasets import DataError
from gan_translate.data.download import DownloadError, download_dataset, resolve_source, safe_extract
from gan_translate.data.make_dataset import main

REPO_ROOT = Path(__file__).resolve().parents[1]


def solid(path: Path, color, size=(32, 32), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


def rectangle_photo(path: Path, size=(64, 64)) -> Path:
    """Dark blue background with a bright orange rectangle: sharp boundaries at known places."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = (20, 30, 120)
    arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = (250, 180, 40)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def halves(path: Path, square: bool = True) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(Image.open(path).convert("RGB"))
    h, w, _ = arr.shape
    assert w % 2 == 0
    if square:
        assert w == 2 * h
    return arr[:, : w // 2], arr[:, w // 2 :]


# ---------------------------------------------------------------------------------------------- combine


def test_combine_pairs_by_name(tmp_path):
    a, b, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    solid(a / "x.png", (255, 0, 0))
    solid(b / "x.jpg", (0, 0, 255))  # different extension, same stem
    solid(a / "y.png", (0, 255, 0))
    solid(b / "y.png", (10, 20, 30))
    solid(a / "z.png", 128, mode="L")  # grayscale -> RGB
    solid(b / "z.png", (0, 255, 0, 255), mode="RGBA")  # RGBA -> RGB
    report = tools.combine_folders(a, b, out, split="train", log=None)
    assert report.counts == {"train": 3}
    assert sorted(p.name for p in (out / "train").iterdir()) == ["x.png", "y.png", "z.png"]

    left, right = halves(out / "train" / "x.png")
    assert left.shape == (32, 32, 3)
    assert (left == (255, 0, 0)).all()
    assert np.abs(right.astype(int) - (0, 0, 255)).max() <= 3  # B was a JPEG
    left, right = halves(out / "train" / "y.png")
    assert (left == (0, 255, 0)).all() and (right == (10, 20, 30)).all()
    left, right = halves(out / "train" / "z.png")
    assert (left == 128).all() and (right == (0, 255, 0)).all()


def test_combine_resizes_b_to_a_and_resize_to(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    solid(a / "p.png", (200, 0, 0), size=(40, 30))
    solid(b / "p.png", (0, 200, 0), size=(80, 60))
    report = tools.combine_folders(a, b, tmp_path / "o1", log=None)
    assert report.resized_b == 1
    left, right = halves(tmp_path / "o1" / "train" / "p.png", square=False)
    assert left.shape == right.shape == (30, 40, 3)  # B (60x80) resized to A's 30x40
    assert (left == (200, 0, 0)).all() and (right == (0, 200, 0)).all()

    tools.combine_folders(a, b, tmp_path / "o2", split="val", size=tools.parse_size("16x24"), log=None)
    assert Image.open(tmp_path / "o2" / "val" / "p.png").size == (48, 16)


def test_combine_unmatched_names(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    solid(a / "common.png", (1, 2, 3))
    solid(b / "common.png", (4, 5, 6))
    solid(a / "only_a.png", (1, 1, 1))
    solid(b / "only_b.png", (2, 2, 2))
    with pytest.raises(tools.DatasetToolError, match="only_a.png.*only_b.png"):
        tools.combine_folders(a, b, tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()  # nothing written

    report = tools.combine_folders(a, b, tmp_path / "out", skip_unmatched=True, log=None)
    assert report.counts == {"train": 1} and report.skipped == ["only_a", "only_b"]


def test_clear_errors(tmp_path):
    with pytest.raises(DataError, match="folder A: folder .*missing does not exist"):
        tools.combine_folders(tmp_path / "missing", tmp_path, tmp_path / "out", log=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="photo folder: folder .*empty contains no images"):
        tools.make_colorization_dataset(tmp_path / "empty", tmp_path / "out", log=None)
    photos = tmp_path / "photos"
    solid(photos / "good.png", (1, 2, 3))
    (photos / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(tools.DatasetToolError, match="broken.jpg"):
        tools.make_edges_dataset(photos, tmp_path / "out", log=None)
    assert not (tmp_path / "out").exists()
    (photos / "broken.jpg").unlink()
    solid(photos / "good.jpg", (1, 2, 3))  # same stem as good.png
    with pytest.raises(DataError, match="good.png / good.jpg|good.jpg / good.png"):
        tools.make_edges_dataset(photos, tmp_path / "out", log=None)
    with pytest.raises(tools.DatasetToolError, match="invalid size"):
        tools.parse_size("12xfoo")


def truncated_jpeg(path: Path, size=(64, 64)) -> Path:
    """A JPEG cut in half: its header reads, decoding fails (what an interrupted copy leaves)."""
    noise = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)  # data much larger than the header
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("tool", ["combine", "edges", "colorization"])
def test_undecodable_file_leaves_no_partial_output(tmp_path, tool):
    """A truncated JPEG passes the header check and fails on decoding: every bad file is named, nothing is
    written (before, the pairs decoded so far stayed and the rerun was refused as 'output folder not empty')."""
    photos, b, out = tmp_path / "photos", tmp_path / "B", tmp_path / "out"
    for name in ("a1", "a2", "z9"):
        rectangle_photo(photos / f"{name}.png")
        solid(b / f"{name}.png", (0, 0, 255), size=(64, 64))
    truncated_jpeg(photos / "m5.jpg")
    truncated_jpeg(photos / "m6.jpg")
    solid(b / "m5.png", (0, 0, 255), size=(64, 64))
    solid(b / "m6.png", (0, 0, 255), size=(64, 64))

    def build(overwrite=False):
        if tool == "combine":
            return tools.combine_folders(photos, b, out, overwrite=overwrite, log=None)
        make = tools.make_edges_dataset if tool == "edges" else tools.make_colorization_dataset
        return make(photos, out, size=32, val_fraction=0.2, test_fraction=0.2, overwrite=overwrite, log=None)

    with pytest.raises(tools.DatasetToolError, match=r"2 image\(s\) could not be decoded.*m5\.jpg.*m6\.jpg"):
        build()
    assert not out.exists()  # not even an empty folder or the staging folder
    (out / "train").mkdir(parents=True)
    (out / "train" / "keep.png").write_bytes(b"earlier work")
    with pytest.raises(tools.DatasetToolError, match="could not be decoded"):
        build(overwrite=True)
    assert sorted(p.name for p in out.rglob("*")) == ["keep.png", "train"]  # the earlier folder is untouched

    (out / "train" / "keep.png").unlink()
    for name in ("m5", "m6"):
        (photos / f"{name}.jpg").unlink()
        rectangle_photo(photos / f"{name}.png")
    report = build()  # the rerun needs no cleanup
    assert report.total == 5
    assert sorted(p.stem for p in out.rglob("*.png")) == ["a1", "a2", "m5", "m6", "z9"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_output_folder_that_is_an_input_is_refused(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    solid(a / "x.png", (255, 0, 0))
    solid(b / "x.png", (0, 0, 255))
    for out, split, source in ((tmp_path, "A", a), (tmp_path / "B" / ".." / "", "B", b)):
        with pytest.raises(tools.DatasetToolError, match=f"is the input folder {source}"):
            tools.combine_folders(a, b, out, split=split, overwrite=True, log=None)
    assert np.asarray(Image.open(a / "x.png")).tolist() == np.asarray(Image.new("RGB", (32, 32), (255, 0, 0))).tolist()
    photos = tmp_path / "data" / "train"
    rectangle_photo(photos / "p.png")
    with pytest.raises(tools.DatasetToolError, match="is the input folder"):
        tools.make_edges_dataset(photos, tmp_path / "data", test_fraction=0, val_fraction=0, overwrite=True, log=None)
    assert Image.open(photos / "p.png").size == (64, 64)  # the photo was not replaced by a pair
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "val").write_text("a file where a split folder goes")
    with pytest.raises(tools.DatasetToolError, match="exists and is not a directory: .*val"):
        tools.make_edges_dataset(photos, tmp_path / "out", val_fraction=0.5, log=None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["val"]


# ---------------------------------------------------------------------------------------------- edges / colorization


def test_edges_pairs(tmp_path):
    src = tmp_path / "photos"
    rectangle_photo(src / "rect.png", size=(64, 64))
    rectangle_photo(src / "wide.png", size=(96, 48))
    report = tools.make_edges_dataset(
        src, tmp_path / "out", size=64, sigma=1.0, val_fraction=0.0, test_fraction=0.0, log=None
    )
    assert report.counts == {"train": 2, "val": 0, "test": 0}
    assert not (tmp_path / "out" / "val").exists()

    left, right = halves(tmp_path / "out" / "train" / "rect.png")
    photo = np.asarray(Image.open(src / "rect.png"))
    assert (right == photo).all()  # already 64x64: unchanged
    assert set(np.unique(left)) <= {0, 255} and (left[..., 0] == left[..., 1]).all()
    black = left[..., 0] == 0
    assert black.mean() < 0.2  # mostly white
    assert black.sum() >= 4 * 20  # the rectangle outline is found
    ys, xs = np.nonzero(black)
    # every edge pixel lies near the rectangle boundary (rows/cols 16 and 48)
    near = (np.minimum(np.abs(ys - 16), np.abs(ys - 48)) <= 2) | (
        np.minimum(np.abs(xs - 16), np.abs(xs - 48)) <= 2
    )
    assert near.all()
    assert not black[30:34, 30:34].any() and not black[:8, :8].any()  # flat regions have no edges

    left, right = halves(tmp_path / "out" / "train" / "wide.png")
    expected = np.asarray(
        Image.open(src / "wide.png").convert("RGB").resize((64, 64), Image.Resampling.BICUBIC)
    )
    assert right.shape == (64, 64, 3) and (right == expected).all()


def test_colorization_pairs(tmp_path):
    src = tmp_path / "photos"
    rectangle_photo(src / "a.png", size=(40, 40))
    solid(src / "b.jpg", (200, 40, 40), size=(50, 30))
    report = tools.make_colorization_dataset(
        src, tmp_path / "out", size=32, val_fraction=0.0, test_fraction=0.0, log=None
    )
    assert report.total == 2
    for name in ("a.png", "b.png"):
        left, right = halves(tmp_path / "out" / "train" / name)
        assert left.shape == (32, 32, 3)
        assert (left[..., 0] == left[..., 1]).all() and (left[..., 1] == left[..., 2]).all()
        assert np.abs(right[..., 0].astype(int) - right[..., 2].astype(int)).max() > 50  # colour
        gray = np.asarray(Image.fromarray(right).convert("L"))
        assert (left[..., 0] == gray).all()


def test_split_fractions_deterministic(tmp_path):
    names = [f"img{i:03d}" for i in range(50)]
    s1 = tools.split_names(names, val_fraction=0.2, test_fraction=0.1, seed=7)
    assert {k: len(v) for k, v in s1.items()} == {"train": 35, "val": 10, "test": 5}
    assert sorted(s1["train"] + s1["val"] + s1["test"]) == names
    assert tools.split_names(list(reversed(names)), 0.2, 0.1, seed=7) == s1  # input order irrelevant
    assert tools.split_names(names, 0.2, 0.1, seed=8) != s1
    with pytest.raises(tools.DatasetToolError, match="< 1"):
        tools.split_names(names, 0.5, 0.5)

    src = tmp_path / "photos"
    for i in range(10):
        solid(src / f"p{i}.png", (i * 20, 100, 50), size=(8, 8))
    outs = []
    for run in ("r1", "r2"):
        report = tools.make_colorization_dataset(
            src, tmp_path / run, size=8, val_fraction=0.2, test_fraction=0.3, seed=3, log=None
        )
        assert report.counts == {"train": 5, "val": 2, "test": 3}
        outs.append({s: sorted(p.name for p in (tmp_path / run / s).iterdir()) for s in tools.SPLITS})
    assert outs[0] == outs[1]
    assert outs[0]["test"] == [f"{n}.png" for n in s_for(src, 3)["test"]]
    # refuses to write into a non-empty output unless overwrite
    with pytest.raises(tools.DatasetToolError, match="not empty"):
        tools.make_colorization_dataset(src, tmp_path / "r1", size=8, log=None)


def s_for(src: Path, seed: int) -> dict[str, list[str]]:
    return tools.split_names(sorted(p.stem for p in src.iterdir()), 0.2, 0.3, seed=seed)


# ---------------------------------------------------------------------------------------------- download


def make_tar(path: Path, members: dict[str, bytes], top: str = "toy") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_download_tar_via_file_url(tmp_path, capsys):
    archive = make_tar(tmp_path / "toy.tar.gz", {"train/1.jpg": b"one", "test/2.jpg": b"two"})
    root = tmp_path / "datasets"
    dest = download_dataset("toy", root, url=archive.as_uri())
    assert dest == root / "toy"
    assert (dest / "train" / "1.jpg").read_bytes() == b"one" and (
        dest / "test" / "2.jpg"
    ).read_bytes() == b"two"
    assert [p.name for p in root.iterdir()] == ["toy"]  # temp files removed, top folder unwrapped
    assert "NOT verified" in capsys.readouterr().out
    # second call: already present -> skipped, even with a wrong checksum and a missing archive
    download_dataset("toy", root, archive=archive, sha256="0" * 64)
    assert "skipping" in capsys.readouterr().out


def test_download_zip_archive_with_checksum(tmp_path, capsys):
    archive = make_zip(tmp_path / "u.zip", {"u2v/trainA/a.png": b"a", "u2v/trainB/b.png": b"b"})
    import hashlib

    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    dest = download_dataset("u2v", tmp_path / "root", archive=archive, sha256=digest.upper())
    assert (dest / "trainA" / "a.png").read_bytes() == b"a" and (dest / "trainB" / "b.png").exists()
    assert "verified" in capsys.readouterr().out
    assert archive.exists()  # a local archive is never deleted


def test_download_checksum_mismatch_leaves_nothing(tmp_path):
    archive = make_tar(tmp_path / "toy.tar.gz", {"train/1.jpg": b"one"})
    root = tmp_path / "root"
    with pytest.raises(DownloadError, match="SHA256 mismatch"):
        download_dataset("toy", root, url=archive.as_uri(), sha256="ab" * 32, log=None)
    assert list(root.iterdir()) == []  # no dataset folder, no temp download, no temp extraction dir
    with pytest.raises(DownloadError, match="SHA256 mismatch"):
        download_dataset("toy", root, archive=archive, sha256="ab" * 32, log=None)
    assert list(root.iterdir()) == []
    with pytest.raises(DownloadError, match="invalid SHA256"):
        download_dataset("toy", root, archive=archive, sha256="xyz", log=None)


@pytest.mark.parametrize("kind", ["tar", "zip", "tar-symlink", "zip-absolute"])
def test_download_rejects_path_traversal(tmp_path, kind):
    if kind == "tar":
        archive = make_tar(tmp_path / "evil.tar.gz", {"ok.txt": b"ok", "../../evil.txt": b"pwned"})
    elif kind == "zip":
        archive = make_zip(tmp_path / "evil.zip", {"evil/ok.txt": b"ok", "../evil.txt": b"pwned"})
    elif kind == "tar-symlink":
        archive = tmp_path / "evil.tar"
        with tarfile.open(archive, "w") as tar:
            info = tarfile.TarInfo("evil/link")
            info.type, info.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
            tar.addfile(info)
    else:
        archive = tmp_path / "evil.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr(zipfile.ZipInfo("/tmp/evil.txt"), b"pwned")
    root = tmp_path / "root" / "sub"
    with pytest.raises(DownloadError, match="unsafe member"):
        download_dataset("evil", root, archive=archive, log=None)
    assert list(root.iterdir()) == []
    assert not list(tmp_path.rglob("evil.txt"))
    with pytest.raises(DownloadError, match="unsafe member"):
        safe_extract(archive, tmp_path / "direct")
    assert not list(tmp_path.rglob("evil.txt"))


def test_resolve_source():
    assert resolve_source("facades", "pix2pix").url.endswith("/pix2pix/datasets/facades.tar.gz")
    assert (
        resolve_source("horse2zebra").url
        == "http://efrosgans.eecs.berkeley.edu/cyclegan/datasets/horse2zebra.zip"
    )
    with pytest.raises(DownloadError, match="--kind"):
        resolve_source("maps")
    with pytest.raises(DownloadError, match="unknown dataset"):
        resolve_source("nope")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_subprocess(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    solid(a / "k.png", (9, 9, 9), size=(16, 16))
    solid(b / "k.png", (99, 99, 99), size=(16, 16))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "gan_translate.data.make_dataset", "combine", "--a", str(a), "--b", str(b)]
    done = subprocess.run([*cmd, "--out", str(tmp_path / "out"), "--split", "test"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "out" / "test" / "k.png").size == (32, 16)
    # error path: missing folder -> exit 2 and the folder is named
    done = subprocess.run([*cmd[:-1], str(tmp_path / "nope"), "--out", str(tmp_path / "o")], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2 and "nope" in done.stderr


def test_cli_in_process(tmp_path, capsys):
    src = tmp_path / "photos"
    for i in range(5):
        rectangle_photo(src / f"r{i}.png", size=(24, 24))
    assert main(["edges", "--src", str(src), "--out", str(tmp_path / "e"), "--size", "24",
                 "--val-fraction", "0.2", "--test-fraction", "0.2", "--seed", "1"]) == 0  # fmt: skip
    assert "train=3, val=1, test=1" in capsys.readouterr().out
    assert main(["colorization", "--src", str(src), "--out", str(tmp_path / "c"), "--format", "jpg"]) == 0
    assert len(list((tmp_path / "c").rglob("*.jpg"))) == 5
    archive = make_zip(tmp_path / "z.zip", {"trainA/x.png": b"x"})
    assert main(["download", "zz", "--root", str(tmp_path / "d"), "--archive", str(archive)]) == 0
    assert (tmp_path / "d" / "zz" / "trainA" / "x.png").exists()  # layout dir kept, not unwrapped
    assert main(["download", "--list"]) == 0
    assert main(["download", "maps", "--root", str(tmp_path / "d")]) == 2
    assert "--kind" in capsys.readouterr().err
