"""What the models that generate from noise (and labels) share: DCGAN, cGAN, InfoGAN, AAE.

The contract that sampling, export and evaluation use (no list of model names anywhere):

- ``latent(n, labels=None, generator=None) -> dict[str, Tensor]``: the named inputs of the sampling network
  (e.g. ``{"z": N x 100}`` or ``{"z": ..., "labels": long N}``), noise drawn from ``generator`` (a CPU
  ``torch.Generator``; None: the global RNG);
- ``sampling_network() -> nn.Module``: called with those inputs in that order, returns images in [-1, 1];
- ``sample(n, labels=None, generator=None)``: both together;
- ``num_classes``: how many values ``labels`` may take (0: the model takes none); ``labels_are_classes``: the
  labels are the data's classes (cGAN, supervised AAE) rather than an unsupervised code (InfoGAN's categorical
  code, whose values match classes only up to a permutation);
- ``figures() -> dict[str, Tensor]``: extra images (3 x H x W in [0, 1]) written during training by
  ``gan_translate.callbacks.ModelFigures`` (latent traversals, latent scatter plots).

Batches are ``{"image": N x C x H x W in [-1, 1], "label": long N}`` (gan_translate.data.classes).
Sample grids use noise fixed at construction and kept as buffers, so the grids of successive epochs (and of a
resumed run) show the same latent points, and a checkpoint carries them.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from gan_translate.callbacks import sample_grid
from gan_translate.models.base import GANModule
from gan_translate.ranges import PositiveInt

LabelsArg = int | Sequence[int] | torch.Tensor | None


class GenerativeGAN(GANModule):
    """Base of the noise-to-image models: sampling, fixed sample noise, validation on samples."""

    paired = False  # validation compares sample distributions (FID/KID), not pixel-aligned targets
    labels_are_classes = False

    def __init__(
        self, optimizer, scheduler=None, image_size: int = 28, channels: int = 1, num_classes: int = 0,
        num_samples: PositiveInt = 64, sample_seed: int = 0, **kwargs,
    ) -> None:
        metrics = kwargs.get("metrics")
        if num_classes and not self.labels_are_classes and takes_argument(metrics, "num_codes"):
            # An unsupervised code (InfoGAN) has as many values as the model says, whatever the data's classes.
            kwargs["metrics"] = functools.partial(metrics, num_codes=num_classes)
        super().__init__(optimizer, scheduler, input_nc=channels, output_nc=channels, **kwargs)
        if num_samples < 1:
            raise ValueError(f"model.num_samples must be >= 1, got {num_samples}")
        self.image_size, self.channels, self.num_classes = image_size, channels, num_classes
        self.num_samples, self.sample_seed = num_samples, sample_seed

    # ----- the sampling contract -----
    def latent(self, n: int, labels: LabelsArg = None, generator: torch.Generator | None = None) -> dict:
        raise NotImplementedError

    def sampling_network(self) -> nn.Module:
        raise NotImplementedError

    def sample(self, n: int, labels: LabelsArg = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` images in [-1, 1] (the caller chooses train/eval mode, e.g. ``with model.evaluating()``)."""
        return self.sampling_network()(*self.latent(n, labels, generator).values())

    def figures(self) -> dict[str, torch.Tensor]:
        return {}

    def generator_for(self, direction: str | None = None) -> nn.Module:
        raise ValueError(
            f"{type(self).__name__} generates images from noise; it does not translate images. Use "
            "`python -m gan_translate.sample ckpt_path=...` or gan_translate.sampler.Sampler instead."
        )

    # ----- helpers for subclasses -----
    def fixed_generator(self) -> torch.Generator:
        """A generator seeded with ``sample_seed``: the fixed noise is the same whatever the run's seed, and
        drawing it leaves the global random state (which the weights' initialisation uses) untouched."""
        return torch.Generator().manual_seed(self.sample_seed)

    def fixed(self, *shape: int) -> torch.Tensor:
        """Standard normal noise for the sample-grid buffers."""
        return torch.randn(*shape, generator=self.fixed_generator())

    def noise(self, *shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(self.device) if generator else torch.randn(
            *shape, device=self.device
        )

    def uniform(self, *shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform in [-1, 1]."""
        values = torch.rand(*shape, generator=generator) if generator else torch.rand(*shape, device=self.device)
        return (values * 2 - 1).to(self.device)

    def labels(self, n: int, labels: LabelsArg, what: str = "labels") -> torch.Tensor | None:
        """``labels`` as a long tensor of ``n`` values in [0, num_classes): None -> 0, 1, 2, ... cycling through
        the classes, an int -> that value n times. None for a model that takes no labels."""
        name = type(self).__name__
        if not self.num_classes:
            if labels is not None:
                raise ValueError(f"{name} is unconditional: it takes no {what}")
            return None
        if labels is None:
            values = torch.arange(n) % self.num_classes
        elif isinstance(labels, int):
            values = torch.full((n,), labels, dtype=torch.long)
        else:
            values = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
            if values.numel() != n:
                raise ValueError(f"{name}: {values.numel()} {what} given for n={n} samples")
        if values.numel() and (values.min() < 0 or values.max() >= self.num_classes):
            raise ValueError(f"{name}: {what} must lie in 0..{self.num_classes - 1}, got {values.unique().tolist()}")
        return values.to(self.device)

    def networks(self) -> dict[str, nn.Module]:
        return {name: module for name, module in self.named_children() if name != "metrics" and name != "loss"}

    # ----- validation: losses of the sampled batch and the sample-distribution metrics -----
    def update_metrics(self, fake: torch.Tensor, real: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        """``labels``: what each sample was generated for, the data's classes (cGAN, supervised AAE: scored as
        ``class_accuracy``) or the values of an unsupervised code (InfoGAN: ``code_accuracy`` after matching),
        passed on to metrics that take them (``GenerativeMetrics``)."""
        if not self._metrics_active:
            return
        key = "labels" if self.labels_are_classes else "codes"
        if labels is not None and key in getattr(self.metrics, "needs", set()):
            self.metrics.update(fake, real, **{key: labels})
        else:
            super().update_metrics(fake, real)

    def validation_noise(self, batch_idx: int) -> torch.Generator:
        """The same noise at every validation (comparable epochs), without touching the global random state."""
        return torch.Generator().manual_seed(10_000 + batch_idx)


def takes_argument(factory: Callable | None, name: str) -> bool:
    """Whether a (partial) factory such as a Hydra ``_partial_`` metrics config accepts keyword ``name``."""
    if factory is None or isinstance(factory, nn.Module):
        return False
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def grid_columns(images: torch.Tensor, columns: int) -> dict[str, torch.Tensor]:
    """``rows * columns`` images (row-major) as the column dict that ``sample_grid`` lays out."""
    rows = images.size(0) // columns
    images = images[: rows * columns].unflatten(0, (rows, columns))
    return {f"{column}": images[:, column] for column in range(columns)}


def square_columns(n: int) -> int:
    return max(1, round(math.sqrt(n)))


def as_grid(columns: dict[str, torch.Tensor]) -> torch.Tensor:
    return sample_grid(columns)
