"""A real package: the wheel carries the configs, and an installed (non-editable) gan_translate trains from any
folder, with a user's own config folder on Hydra's search path."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_the_wheel():
    # pyproject.toml lists packages explicitly (conf/ is mapped into the package); a new subpackage or config
    # group that is not listed would be missing from every wheel (or make setuptools warn at install).
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = set(find_packages(where=str(ROOT), include=["gan_translate*"]))
    found |= {f"gan_translate.conf.{group.name}" for group in (ROOT / "conf").iterdir() if group.is_dir()}
    assert found <= listed, f"add to [tool.setuptools] packages: {sorted(found - listed)}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (path,) = out.glob("gan_translate-*.whl")
    return path


def test_wheel_ships_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    on_disk = {f"gan_translate/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert on_disk and on_disk <= names, sorted(on_disk - names)[:5]


def test_installed_wheel_trains_from_another_folder_with_a_user_config_dir(wheel, tmp_path):
    # A fresh virtualenv holding only the wheel; the dependencies come from the test venv through a plain
    # path entry (its .pth files, the editable install of this checkout among them, are not processed).
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    target = Path(subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    (target / "test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")

    # The user's own config folder: an experiment of theirs, found through --config-dir.
    user_conf = tmp_path / "my_conf"
    (user_conf / "experiment").mkdir(parents=True)
    (user_conf / "experiment" / "tiny_demo.yaml").write_text(
        "# @package _global_\ngenerator: {ngf: 8, num_downs: 5}\ndiscriminator: {ndf: 8}\n"
        "data: {size: 32, train_length: 8, val_length: 4, batch_size: 4, num_workers: 0}\n"
        "trainer: {max_epochs: 1, accelerator: cpu, enable_progress_bar: false}\n"
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    where = subprocess.run([python, "-c", "import gan_translate.config as c; print(c.CONF_DIR)"], cwd=work, env=env,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where == str(target / "gan_translate" / "conf")  # the installed configs, not this checkout's
    done = subprocess.run(
        [python, "-m", "gan_translate.train", "--config-dir", str(user_conf), "experiment=tiny_demo",
         "~callbacks.progress_bar", "logger=csv"],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (work / "outputs" / "train").glob("*/*")
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert "experiment: tiny_demo" in (run_dir / ".hydra" / "hydra.yaml").read_text()

    # Every command finds the installed configs (`--cfg job` composes and prints its config, running nothing).
    commands = sorted(p.stem for p in (ROOT / "gan_translate").glob("*.py") if "@hydra.main" in p.read_text())
    assert {"train", "predict", "evaluate", "export", "sample"} <= set(commands)
    for command in commands:
        shown = subprocess.run([python, "-m", f"gan_translate.{command}", "--cfg", "job"], cwd=work, env=env,
                               capture_output=True, text=True, timeout=300)
        assert shown.returncode == 0, f"{command}: {shown.stderr[-2000:]}"


def test_networks_losses_models_and_data_import_without_hydra():
    """The README's layering: only the entry points (and config/checkpoint) touch Hydra. The range annotations
    (gan_translate.ranges) and the user-error base (gan_translate.errors) that these layers use keep it so."""
    code = ("import sys\n"
            "import gan_translate.networks, gan_translate.losses, gan_translate.models, gan_translate.data\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf')}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == "[]"
