"""A user extension: pix2pix with a total-variation penalty on G's output (smoother, less speckled images).

Only the generator's objective changes, so only ``generator_loss_terms`` is overridden; networks, the
discriminator step, logging, checkpoints and prediction are inherited. Select it with ``model=pix2pix_tv``
(conf/model/pix2pix_tv.yaml) and run from the repository root so that ``examples`` is importable:

    python -m gan_translate.train model=pix2pix_tv model.lambda_tv=0.5
"""

from __future__ import annotations

import torch

from gan_translate.models import Pix2Pix


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertically and horizontally neighbouring pixels."""
    images = images.float()
    vertical = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    horizontal = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    return vertical + horizontal


class Pix2PixTV(Pix2Pix):
    """pix2pix + ``lambda_tv * TV(G(A))``; logged as ``train/loss_G_TV``."""

    def __init__(self, *args, lambda_tv: float = 1.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if lambda_tv < 0:
            raise ValueError(f"model.lambda_tv must be >= 0, got {lambda_tv}")
        self.lambda_tv = lambda_tv

    def generator_loss_terms(self, real_a, real_b, fake_b) -> dict[str, torch.Tensor]:
        terms = super().generator_loss_terms(real_a, real_b, fake_b)
        terms["loss_G_TV"] = self.lambda_tv * total_variation(fake_b)
        return terms
