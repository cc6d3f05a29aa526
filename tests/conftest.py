"""Shared fixtures: tiny Hydra overrides, config composition and small on-disk datasets written with PIL."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from gan_translate.checkpoint import build_model

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"
# `examples` (user extensions such as model=pix2pix_tv) is imported from the repository root, as when a
# user runs `python -m gan_translate.train` there.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Hermetic runs: weights cached on this machine must not switch FID/LPIPS on ("auto") or change which
# checkpoint is selected. Tests that need weights pass them explicitly. Set before anything reads them, so
# subprocesses inherit it too.
# The user's real weights, read before that, for the opt-in slow tests of the real networks (else they could only
# ever skip): the environment's files and cache folder, or ~/.cache/gan_translate.
REAL_WEIGHTS = {name: os.environ.get(f"GAN_TRANSLATE_{name.upper()}_WEIGHTS") for name in ("fid", "lpips")}
REAL_WEIGHTS_CACHE = Path(os.path.expanduser(os.environ.get("GAN_TRANSLATE_CACHE") or "~/.cache/gan_translate"))
_EMPTY_CACHE = tempfile.mkdtemp(prefix="gan_translate_test_cache_")
os.environ["GAN_TRANSLATE_CACHE"] = _EMPTY_CACHE
os.environ["TORCH_HOME"] = _EMPTY_CACHE
for _name in ("GAN_TRANSLATE_FID_WEIGHTS", "GAN_TRANSLATE_LPIPS_WEIGHTS"):
    os.environ.pop(_name, None)

# Makes any run seconds long on a CPU: widths of 8, 8 training images of 32 px, one epoch, no workers, no model
# summary, no rich progress bar. The tiny-run lists below, in _tiny_run.py and in test_pix2pixhd.py start from
# it and add the trainer settings and the generator settings that take 32 px.
TINY_BASE = [
    "generator.ngf=8",
    "discriminator.ndf=8",
    "data.size=32",
    "data.train_length=8",
    "data.val_length=4",
    "data.batch_size=4",
    "data.val_batch_size=4",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "+trainer.enable_model_summary=false",
    "~callbacks.progress_bar",
]
# ... on the CPU, without the sanity validation or any progress bar, logging to CSV only.
TINY_CPU_QUIET = [
    *TINY_BASE,
    "trainer.accelerator=cpu",
    "trainer.num_sanity_val_steps=0",
    "+trainer.enable_progress_bar=false",
    "logger=csv",
]
TINY_OVERRIDES = [*TINY_CPU_QUIET, "generator.num_downs=5"]  # pix2pix: a 5-level U-Net takes 32 px
# CycleGAN: the 6-block ResNet is enough to test the wiring.
TINY_CYCLEGAN_OVERRIDES = ["experiment=shapes_cyclegan", "generator=resnet_6blocks", *TINY_CPU_QUIET]


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY_OVERRIDES)


@pytest.fixture
def tiny_cyclegan_overrides() -> list[str]:
    return list(TINY_CYCLEGAN_OVERRIDES)


@pytest.fixture(autouse=True, scope="session")
def _few_threads():
    """Tiny tensors on a small shared CPU: one intra-op thread is several times faster (no OpenMP spinning)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _torch_flags_restored():
    """trainer.deterministic=true switches torch's deterministic algorithms on for the whole process (Lightning
    does not switch them back); each test starts from the process's own settings again."""
    deterministic, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


def compose_train(overrides: list[str], output_dir: Path | None = None, config_name: str = "train") -> DictConfig:
    """Compose conf/train.yaml as `python -m gan_translate.train` would.

    The compose API has no HydraConfig, so ``${hydra:runtime.output_dir}`` cannot resolve: the run folder
    is given as ``paths.output_dir`` instead.
    """
    overrides = list(overrides)
    if output_dir is not None:
        overrides.append(f"paths.output_dir={output_dir}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def run_module(module: str, *args: str, cwd: Path, check: bool = True, timeout: int = 240):
    """Run ``python -m module args`` with this checkout first on the path; returns the CompletedProcess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    env["HYDRA_FULL_ERROR"] = "0"
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def random_rgb(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_aligned(root: Path, splits=("train", "val"), count: int = 4, size: int = 32) -> Path:
    """facades-like A|B folder: ``root/<split>/<i>.png`` of size (2*size) x size, A left, B right."""
    for split in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            seed = hash((split, i)) % 2**32
            pair = np.concatenate([random_rgb(size, size, seed), random_rgb(size, size, seed + 1)], axis=1)
            Image.fromarray(pair).save(root / split / f"{i:03d}.png")
    return root


def write_unaligned(root: Path, count_a: int = 3, count_b: int = 5, size: int = 32, splits=("train",)) -> Path:
    """CycleGAN-like folder: ``root/<split>A`` and ``root/<split>B`` with different image counts."""
    for split in splits:
        for domain, count in (("A", count_a), ("B", count_b)):
            folder = root / f"{split}{domain}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(random_rgb(size, size, 100 * ord(domain) + i)).save(folder / f"{domain}{i}.png")
    return root


@pytest.fixture
def aligned_root(tmp_path) -> Path:
    return write_aligned(tmp_path / "facades")


@pytest.fixture
def unaligned_root(tmp_path) -> Path:
    return write_unaligned(tmp_path / "horse2zebra")


# ----- inspecting runs -----
BATCHES = 2  # data.train_length=8 / data.batch_size=4


def initial_state(cfg) -> dict[str, torch.Tensor]:
    """The weights `train(cfg)` starts from: same seed, same construction order."""
    pl.seed_everything(cfg.seed, workers=True)
    instantiate(cfg.data)
    return {k: v.clone() for k, v in build_model(cfg).state_dict().items()}


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as file:
        return list(csv.DictReader(file))


def logged(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


def changed_parameters(model_before: dict, checkpoint: dict, prefix: str) -> tuple[int, int]:
    """(changed, total) parameter tensors under ``prefix`` between the initial and the trained state."""
    state = checkpoint["state_dict"]
    names = [k for k in state if k.startswith(prefix) and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    changed = sum(not torch.equal(model_before[k], state[k]) for k in names)
    return changed, len(names)


def on_disk(overrides: list[str]) -> list[str]:
    """The tiny overrides without the synthetic datasets' keys (for data=aligned / data=unaligned)."""
    synthetic = ("data.size", "data.train_length", "data.val_length")
    return [o for o in overrides if not o.startswith(synthetic)] + ["data.load_size=36", "data.crop_size=32"]
