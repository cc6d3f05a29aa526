"""New images from a trained noise-to-image model (DCGAN, cGAN, InfoGAN, AAE), from its checkpoint alone:

    sampler = Sampler.from_checkpoint("run/checkpoints/last.ckpt")
    images = sampler(n=16, labels=3, seed=0)        # 16 x C x H x W in [-1, 1]
    sampler.grid(n=64, seed=0).save("grid.png")     # a PIL image

``labels``: a class (cGAN, supervised AAE) or a value of the categorical code (InfoGAN), one int for all samples
or one per sample; None cycles through all values (0, 1, ..., K-1, 0, ...), so a grid with K columns shows one
class per column. Unconditional models (DCGAN, AAE) take none. Batch norm follows the model's
``test_batch_stats`` (running statistics by default).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import make_grid

from gan_translate.checkpoint import CheckpointError, model_from_checkpoint
from gan_translate.data.transforms import to_uint8
from gan_translate.translator import _resolve_device


class Sampler:
    """Draws samples from a model that has ``latent``/``sampling_network`` (see gan_translate.models.generative).
    The sampler owns the model: it moves it to ``device`` and freezes it."""

    def __init__(self, model, device: str | torch.device = "auto", batch_size: int = 256) -> None:
        if not callable(getattr(model, "sampling_network", None)):
            raise CheckpointError(
                f"{type(model).__name__} has no sampling_network(): a translation model goes to "
                "gan_translate.Translator / `python -m gan_translate.predict`; a model that generates from noise "
                "subclasses gan_translate.models.generative.GenerativeGAN, which asks for latent() and "
                "sampling_network()"
            )
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.batch_size = batch_size

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> Sampler:
        model = model_from_checkpoint(path)  # its own errors name the file
        try:
            return cls(model, **kwargs)
        except CheckpointError as error:  # a translation model's checkpoint: say which file
            raise CheckpointError(f"{path}: {error}") from error

    @property
    def num_classes(self) -> int:
        """How many values ``labels`` may take (0: none)."""
        return self.model.num_classes

    @torch.no_grad()
    def __call__(self, n: int = 16, labels=None, seed: int | None = None) -> torch.Tensor:
        """``n`` images, N x C x H x W in [-1, 1] on the CPU. With a ``seed``, sample ``i`` depends only on the seed,
        ``i`` and its label: the same whatever ``n`` and ``batch_size`` (the first 10 of 20 are the 10 of n=10)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        labels = self.model.labels(n, labels)  # checks the labels and expands None / an int to n values
        if seed is None:
            latent = self.model.latent(n, labels)
        else:  # one generator per sample, seeded from (seed, i) by numpy's SeedSequence (stable across versions)
            seeds = np.random.SeedSequence(seed % 2**64).spawn(n)
            parts = [self.model.latent(1, None if labels is None else labels[i : i + 1],
                                       torch.Generator().manual_seed(int(seeds[i].generate_state(1, np.uint64)[0])))
                     for i in range(n)]
            latent = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        chunks = []
        with self.model.evaluating():
            network = self.model.sampling_network()
            for start in range(0, n, self.batch_size):
                batch = [value[start : start + self.batch_size] for value in latent.values()]
                chunks.append(network(*batch).float().clamp(-1, 1).cpu())
        return torch.cat(chunks)

    def grid(self, n: int = 64, labels=None, seed: int | None = None, nrow: int | None = None) -> Image.Image:
        """A PIL grid of ``n`` samples; ``nrow`` images per row (default: the number of classes for
        conditional models, so that each column is a class, else about sqrt(n))."""
        images = self(n, labels, seed)
        nrow = nrow or (self.num_classes if self.num_classes and labels is None else max(1, round(n**0.5)))
        return TF.to_pil_image(to_uint8(make_grid(images, nrow=nrow, padding=2, pad_value=1.0)))

    @staticmethod
    def to_pil(images: torch.Tensor) -> list[Image.Image]:
        return [TF.to_pil_image(to_uint8(image)) for image in images]
