"""Image history buffer (Shrivastava et al. 2017), used by CycleGAN to show D past fakes as well."""

from __future__ import annotations

import torch


class ImagePool:
    """Holds up to ``size`` generated images. Once full, each queried image is, with probability 1/2,
    swapped for a random stored one (which is returned instead). ``size=0`` disables the pool.

    The images, their count and every choice stay on the images' device: a query reads nothing on the host, so
    it runs inside a captured training step (``model.step_graph``) and never waits for the GPU. The random
    choices come from the device's generator, one swap draw and one index draw per image, also while filling.

    The pool lives on its process: under DDP each rank keeps its own pool (one per process). Its content
    is saved in checkpoints (see CycleGAN.on_save_checkpoint) so that a resumed run continues with it.
    """

    def __init__(self, size: int = 50) -> None:
        if size < 0:
            raise ValueError(f"model.pool_size must be >= 0, got {size}")
        self.size = size
        self.images: torch.Tensor | None = None  # size x C x H x W, allocated by the first query
        self.count: torch.Tensor | None = None  # images stored so far (0-dim, on the images' device)

    def __len__(self) -> int:
        return 0 if self.count is None else int(self.count)  # a host read: not for training steps

    def stored(self) -> torch.Tensor:
        """The images held, in the order they were stored (N x C x H x W; N = 0 for an empty pool)."""
        return self.images[: len(self)] if self.images is not None else torch.empty(0)

    def _storage_for(self, images: torch.Tensor) -> None:
        if self.images is None or self.images.shape[1:] != images.shape[1:]:
            self.images = images.new_zeros(self.size, *images.shape[1:])
            self.count = torch.zeros((), dtype=torch.long, device=images.device)
        elif self.images.device != images.device:  # restored from a checkpoint before the move to the device
            self.images, self.count = self.images.to(images.device), self.count.to(images.device)

    @torch.no_grad()
    def query(self, images: torch.Tensor, bad: torch.Tensor | None = None) -> torch.Tensor:
        """``bad``: a 0-dim bool device flag (the deferred non-finite guard's) saying that ``images`` must not
        be kept: a swap then writes the old image back, and while the pool is still filling, a grey image
        (zeros) stands in."""
        if self.size == 0:
            return images.detach()
        self._storage_for(images)
        returned = []
        for image in images.detach():
            filling = self.count < self.size
            swap = ~filling & (torch.rand((), device=image.device) < 0.5)
            index = torch.where(filling, self.count, torch.randint(self.size, (), device=image.device)).view(1)
            old = self.images.index_select(0, index)[0].to(image.dtype)
            returned.append(torch.where(swap, old, image))
            kept = image if bad is None else torch.where(bad, torch.where(filling, 0.0, old), image)
            written = torch.where(filling | swap, kept, old)  # neither: the slot keeps its image
            self.images.index_copy_(0, index, written[None].to(self.images.dtype))
            self.count.add_(filling.long())
        return torch.stack(returned)

    def state_dict(self) -> dict:
        return {"size": self.size, "images": self.stored().cpu()}

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        stored = state["images"][: self.size]
        if stored.numel() == 0:
            self.images = self.count = None
            return
        self.images = stored.new_zeros(self.size, *stored.shape[1:])
        self.images[: len(stored)] = stored
        self.count = torch.tensor(len(stored))
        if device is not None:
            self.images, self.count = self.images.to(device), self.count.to(device)
