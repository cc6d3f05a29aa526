"""Where the Hydra configs live, for every entry point.

The configs are the top-level ``conf/`` folder of the source tree. A wheel (``pip install .``) ships that
folder inside the package as ``gan_translate/conf`` (``package-dir`` mapping in pyproject.toml), so an
installed package finds its configs without the source tree and from any working directory.
Users add their own config folders with ``hydra.searchpath`` or ``--config-dir`` (see the README).
"""

from __future__ import annotations

import types
import typing
from pathlib import Path

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

_PACKAGE = Path(__file__).resolve().parent


def _conf_dir() -> Path:
    packaged = _PACKAGE / "conf"  # installed from a wheel or sdist
    return packaged if packaged.is_dir() else _PACKAGE.parent / "conf"  # source checkout / editable install


CONF_DIR = str(_conf_dir())


# Annotations a config value is checked against; anything richer (a tensor, a callable, a union with one) is left
# to the target itself.
_PLAIN_TYPES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _plain_types(annotation: object) -> tuple[type, ...] | None:
    """The plain types an annotation allows (``bool``, ``float | None`` ...), or None when it is not that simple."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or typing.get_origin(
        annotation) is typing.Union else (annotation,)
    if not members or any(m is not type(None) and m not in _PLAIN_TYPES for m in members):
        return None
    return tuple(members)


def _accepts(value: object, allowed: tuple[type, ...]) -> bool:
    if value is None:
        return type(None) in allowed
    if isinstance(value, bool):  # a bool is an int to Python, not to a config: true for a batch size is a typo
        return bool in allowed
    return any(isinstance(value, t) or (t is float and isinstance(value, int)) for t in allowed)


def _annotations(target: object) -> dict[str, object]:
    """Parameter annotations of a class (its own __init__, then its bases', for **kwargs passed up) or function."""
    hints: dict[str, object] = {}
    for owner in (target.__mro__ if isinstance(target, type) else (target,)):
        init = owner.__dict__.get("__init__") if isinstance(target, type) else owner
        if init is None:
            continue
        try:
            for name, hint in typing.get_type_hints(init).items():
                hints.setdefault(name, hint)
        except Exception:  # noqa: BLE001 - unresolvable annotations (third-party, TYPE_CHECKING-only): not checked
            continue
    return hints


def check_value_types(cfg: DictConfig) -> None:
    """Refuse, before anything is built and naming the key, a value of the wrong plain type for its ``_target_``'s
    parameter: ``model.step_graph=flase`` is the string "flase", which Python would take as true; a batch size of
    "8x". Checks only parameters annotated with bool/int/float/str (or those or None)."""
    errors = []

    def walk(node: DictConfig | ListConfig, path: str) -> None:
        keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
        # An interpolated node (model.loss: ${loss}) is checked where it is written, once.
        items = {key: node[key] for key in keys
                 if not OmegaConf.is_missing(node, key) and not (OmegaConf.is_interpolation(node, key)
                                                                  and OmegaConf.is_config(node[key]))}
        target = items.get("_target_")
        hints: dict[str, object] = {}
        if isinstance(target, str):
            try:
                hints = _annotations(get_object(target))
            except Exception:  # noqa: BLE001 - a bad _target_ is reported by instantiate, with its own message
                pass
        for key, value in items.items():
            where = f"{path}{key}" if isinstance(node, DictConfig) else f"{path[:-1]}[{key}]"
            if OmegaConf.is_config(value):
                walk(value, where + ".")
                continue
            allowed = _plain_types(hints[key]) if key in hints and not str(key).startswith("_") else None
            if allowed and not _accepts(value, allowed):
                wanted = " or ".join(_PLAIN_TYPES.get(t, "null") for t in allowed)
                quote = f" (quote it: {where}='{value}')" if str in allowed and value is not None else ""
                errors.append(f"{where} must be {wanted}, got {value!r}{quote}")

    walk(cfg, "")
    if errors:
        raise ValueError("config values of the wrong type: " + "; ".join(errors))
