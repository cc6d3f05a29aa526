"""Build models from a composed config, and rebuild them from a checkpoint alone.

Every checkpoint written by a GANModule carries the run's full, resolved config under
``checkpoint["gan_translate"]``: predict/evaluate/export rebuild the exact architecture from it, so no
flag has to be repeated (the reference repo's most frequent user error).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from gan_translate.config import ConfigError, experiments_setting
from gan_translate.errors import UsageError
from gan_translate.models.base import CHECKPOINT_KEY, GANModule


class CheckpointError(UsageError, ValueError):
    """A file that is not a usable gan_translate checkpoint; the message says why."""


def build_model(cfg: DictConfig | dict) -> GANModule:
    """Instantiate ``cfg.model`` and attach the whole config so it is saved in every checkpoint."""
    cfg = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    try:
        model = instantiate(cfg.model, _convert_="partial")
    except InstantiationException as error:
        problem = _unexpected_argument(cfg, str(error))
        if problem is None:
            raise
        raise ConfigError(problem) from error
    if not isinstance(model, GANModule):
        raise TypeError(f"model._target_ must build a gan_translate GANModule, got {type(model).__name__}")
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    return model


def _unexpected_argument(cfg: DictConfig, message: str) -> str | None:
    """For "X.__init__() got an unexpected keyword argument 'ngf'" from a network or loss built inside the model:
    the config key that passed it, and how to drop it (a new generator without ``ngf`` under the default
    experiment=demo, which sets generator.ngf, got only Python's message)."""
    found = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", message)
    if not found:
        return None
    owner, argument = found.groups()
    for group, node in cfg.items():
        if not (isinstance(node, DictConfig) and argument in node and _builds(node.get("_target_"), owner)):
            continue
        key = f"{group}.{argument}"
        setters = experiments_setting(key)
        shown = ", ".join(setters[:3]) + (f" and {len(setters) - 3} more" if len(setters) > 3 else "")
        where = f"; the experiments {shown} set it ('~experiment' runs without one)" if setters else ""
        return f"{key}={node[argument]}: {node._target_} takes no argument {argument!r}: drop it with '~{key}'{where}"
    return None


def _builds(target: object, class_name: str) -> bool:
    """Whether ``target`` is ``class_name`` or a subclass of it (the error names the class whose __init__ took it)."""
    try:
        return class_name in {base.__name__ for base in get_class(str(target)).__mro__}
    except Exception:  # noqa: BLE001 - not an importable class: not the one
        return False


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint safely (``weights_only=True``: no code runs) and check that it is ours."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; torch's own error for others is about mmap
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not the zip archive torch.save writes); "
                              "use a .ckpt written by `python -m gan_translate.train`")
    try:
        # mmap: tensors are read on first use, so reading only the config (e.g. on resume) stays cheap.
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if not found:
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
        # torch's own message suggests weights_only=False, i.e. running the file's code: not done here.
        raise CheckpointError(
            f"{path} holds a pickled Python object ({found.group(1)}), which is refused: loading it could run "
            "arbitrary code. gan_translate checkpoints hold only tensors and plain values (weights_only=True)"
        ) from error
    except Exception as error:  # unpickling errors come in many types
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {error}") from error
    if not isinstance(checkpoint, dict) or CHECKPOINT_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{path} is not a gan_translate checkpoint (no '{CHECKPOINT_KEY}' entry with the run config); "
            "use a .ckpt written by `python -m gan_translate.train`"
        )
    if not checkpoint[CHECKPOINT_KEY].get("config"):
        raise CheckpointError(f"{path} has no stored run config; it was not written by gan_translate.train")
    return checkpoint


def reshaped_keys(own: dict, state_dict: dict) -> list[str]:
    """The keys of both state dicts whose tensors have other shapes (another width, another channel count)."""
    return sorted(k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))


def load_state(model: GANModule, state_dict: dict, source: str) -> None:
    """``load_state_dict`` with an error that lists which keys differ or have other shapes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    reshaped = reshaped_keys(own, state_dict)
    if missing or unexpected or reshaped:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped)):
            if keys:
                details.append(f"{label}: {len(keys)} keys, e.g. {keys[:4]}")
        raise CheckpointError(
            f"{source} does not match {type(model).__name__} as configured ({'; '.join(details)})"
        )
    model.load_state_dict(state_dict)


def initialise_from(model: GANModule, path: str | Path, modules: str | list[str] | None = None) -> list[str]:
    """Fine-tuning (``init_from``): copy a checkpoint's weights into ``model``; optimizers, schedules, counters and
    image pools stay those of the new run. ``modules``: the model's top-level networks to copy (``generator``,
    ``discriminator_A`` ...), default every one that has parameters. Buffers outside the networks (the sample
    grids' fixed noise) stay the new run's. Returns the names copied; an error names the key, the file and what
    does not fit, before anything trains."""
    networks = [name for name, child in model.named_children() if any(True for _ in child.parameters())]
    if modules is None:
        chosen = networks
    else:
        chosen = [modules] if isinstance(modules, str) else list(modules)
        unknown = [name for name in chosen if name not in networks]
        if unknown or not chosen:
            raise ConfigError(f"init_modules={chosen}: {type(model).__name__} has the networks {networks}"
                              + (f", not {unknown}" if unknown else "; name at least one"))
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as error:
        raise CheckpointError(f"init_from: {error}") from error
    saved_class = checkpoint[CHECKPOINT_KEY]["model_class"].rsplit(".", 1)[-1]
    source = f"init_from={path} (a {saved_class} checkpoint)"
    state = checkpoint["state_dict"]
    own = model.state_dict()
    for name in chosen:
        prefix = name + "."
        theirs = {k: v for k, v in state.items() if k.startswith(prefix)}
        ours = {k: v for k, v in own.items() if k.startswith(prefix)}
        missing, unexpected = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        reshaped = reshaped_keys(ours, theirs)
        if not theirs or missing or unexpected or reshaped:
            found = sorted({k.split(".", 1)[0] for k in state})
            what = (f"has no {name} weights (it has {found})" if not theirs else "; ".join(
                f"{label}: {len(keys)} keys, e.g. {keys[:3]}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped))
                if keys))
            raise CheckpointError(
                f"{source} does not fit this config's {type(model).__name__}.{name}: {what}. Build the same networks "
                "as that run (its .hydra/overrides.yaml), or leave the network out with init_modules=[...]"
            )
        model.get_submodule(name).load_state_dict({k[len(prefix):]: v for k, v in theirs.items()})
    return chosen


def model_from_checkpoint(path: str | Path, expected: type[GANModule] | None = None) -> GANModule:
    """Rebuild the model of a run from its checkpoint alone, in eval mode on the CPU."""
    checkpoint = load_checkpoint(path)
    info = checkpoint[CHECKPOINT_KEY]
    if expected is not None and not issubclass(get_class(info["model_class"]), expected):
        raise CheckpointError(f"{path} holds a {info['model_class']}, not a {expected.__name__}")
    # Without the validation metrics: predict, export and sample would otherwise load the FID Inception network
    # (100 MB, seconds) for nothing. The run's config stays as it was.
    config = OmegaConf.create(info["config"])
    if config.model.get("metrics") is not None:
        config.model.metrics = None
    model = build_model(config)
    model.run_config = info["config"]
    load_state(model, checkpoint["state_dict"], str(path))
    return model.eval()
