"""Reliable long runs: exact resume, atomic checkpoints, and finding the checkpoint to resume from.

What a checkpoint holds, and who restores it on resume:
- weights, both optimizers, LR schedulers, epoch/step counters, ModelCheckpoint state: Lightning;
- the training loader's position (seed, epoch, samples consumed): Lightning, which saves and restores any
  train loader with ``state_dict``/``load_state_dict``; the loader is torchdata's StatefulDataLoader, see
  ``gan_translate.data.resumable``;
- CycleGAN image pools: ``CycleGAN.on_save_checkpoint`` / ``on_load_checkpoint``;
- Python, NumPy and torch (CPU and CUDA) random states: ``RandomStateCheckpoint`` below. Lightning does
  not save them, so without it a resumed run would draw other dropout masks and pool choices than an
  uninterrupted one (``seed_everything`` only seeds the start of a run).

The training loader draws nothing from these global states: each item is read under a seed of its own,
derived from (run seed, epoch, index), so its crops, flips and CycleGAN's random B image are the same in
any worker, with any ``num_workers``, before or after a resume.

Resume is exact from every checkpoint, per-epoch or mid-epoch (``IntervalCheckpoint``, by steps or minutes):
with ``seed`` set and ``trainer.deterministic=true``, "train, SIGKILL, resume" ends with bit-identical
weights to an uninterrupted run, with or without (persistent) workers (tested on CPU for pix2pix and
CycleGAN). An interval save that falls due at an epoch's last batch is written at that epoch's end instead
(after its validation and scheduler step): Lightning resumes a checkpoint taken at the last batch straight
into the next epoch, skipping them.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from hydra.experimental.callback import Callback as HydraCallback
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, OnExceptionCheckpoint

log = logging.getLogger(__name__)

LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
EXCEPTION_CHECKPOINT = Path("checkpoints") / "on_exception.ckpt"  # ExceptionCheckpoint's file


def _first_set(*values: Any) -> Any:
    """``${first_set:${resume},outputs/...}``: the first value that is not null/empty."""
    return next((value for value in values if value not in (None, "", "None", "null")), None)


def _run_record(resume: Any) -> str:
    """``hydra.output_subdir``: ``.hydra`` for a new run; a resume of a run that has its record writes its own
    into ``.hydra/resumed/DATE_TIME`` instead, so the run's first record (its overrides: what to repeat) is kept
    whatever the resume does, and a resume that fails leaves nothing in the old record."""
    if _first_set(resume) is None or not (Path(str(resume)) / ".hydra" / "config.yaml").is_file():
        return ".hydra"
    return f".hydra/resumed/{time.strftime('%Y-%m-%d_%H-%M-%S')}"


if not OmegaConf.has_resolver("first_set"):
    OmegaConf.register_new_resolver("first_set", _first_set)
if not OmegaConf.has_resolver("run_record"):
    OmegaConf.register_new_resolver("run_record", _run_record, use_cache=True)


# ----- random state -----
def capture_rng_state() -> dict:
    """All global random states, as plain tensors/ints so the checkpoint loads with ``weights_only=True``."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state((
        numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["position"],
        numpy_state["has_gauss"], numpy_state["gauss"],
    ))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("torch_cuda")
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)


class RandomStateCheckpoint(pl.Callback):
    """Saves the random states in every checkpoint and restores them when training resumes from it.

    Restored while Lightning restores callbacks, i.e. before the first training DataLoader iterator is
    created (the sanity check in between runs under Lightning's ``isolate_rng``). Under DDP the state
    of rank 0 is saved and restored on every rank (ranks seeded alike stay alike).
    """

    def state_dict(self) -> dict:
        return capture_rng_state()

    def load_state_dict(self, state_dict: dict) -> None:
        restore_rng_state(state_dict)


# ----- atomic checkpoint files -----
class NonFiniteCheckpointError(RuntimeError):
    """Refused to write a checkpoint whose weights hold NaN/Inf (the previous file is kept)."""


def nonfinite_entries(state_dict: dict) -> list[str]:
    return [
        name for name, value in state_dict.items()
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file next to it, fsyncs, then ``os.replace``-s it into place.

    Lightning's own ``_atomic_save`` writes through an fsspec transaction whose temporary file lives in
    the system temp folder; when that is another file system than the run folder (a common cluster
    setup), the final move is a copy, so a kill during it leaves a truncated ``last.ckpt``. A rename
    within one folder is atomic: a reader sees the old file or the new one, never half of one.
    It also refuses to overwrite a good checkpoint with non-finite weights. Remote URLs (s3://...) go
    through Lightning's default path.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options: Any | None = None) -> None:
        bad = nonfinite_entries(checkpoint.get("state_dict", {}))
        if bad:
            raise NonFiniteCheckpointError(
                f"refusing to write {path}: {len(bad)} weight tensors hold NaN/Inf, e.g. {bad[:4]}; "
                "the previous checkpoint is kept"
            )
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        path = Path(str(path).removeprefix("file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        try:  # make the rename itself durable (best effort: not every file system allows it)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError:
            pass


# ----- last.ckpt -----
class LastCheckpoint(ModelCheckpoint):
    """``checkpoints/last.ckpt`` after every epoch, whatever is or is not monitored.

    A class of its own (not a plain ModelCheckpoint entry) so that Lightning keeps its state apart from a
    periodic ModelCheckpoint with the same settings (it keys callback states by class and settings).
    """

    def __init__(self, dirpath: str, every_n_epochs: int = 1) -> None:
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, every_n_epochs=every_n_epochs,
                         enable_version_counter=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """A run that stops inside an epoch (``trainer.max_steps`` reached, or ``trainer.should_stop`` set by
        ``max_time``'s Timer or another callback, which Lightning runs before checkpoint callbacks): its final state
        is saved here, mid-epoch (as an interval checkpoint is), so that a resume continues this epoch."""
        cut_short = trainer.should_stop or (trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps)
        if cut_short and batch_idx + 1 < trainer.num_training_batches and not self._should_skip_saving_checkpoint(
                trainer):
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Lightning runs the epoch-end hooks also for an epoch that max_steps or max_time cut short, and a
        checkpoint written then reads "epoch done": a resume from it would skip the epoch's remaining batches.
        Such an epoch keeps the mid-epoch save above."""
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            super().on_train_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        """A run whose last epoch is not a multiple of ``every_n_epochs`` still ends with its final weights in
        last.ckpt ("last" is the last state, whatever the interval). Only at an epoch's end: a run stopped in the
        middle of one keeps its mid-epoch save (max_steps, max_time) or, killed, the last epoch-boundary or interval
        checkpoint, from which a resume is exact."""
        super().on_train_end(trainer, pl_module)
        ended_epoch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if ended_epoch and not self._should_skip_saving_checkpoint(trainer):
            self._save_none_monitor_checkpoint(trainer, self._monitor_candidates(trainer))


class ExceptionCheckpoint(pl.Callback):
    """Lightning's ``OnExceptionCheckpoint``: when a run fails (a data error found at the end of an epoch, Ctrl+C,
    out of memory), its state at that moment goes to ``checkpoints/on_exception.ckpt``, so that the training since
    the last checkpoint is not lost: ``ckpt_path=.../on_exception.ckpt`` (or ``resume=RUN_DIR``) continues from it
    once the cause is fixed.

    Not under several processes (the save waits at a barrier that a rank stuck in a collective never reaches: a
    hang instead of an error), nor before the first optimizer step (nothing to keep), and a failing save never hides
    the run's own error. Lightning deletes the file when a later run in this folder ends normally.

    Lightning's callback is held, not subclassed: with an ``OnExceptionCheckpoint`` among the callbacks,
    ``fit(ckpt_path=None)`` becomes ``"last"``, which silently resumed a new run from any ``on_exception.ckpt`` or
    ``last.ckpt`` it found, past the checks of ``check_resumable``. Which checkpoint a run resumes from is decided
    by ``resume_checkpoint`` alone.
    """

    def __init__(self, dirpath: str, filename: str = "on_exception") -> None:
        self.saver = OnExceptionCheckpoint(dirpath, filename)

    @property
    def ckpt_path(self) -> str:
        return self.saver.ckpt_path

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if trainer.world_size > 1 or trainer.global_step == 0:
            return
        try:
            self.saver.on_exception(trainer, pl_module, exception)
        except Exception as error:  # noqa: BLE001 - the run's own exception is the one to raise
            log.warning("the state at the failure could not be saved to %s: %s", self.ckpt_path, error)
            return
        log.error("the state at the failure (optimizer step %d) is saved: continue from it with ckpt_path=%s",
                  trainer.global_step, self.ckpt_path)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.saver.teardown(trainer, pl_module, stage)


# ----- mid-epoch checkpoints -----
class IntervalCheckpoint(ModelCheckpoint):
    """Refreshes ``last.ckpt`` every ``every_n_train_steps`` optimizer steps and/or every ``every_n_minutes``
    of training, between the per-epoch checkpoints (which write the same file).

    Lightning's ModelCheckpoint ignores ``train_time_interval`` under manual optimization (2.6: its
    manual-optimization branch only looks at ``every_n_train_steps``), and GANs here optimize manually,
    hence this small subclass. Steps count optimizer steps like ``trainer.max_steps`` (2 per batch for
    pix2pix and CycleGAN); the time decision is rank 0's, broadcast, so DDP ranks save together.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int | None = None, every_n_minutes: float | None = None):
        super().__init__(
            dirpath=dirpath, save_top_k=0, save_last=True, every_n_epochs=0, enable_version_counter=False
        )
        self.save_every_steps = every_n_train_steps or 0
        self.save_every_seconds = None if every_n_minutes is None else 60.0 * every_n_minutes
        self._next_step: int | None = None
        self._last_saved_at = time.monotonic()
        self._save_at_epoch_end = False

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_saved_at = time.monotonic()

    def on_train_end(self, trainer, pl_module) -> None:
        """No save at the end: the per-epoch checkpoint already wrote last.ckpt (ModelCheckpoint would
        otherwise write it again here, after the epoch counter moved on)."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.save_every_steps and self.save_every_seconds is None:
            return
        step = trainer.global_step
        if self._next_step is None:
            self._next_step = (step // self.save_every_steps + 1) * self.save_every_steps if self.save_every_steps else 0
        due = bool(self.save_every_steps) and step >= self._next_step
        if self.save_every_seconds is not None:
            due = bool(trainer.strategy.broadcast(
                due or time.monotonic() - self._last_saved_at >= self.save_every_seconds
            ))
        if not due or self._should_skip_saving_checkpoint(trainer):
            return
        if self.save_every_steps:
            self._next_step = (step // self.save_every_steps + 1) * self.save_every_steps
        if batch_idx + 1 >= trainer.num_training_batches:
            # The epoch's last batch: save once the epoch has ended (validation, scheduler step) instead.
            # A run resumed from here would go straight to the next epoch, skipping that epoch end.
            self._save_at_epoch_end = True
            return
        self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Runs after the LightningModule's own hook (schedulers step there), like every ModelCheckpoint."""
        if self._save_at_epoch_end and not self._should_skip_saving_checkpoint(trainer):
            self._save(trainer)
        self._save_at_epoch_end = False

    def _save(self, trainer) -> None:
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        self._last_saved_at = time.monotonic()


# ----- which checkpoint to resume from -----
def run_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints a run in ``run_dir`` continues from: ``last.ckpt`` and the state saved at a failure."""
    return [path for path in (run_dir / LAST_CHECKPOINT, run_dir / EXCEPTION_CHECKPOINT) if path.is_file()]


def _progress(checkpoint: Path) -> tuple[int, float]:
    """How far training had got in ``checkpoint``: its global step, then its file time (a copy that did not keep
    file times must not make an older state win). An unreadable file comes last; resuming it names the problem."""
    try:
        step = int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
    except Exception:  # noqa: BLE001 - any unreadable file ranks last
        step = -2
    return step, checkpoint.stat().st_mtime


def refuse_existing_run(run_dir: Path) -> None:
    """A new run in ``run_dir`` would overwrite the run whose checkpoints it holds: refuse it."""
    held = run_checkpoints(run_dir)
    if held:
        raise FileExistsError(
            f"the run folder {run_dir} already holds a run ({held[0].relative_to(run_dir)}), which a new run would "
            f"overwrite: continue it with resume={run_dir}, or start this run in another folder "
            "(hydra.run.dir=..., or leave it out for a new dated folder)"
        )


def refuse_new_run_over_another(run_dir: Path, resume: str | None) -> None:
    """Refuse a run into ``run_dir`` when that holds a run other than the one ``resume`` continues
    (``resume=A hydra.run.dir=B`` would have written A's continuation over B's checkpoints)."""
    if not resume or Path(resume).resolve() != run_dir.resolve():
        refuse_existing_run(run_dir)


class ExistingRunGuard(HydraCallback):
    """The same refusal, made before Hydra writes the run folder's ``.hydra/`` (config.yaml, overrides.yaml):
    by the time ``train`` runs, Hydra has already replaced the old run's record of its config with the new one.
    Registered in conf/train.yaml under ``hydra.callbacks``. Hydra turns an exception raised in a callback into
    a warning and goes on, so the refusal leaves through SystemExit (exit status 1, the message on stderr)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            refuse_new_run_over_another(Path(OmegaConf.select(config, "hydra.run.dir")), config.get("resume"))
        except FileExistsError as error:
            raise SystemExit(f"error: {error}") from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # A sweep into a sweep folder used before: its jobs' folders (0/, 1/ ...) would be overwritten.
        sweep_dir = Path(OmegaConf.select(config, "hydra.sweep.dir"))
        held = sorted(path for job_dir in sweep_dir.glob("*") for path in run_checkpoints(job_dir))
        if held and not config.get("resume"):
            raise SystemExit(
                f"error: the sweep folder {sweep_dir} already holds runs ({held[0].relative_to(sweep_dir)}), which "
                "this sweep would overwrite: give it another hydra.sweep.dir, or leave it out for a new dated folder"
            )


def resume_checkpoint(ckpt_path: str | None, resume: str | None, output_dir: str | None = None) -> str | None:
    """The checkpoint ``trainer.fit`` resumes from.

    ``ckpt_path=FILE`` resumes from that file into a new run folder; ``resume=RUN_DIR`` continues the
    run in its own folder (``hydra.run.dir`` is set to RUN_DIR by conf/train.yaml) from
    ``RUN_DIR/checkpoints/last.ckpt`` (or ``on_exception.ckpt`` when a failure saved a later state: more optimizer
    steps), or starts it if neither exists yet, so the same command can be re-submitted after every preemption.
    A new run in ``output_dir`` that already holds a run's checkpoints (a ``hydra.run.dir`` given twice) is
    refused: it would overwrite them.
    """
    if ckpt_path and resume:
        raise ValueError("give either ckpt_path=FILE (resume into a new run folder) or resume=RUN_DIR, not both")
    if ckpt_path:
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        return str(ckpt_path)
    if output_dir is not None:
        refuse_new_run_over_another(Path(output_dir), resume)
    if not resume:
        return None
    run_dir = Path(resume)
    if run_dir.is_file():
        raise ValueError(f"resume= takes a run folder, got the file {run_dir}; use ckpt_path={run_dir}")
    held = run_checkpoints(run_dir)
    if held:
        # The further one: a run that failed after its last.ckpt continues from the state saved at the failure.
        latest = max(held, key=_progress)
        log.info("resuming from %s", latest)
        return str(latest)
    log.info("resume=%s: no %s yet, starting the run there", run_dir, LAST_CHECKPOINT)
    return None


def optimizer_layout_mismatch(checkpoint: dict, optimizer_groups: dict[str, Any]) -> str | None:
    """Why the checkpoint's optimizer states cannot be restored into optimizers over ``optimizer_groups`` (a
    model's ``optimizer_groups()``); None when they can. A state holds one entry per parameter (Adam's moments), in
    the order of its parameter groups, so the optimizers and their parameter counts must match; a config change
    can move parameters between optimizers (e.g. InfoGAN's ``model.info_in_discriminator_step``)."""
    saved = checkpoint.get("optimizer_states")
    if saved is None:  # a weights-only checkpoint: nothing to restore
        return None

    def count(params) -> int:
        return sum(len(list(item["params"])) if isinstance(item, dict) else 1 for item in params)

    wanted = {name: count(params) for name, params in optimizer_groups.items()}
    found = [sum(len(group["params"]) for group in state["param_groups"]) for state in saved]
    if found == list(wanted.values()):
        return None
    return (f"its {len(found)} optimizer(s) hold {', '.join(map(str, found))} parameter tensors, this config's "
            + ", ".join(f"{name} {number}" for name, number in wanted.items()))


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."if isinstance(value, dict) else f"{prefix}{key}"))
    return flat


IGNORED_ON_RESUME = ("paths.", "ckpt_path", "resume", "trainer.max_epochs", "trainer.max_steps")
# Listed first: what the model is and how it learns. Top-level groups (loss, optim, ...) repeat under model.
MODEL_KEYS = ("model.", "data.")


def config_changes(saved: dict, current: dict) -> list[str]:
    """Keys whose value differs between the checkpoint's run config and the resuming one, model and data keys
    first. A path inside the run folder (a checkpoint dirpath, say) counts as the same when only that folder
    differs: a resume into a new folder moves them all."""
    old, new = _flatten(saved), _flatten(current)
    old_dir, new_dir = old.get("paths.output_dir"), new.get("paths.output_dir")

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, str) and isinstance(b, str) and old_dir and new_dir:
            a = new_dir + a[len(old_dir):] if a.startswith(old_dir) else a
        return a == b

    changed = [
        key for key in set(old) | set(new)
        if not key.startswith(IGNORED_ON_RESUME) and not same(old.get(key, "<unset>"), new.get(key, "<unset>"))
    ]
    return sorted(changed, key=lambda key: (not key.startswith(MODEL_KEYS), key))


def describe_changes(changed: list[str], shown: int = 10) -> str:
    """The first ``shown`` changed keys, and how many more there are."""
    more = f" and {len(changed) - shown} more" if len(changed) > shown else ""
    return (", ".join(changed[:shown]) or "none") + more
