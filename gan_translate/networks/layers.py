"""Normalisation layers, weight initialisation and one-hot codes shared by generators and discriminators."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

NormFactory = Callable[[int], nn.Module]


def norm_layer(norm: str) -> NormFactory:
    """Return a factory ``channels -> nn.Module`` for ``batch``, ``instance`` or ``none``.

    Instance norm has no affine parameters and no running stats, as in the CycleGAN paper; batch norm
    keeps both, as in pix2pix.
    """
    if norm == "batch":
        return functools.partial(nn.BatchNorm2d, affine=True, track_running_stats=True)
    if norm == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if norm == "none":
        return lambda channels: nn.Identity()
    raise ValueError(f"norm must be one of 'batch', 'instance', 'none', got {norm!r}")


def uses_bias(norm: str) -> bool:
    """A conv followed by batch norm needs no bias (the norm's shift replaces it); otherwise it does."""
    return norm != "batch"


def init_weights(net: nn.Module, init_type: str = "normal", init_gain: float = 0.02) -> nn.Module:
    """Initialise conv/linear weights in place (pix2pix/CycleGAN use N(0, 0.02)); norm weights ~ N(1, gain)."""
    initialisers = {
        "normal": lambda w: nn.init.normal_(w, 0.0, init_gain),
        "xavier": lambda w: nn.init.xavier_normal_(w, gain=init_gain),
        "kaiming": lambda w: nn.init.kaiming_normal_(w, a=0, mode="fan_in"),
        "orthogonal": lambda w: nn.init.orthogonal_(w, gain=init_gain),
    }
    if init_type not in initialisers:
        raise ValueError(f"init_type must be one of {sorted(initialisers)}, got {init_type!r}")
    initialise = initialisers[init_type]

    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            initialise(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d) and module.affine:
            nn.init.normal_(module.weight, 1.0, init_gain)
            nn.init.zeros_(module.bias)
    return net


def use_batch_statistics(net: nn.Module) -> Callable[[], None]:
    """Make every batch norm in ``net`` normalise with the statistics of the batch it sees, as the
    reference pix2pix test script does (it never calls eval(); with batch size 1 this is instance norm),
    without changing the stored running statistics. Returns a function that undoes it (back to eval)."""
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.train()
        layer.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: the stored statistics stay as they are

    def restore() -> None:
        for layer, momentum in zip(layers, momenta, strict=True):
            layer.momentum = momentum
            layer.eval()

    return restore


def one_hot(indices: torch.Tensor, num_classes: int, dim: int = -1) -> torch.Tensor:
    """Float one-hot codes of ``indices`` along a new axis at ``dim``, without reading the indices on the host.

    ``F.one_hot`` checks the range on the host on CPUs (not on CUDA). With this the step does the same on every
    device, so the CPU check of model.step_graph (no host reads in a captured step) holds for the GPU too. Indices
    out of range still fail, in the scatter."""
    dim = dim if dim >= 0 else indices.ndim + 1 + dim
    index = indices.unsqueeze(dim)
    shape = list(index.shape)
    shape[dim] = num_classes
    return torch.zeros(shape, device=indices.device).scatter_(dim, index, 1.0)
