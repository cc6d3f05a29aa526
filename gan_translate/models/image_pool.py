"""Image history buffer (Shrivastava et al. 2017), used by CycleGAN to show D past fakes as well."""

from __future__ import annotations

import torch


class ImagePool:
    """Holds up to ``size`` generated images. Once full, each queried image is, with probability 1/2,
    swapped for a random stored one (which is returned instead). ``size=0`` disables the pool.

    The pool lives on its process: under DDP each rank keeps its own pool (one per process). Its content
    is saved in checkpoints (see CycleGAN.on_save_checkpoint) so that a resumed run continues with it.
    """

    def __init__(self, size: int = 50) -> None:
        if size < 0:
            raise ValueError(f"model.pool_size must be >= 0, got {size}")
        self.size = size
        self.images: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def query(self, images: torch.Tensor, bad: torch.Tensor | None = None) -> torch.Tensor:
        """``bad``: a 0-dim bool device flag (the deferred non-finite guard's) saying that ``images`` must not
        be kept, decided without reading it on the host: a swap then writes the old image back, and while
        the pool is still filling, a grey image (zeros) stands in."""
        if self.size == 0:
            return images.detach()
        returned = []
        for image in images.detach():
            kept = image if bad is None else torch.where(bad, torch.zeros_like(image), image)
            if len(self.images) < self.size:
                self.images.append(kept.clone())
                returned.append(image)
            elif torch.rand(()) < 0.5:
                index = int(torch.randint(len(self.images), ()))
                old = self.images[index].to(image.device)
                returned.append(old)
                self.images[index] = image.clone() if bad is None else torch.where(bad, old, image)
            else:
                returned.append(image)
        return torch.stack(returned)

    def state_dict(self) -> dict:
        stored = torch.stack([image.cpu() for image in self.images]) if self.images else torch.empty(0)
        return {"size": self.size, "images": stored}

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        self.images = [image.to(device) if device else image for image in state["images"]][: self.size]
