"""Where the Hydra configs live, for every entry point.

The configs are the top-level ``conf/`` folder of the source tree. A wheel (``pip install .``) ships that
folder inside the package as ``gan_translate/conf`` (``package-dir`` mapping in pyproject.toml), so an
installed package finds its configs without the source tree and from any working directory.
Users add their own config folders with ``hydra.searchpath`` or ``--config-dir`` (see the README).
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _conf_dir() -> Path:
    packaged = _PACKAGE / "conf"  # installed from a wheel or sdist
    return packaged if packaged.is_dir() else _PACKAGE.parent / "conf"  # source checkout / editable install


CONF_DIR = str(_conf_dir())
