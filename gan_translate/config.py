"""Where the Hydra configs live, for every entry point, and the checks of a composed config before anything
is built (``check_composition``, ``check_value_types``): each names the keys to change.

The configs are the top-level ``conf/`` folder of the source tree. A wheel (``pip install .``) ships that
folder inside the package as ``gan_translate/conf`` (``package-dir`` mapping in pyproject.toml), so an
installed package finds its configs without the source tree and from any working directory.
Users add their own config folders with ``hydra.searchpath`` or ``--config-dir`` (see the README).
"""

from __future__ import annotations

import dataclasses
import operator
import re
import types
import typing
from pathlib import Path

import annotated_types
import torch
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationKeyError, InterpolationToMissingValueError

from gan_translate.errors import UsageError

_PACKAGE = Path(__file__).resolve().parent


def _conf_dir() -> Path:
    packaged = _PACKAGE / "conf"  # installed from a wheel or sdist
    return packaged if packaged.is_dir() else _PACKAGE.parent / "conf"  # source checkout / editable install


CONF_DIR = str(_conf_dir())


class ConfigError(UsageError, ValueError):
    """Config values that cannot work, named by their keys, found before anything is built."""


# Annotations a config value is checked against; anything richer (a callable, a union with one) is left to the
# target itself. A plain value cannot be a tensor (one comes from a nested _target_, which is not checked here), so
# torch.optim's ``lr: float | Tensor`` is checked as a float; ``Tensor | None`` is not checked.
_PLAIN_TYPES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
_NOT_FROM_CONFIG = (torch.Tensor,)
_BOUND_SIGNS = {annotated_types.Ge: ">=", annotated_types.Gt: ">", annotated_types.Le: "<=", annotated_types.Lt: "<"}
_BOUNDS = tuple(_BOUND_SIGNS)
_COMPARE = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


@dataclasses.dataclass(frozen=True)
class Check:
    """What an annotation asks of a config value: its plain types (None: not checked), bounds
    (``Annotated[int, Ge(1)]``) and, for a fixed-length tuple (Adam's ``betas``), one Check per item."""

    types: tuple[type, ...] | None
    bounds: tuple = ()
    items: tuple[Check, ...] | None = None


def _check_of(annotation: object) -> Check | None:
    """The Check for an annotation, or None when it is not that simple."""
    bounds: tuple = ()
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *metadata = typing.get_args(annotation)
        # Interval(ge=0, le=1) is grouped metadata: it iterates as its Ge and Le.
        flat = [b for m in metadata for b in (m if isinstance(m, annotated_types.GroupedMetadata) else [m])]
        bounds = tuple(b for b in flat if isinstance(b, _BOUNDS))
    if typing.get_origin(annotation) is tuple:
        items = typing.get_args(annotation)
        if not items or Ellipsis in items:
            return None
        checks = tuple(_check_of(item) for item in items)
        return Check(None, bounds, checks) if all(checks) else None
    union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union
    members = typing.get_args(annotation) if union else (annotation,)
    checks = [_check_of(m) if typing.get_origin(m) is typing.Annotated else None for m in members]
    if any(c is not None and (c.types is None or len(c.types) != 1) for c in checks):
        return None
    bounds += tuple(b for c in checks if c for b in c.bounds)
    plain = tuple(c.types[0] if c else m for c, m in zip(checks, members, strict=True)
                  if not (isinstance(m, type) and issubclass(m, _NOT_FROM_CONFIG)))
    if all(m is type(None) for m in plain) or any(m is not type(None) and m not in _PLAIN_TYPES for m in plain):
        return None
    return Check(plain, bounds)


def _accepts(value: object, allowed: tuple[type, ...]) -> bool:
    if value is None:
        return type(None) in allowed
    if isinstance(value, bool):  # a bool is an int to Python, not to a config: true for a batch size is a typo
        return bool in allowed
    return any(isinstance(value, t) or (t is float and isinstance(value, int)) for t in allowed)


def _problem(value: object, check: Check, where: str) -> str | None:
    """Why ``value`` does not meet ``check`` (None: it does)."""
    if check.items is not None:
        if not isinstance(value, (list, tuple, ListConfig)) or len(value) != len(check.items):
            return f"{where} must be a list of {len(check.items)} values, got {value!r}"
        for index, (item, item_check) in enumerate(zip(value, check.items, strict=True)):
            if problem := _problem(item, item_check, f"{where}[{index}]"):
                return problem
        return None
    if check.types and not _accepts(value, check.types):
        wanted = " or ".join(_PLAIN_TYPES.get(t, "null") for t in check.types)
        quote = f" (quote it: {where}='{value}')" if str in check.types and value is not None else ""
        return f"{where} must be {wanted}, got {value!r}{quote}"
    for bound in check.bounds if isinstance(value, (int, float)) and not isinstance(value, bool) else ():
        sign, limit = _BOUND_SIGNS[type(bound)], next(iter(dataclasses.astuple(bound)))
        if not _COMPARE[sign](value, limit):
            return f"{where} must be {sign} {limit}, got {value!r}"
    return None


def _annotations(target: object) -> dict[str, object]:
    """Parameter annotations of a class (its own __init__, then its bases', for **kwargs passed up) or function."""
    hints: dict[str, object] = {}
    for owner in (target.__mro__ if isinstance(target, type) else (target,)):
        init = owner.__dict__.get("__init__") if isinstance(target, type) else owner
        if init is None:
            continue
        try:
            for name, hint in typing.get_type_hints(init, include_extras=True).items():
                hints.setdefault(name, hint)
        except Exception:  # noqa: BLE001 - unresolvable annotations (third-party, TYPE_CHECKING-only): not checked
            continue
    return hints


def _seed_problem(value: object) -> str | None:
    """The top-level ``seed`` (no _target_ to read an annotation from): what pl.seed_everything takes, an integer
    or its digits (``seed: ${oc.env:SEED}``), or null."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return None
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return None
    return f"seed must be an integer or null, got {value!r}"


def check_value_types(cfg: DictConfig) -> None:
    """Refuse, before anything is built and naming the key, a value of the wrong plain type for its ``_target_``'s
    parameter: ``model.step_graph=flase`` is the string "flase", which Python would take as true; a batch size of
    "8x". Checks parameters annotated with bool/int/float/str (or those or None), their bounds
    (``Annotated[int, Ge(1)]``: a batch size of 0) and fixed-length tuples of them (``optim.betas=[0.5]``)."""
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
            # A nested node is built by its own _target_ (a tensor for lr, say): checked against that one's
            # annotations. A plain list is checked as a whole (Adam's betas) when its annotation says how.
            if OmegaConf.is_config(value) and ("_target_" in value or not (key in hints and _check_of(hints[key]))):
                walk(value, where + ".")
                continue
            check = _check_of(hints[key]) if key in hints and not str(key).startswith("_") else None
            if check and (problem := _problem(value, check, where)):
                errors.append(problem)

    walk(cfg, "")
    if "seed" in cfg and (problem := _seed_problem(cfg.seed)):
        errors.insert(0, problem)
    if errors:
        raise ConfigError("invalid config values: " + "; ".join(errors))


def check_composition(cfg: DictConfig) -> None:
    """Refuse, naming the keys, a composition that lacks values it needs: a required value left at ``???``
    (``data=aligned`` without ``data.root``: omegaconf's MissingMandatoryValue came from inside instantiate, with a
    traceback), or an interpolation whose target is not there (``model=dcgan`` alone keeps the default
    ``data=synthetic_facades``, which has no ``image_size`` for ``model.image_size``: omegaconf's bare
    "Interpolation key 'data.image_size' not found")."""
    required, dangling = [], []

    def walk(node: DictConfig | ListConfig, path: str) -> None:
        written = OmegaConf.to_container(node, resolve=False)
        for key in node.keys() if isinstance(node, DictConfig) else range(len(node)):
            where = f"{path}{key}" if isinstance(node, DictConfig) else f"{path[:-1]}[{key}]"
            if OmegaConf.is_missing(node, key):
                required.append(where)
                continue
            try:
                value = node[key]
            except InterpolationToMissingValueError:  # its target is reported as required
                continue
            except InterpolationKeyError:
                targets = re.findall(r"\$\{([^}:]+)\}", str(written[key]))
                dangling.append(f"{where} refers to {' and '.join(targets) or written[key]}, which is not set")
                continue
            if OmegaConf.is_config(value) and not OmegaConf.is_interpolation(node, key):
                walk(value, where + ".")

    walk(cfg, "")
    problems = []
    if required:
        problems.append(f"required values not given: {', '.join(required)} (pass {required[0]}=...)")
    if dangling:
        model = (cfg.get("model") or {}).get("_target_") if isinstance(cfg.get("model"), DictConfig) else None
        experiments = experiments_for(model) if model else []
        fix = (f"pass an experiment that sets data, networks and loss for {model.rsplit('.', 1)[-1]} together: "
               + " or ".join(f"experiment={name}" for name in experiments)) if experiments else (
            "pick config groups that go together (the data config must have the keys named)")
        problems.append(f"config groups that do not go together: {'; '.join(dangling)}. Fix: {fix}")
    if problems:
        raise ConfigError("; ".join(problems))


def experiments_for(model_target: str) -> list[str]:
    """The packaged experiments (conf/experiment) whose model config builds ``model_target``."""
    default = next(entry["model"] for entry in OmegaConf.load(Path(CONF_DIR, "train.yaml")).defaults
                   if isinstance(entry, DictConfig) and "model" in entry)
    found = []
    for path in sorted(Path(CONF_DIR, "experiment").glob("*.yaml")):
        model_file = Path(CONF_DIR, "model", f"{_experiment_option(path.stem, 'model') or default}.yaml")
        if model_file.is_file() and OmegaConf.load(model_file).get("_target_") == model_target:
            found.append(path.stem)
    return found


def experiments_setting(key: str) -> list[str]:
    """The packaged experiments that set ``key`` (e.g. ``generator.ngf``) in their own body."""
    return [path.stem for path in sorted(Path(CONF_DIR, "experiment").glob("*.yaml"))
            if OmegaConf.select(OmegaConf.load(path), key) is not None]


def _experiment_option(name: str, group: str) -> str | None:
    """The option experiment ``name`` picks for ``group``, following the experiments it includes (None: none)."""
    for entry in OmegaConf.load(Path(CONF_DIR, "experiment", f"{name}.yaml")).get("defaults") or []:
        if isinstance(entry, DictConfig) and f"override /{group}" in entry:
            return entry[f"override /{group}"]
        if isinstance(entry, str) and Path(CONF_DIR, "experiment", f"{entry}.yaml").is_file():
            if (included := _experiment_option(entry, group)) is not None:
                return included
    return None
