"""A training DataLoader whose position is part of every checkpoint, so that a run resumed mid-epoch
draws exactly the batches the uninterrupted run would have drawn.

Three pieces, each doing one job:
- ``ResumableShuffle``: the epoch's order is a pure function of (seed, epoch) (DistributedSampler's rule,
  so DDP ranks split it as usual), and every drawn index carries its own augmentation seed, a hash of
  (seed, epoch, index). Its state (seed, epoch, samples yielded) is the loader's whole position.
- ``SeededItems``: reads item ``(index, seed)`` with Python's and torch's global RNGs seeded by that seed,
  and puts them back afterwards. Random crops and flips (torchvision v2 draws from torch's global RNG) and
  CycleGAN's random B image are then a function of the item's seed: the same with 0 or N workers, in any
  worker, before or after a resume; and with ``num_workers=0`` loading never shifts the random stream of
  the model (dropout, image pools), which a resume could not replay. NumPy's RNG is left alone: no dataset
  or transform here draws from it.
- ``ResumableLoader``: torchdata's ``StatefulDataLoader``, which Lightning saves in the checkpoint's loop
  state and restores on resume (any loader with ``state_dict``/``load_state_dict``). With workers it
  snapshots the sampler at the batch the training step consumed, not at the batches the workers are
  already preparing.

Worker processes' own random states are not saved: with per-item seeds nothing depends on them.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import warnings
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

from gan_translate.data.images import DataError

log = logging.getLogger(__name__)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of ``epoch``; neighbouring items get unrelated streams."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


class ResumableShuffle(StatefulDistributedSampler):
    """Shuffles like ``DistributedSampler`` (order = f(seed, epoch); Lightning calls ``set_epoch``) and yields
    ``(index, item_seed)`` pairs for ``SeededItems``.

    ``state_dict`` adds the seed and the epoch to torchdata's count of yielded samples: Lightning creates the
    resumed loader's iterator before it calls ``set_epoch``, and workers draw their first indices at once.
    A state saved at the end of an epoch (every batch consumed) resumes at the start of the next one.
    """

    def __init__(
        self, dataset: Dataset, seed: int, batch_size: int = 1, drop_last: bool = False,
        num_replicas: int = 1, rank: int = 0,
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        # Samples an epoch consumes: a dropped last batch draws its samples but is never trained on.
        full_batches = self.num_samples // batch_size * batch_size
        self.samples_per_epoch = full_batches if drop_last else self.num_samples

    def __iter__(self):
        epoch = self.epoch
        for index in super().__iter__():
            yield index, item_seed(self.seed, epoch, index)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.seed, self.epoch = int(state_dict["seed"]), int(state_dict["epoch"])
        if self.next_yielded >= self.samples_per_epoch:  # saved after the epoch's last batch
            self.epoch, self.next_yielded = self.epoch + 1, 0


class SeededItems(Dataset):
    """``dataset[index]`` drawn under the item's own seed, leaving the process's random states untouched."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        # Lightning's isolate_rng and torch.manual_seed also visit NumPy and every accelerator: 10x slower.
        python_state, torch_state = random.getstate(), torch.get_rng_state()
        random.seed(seed)
        torch.default_generator.manual_seed(seed)
        try:
            return self.dataset[index]
        finally:
            random.setstate(python_state)
            torch.set_rng_state(torch_state)


def _saved_workers(state: dict) -> int:
    """The ``num_workers`` a StatefulDataLoader state was saved with (torchdata's layout: single-process
    states hold their counters at the top, multi-process ones in a snapshot that names the worker count)."""
    return int(state.get("_snapshot", {}).get("_main_snapshot", {}).get("_num_workers", 0))


def _saved_sampler_state(state: dict) -> dict | None:
    main = state.get("_snapshot", {}).get("_main_snapshot", state)
    return (main.get("_sampler_iter_state") or {}).get("sampler_state")


class ResumableLoader(StatefulDataLoader):
    """``StatefulDataLoader`` over ``SeededItems`` with a ``ResumableShuffle``.

    torchdata restores a state only with the ``num_workers`` it was saved with. Since the position is all in
    the sampler here, a state from another worker count is resumed from the sampler state alone.
    """

    def __init__(self, *args, **kwargs) -> None:
        with warnings.catch_warnings():  # torchdata 0.11 calls a torch API that torch 2.9+ deprecates
            warnings.filterwarnings("ignore", message=".*set_vital.*")
            super().__init__(*args, **kwargs)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = _saved_workers(state_dict) if state_dict else self.num_workers
        sampler_state = _saved_sampler_state(state_dict) if state_dict else None
        if saved != self.num_workers and sampler_state is not None:
            log.info("resuming the data position saved with num_workers=%d, now %d", saved, self.num_workers)
            super().load_state_dict({})
            self.sampler.load_state_dict(sampler_state)
            return
        super().load_state_dict(state_dict)


def shuffle_seed(trainer=None) -> int:
    """The run's seed (``seed_everything`` exports it), else a fresh one, the same on every DDP rank."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    if seed is not None:
        return int(seed)
    seed = secrets.randbits(31)  # not the global RNG: drawing from it would shift the model's random stream
    return int(trainer.strategy.broadcast(seed)) if trainer is not None else seed


def resumable_loader(
    dataset: Dataset, batch_size: int, trainer=None, drop_last: bool = False, **kwargs
) -> ResumableLoader:
    """The training loader: reshuffled every epoch, augmented per item, resumable mid-epoch. ``trainer`` (the
    datamodule's, when it has one) gives the DDP rank and world size; ``kwargs`` go to the DataLoader."""
    seed = shuffle_seed(trainer)
    replicas = (trainer.distributed_sampler_kwargs if trainer is not None else None) or {}
    sampler = ResumableShuffle(dataset, seed, batch_size, drop_last, **replicas)
    if drop_last and sampler.num_samples < batch_size:
        # Lightning would stop at once with "No training batches" and exit 0: a run that trained nothing.
        per_process = f" per process ({len(dataset)} over {sampler.num_replicas})" if sampler.num_replicas > 1 else ""
        raise DataError(
            f"the training set has {sampler.num_samples} item(s){per_process}, fewer than data.batch_size="
            f"{batch_size}, and data.drop_last=true drops the incomplete batch: there would be no training batch. "
            f"Use data.batch_size<={sampler.num_samples}, data.drop_last=false, or more images"
        )
    if trainer is not None:
        # The epoch Lightning is about to pass to set_epoch. It does so only after creating the first
        # iterator, whose workers start drawing indices at once: a run resumed at an epoch boundary would
        # otherwise prefetch its first batches in epoch 0's order.
        sampler.set_epoch(trainer.fit_loop.epoch_progress.current.processed)
    return ResumableLoader(
        SeededItems(dataset), batch_size=batch_size, sampler=sampler, drop_last=drop_last,
        # Its own generator for the worker base seeds, which would otherwise be drawn from the global RNG
        # whenever an iterator starts (at a different point of the random stream in a resumed run).
        generator=torch.Generator().manual_seed(seed), **kwargs,
    )
