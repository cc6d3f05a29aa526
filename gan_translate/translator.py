"""Inference from a checkpoint alone: ``Translator.from_checkpoint(path)(image)``.

Test-time behaviour is explicit (the reference's exports and test script differ silently here):
- ``dropout=False`` (default) gives deterministic outputs; ``dropout=True`` keeps the U-Net's dropout
  active, the pix2pix paper's test-time noise.
- ``batch_stats=False`` normalises with the running statistics learned in training;
  ``batch_stats=True`` uses each input batch's own statistics, as the reference's test script does
  (it never calls eval()), without changing the stored statistics. ``from_checkpoint`` defaults to the
  model's ``test_batch_stats`` (true in the facades paper setting, trained at batch size 1).
- ``size_policy`` for sizes the generator cannot take as they are (U-Net 256 needs multiples of 256, the
  ResNet multiples of 4 and at least 8; see ``gan_translate.sizes``): ``pad`` reflect-pads (replicates, when
  the pad is as large as the image) to the next valid size and crops back (keeps the pixel scale, default);
  ``resize`` resizes to the nearest valid size (the larger one on a tie) and back; ``train_size`` resizes to
  the square training size and back (the scale the model saw in training; only for runs whose training
  images all had one size). Any size down to 1x1 works with every policy.
- ``compile=True`` compiles the generator with inductor's *freezing* (weights become constants: conv and
  batch norm are folded and weights pre-packed for oneDNN): ~1.7x faster on a 2-core CPU for unet_256 at
  256 px. The first call per input shape compiles (tens of seconds); worth it for folders, not one image.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

from gan_translate.checkpoint import model_from_checkpoint
from gan_translate.data.datasets import convert
from gan_translate.data.labels import label_ids_of
from gan_translate.data.transforms import to_uint8
from gan_translate.networks.layers import use_batch_statistics
from gan_translate.networks.pix2pixhd import encode_label_ids
from gan_translate.sizes import SizeRule, train_size_from_config

SIZE_POLICIES = ("pad", "resize", "train_size")


def _resolve_device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class FrozenCompiled(nn.Module):
    """``torch.compile`` of an inference-only network with inductor's freezing on.

    Freezing is an inductor config read when a graph is compiled, i.e. at the first call of each new input
    shape, so it is switched on around every call rather than once (``torch.compile(options=...)``
    does not carry it)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.compiled = torch.compile(network)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config  # ~2 s to import: only when compiling is asked for

        with inductor_config.patch(freezing=True):
            return self.compiled(images)


class Translator:
    """Runs one generator of a trained model on PIL images or tensors in [-1, 1]."""

    def __init__(
        self,
        generator: nn.Module,
        input_nc: int = 3,
        size_divisor: int | None = None,
        train_size: int | None = None,
        min_size: int | None = None,
        device: str | torch.device = "auto",
        precision: str = "32",
        dropout: bool = False,
        batch_stats: bool = False,
        size_policy: str = "pad",
        config: dict | None = None,
        compile: bool = False,
    ) -> None:
        if size_policy not in SIZE_POLICIES:
            raise ValueError(f"size_policy must be one of {SIZE_POLICIES}, got {size_policy!r}")
        if size_policy == "train_size" and not train_size:
            raise ValueError(
                "size_policy=train_size needs the training image size, which this model's run does not fix "
                "(data.preprocess=none or scale_width on files: the sizes varied); use size_policy=pad or "
                "size_policy=resize, or give train_size"
            )
        if precision not in ("32", "bf16", "16"):
            raise ValueError(f"precision must be '32', 'bf16' or '16', got {precision!r}")
        self.device = _resolve_device(device)
        self.generator = self._inference_copy(generator, dropout, batch_stats).to(self.device)
        if compile:
            self.generator = FrozenCompiled(self.generator)
        self.input_nc = input_nc
        # pix2pixHD on label maps: inputs are class ids, read as such and never interpolated.
        self.label_nc: int = getattr(generator, "label_nc", 0)
        # pix2pixHD with instance maps: an instance-map channel may follow the image's channels.
        self.instance_channels = int(bool(getattr(generator, "instance", False)))
        self.size_divisor = size_divisor or getattr(generator, "size_divisor", 1)
        self.min_size = min_size or getattr(generator, "min_size", 1)
        self.size_rule = SizeRule(self.size_divisor, self.min_size)
        self.train_size = train_size
        self.size_policy = size_policy
        self.dtype = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}[precision]
        self.config = config or {}

    @staticmethod
    def _inference_copy(generator: nn.Module, dropout: bool, batch_stats: bool) -> nn.Module:
        generator = copy.deepcopy(generator).eval()
        if batch_stats:
            use_batch_statistics(generator)
        for module in generator.modules():
            if dropout and isinstance(module, nn.Dropout):
                module.train()
        for parameter in generator.parameters():
            parameter.requires_grad_(False)
        return generator

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, direction: str | None = None, batch_stats: bool | None = None, **kwargs
    ) -> Translator:
        """``direction``: CycleGAN AtoB (default) or BtoA; pix2pix translates its trained direction only.
        ``batch_stats=None`` follows the model's ``test_batch_stats``."""
        model = model_from_checkpoint(path)
        config = model.run_config or {}
        data = config.get("data", {})
        try:
            generator = model.generator_for(direction)
        except ValueError as error:  # a noise model's checkpoint, or a direction it does not have: say which file
            raise ValueError(f"{path}: {error}") from error
        return cls(
            generator,
            input_nc=model.source_channels(direction),
            train_size=train_size_from_config(data),
            config=config,
            batch_stats=model.test_batch_stats if batch_stats is None else batch_stats,
            **kwargs,
        )

    # ----- tensors -----
    @torch.no_grad()
    def translate(self, images: torch.Tensor) -> torch.Tensor:
        """N x C x H x W (or C x H x W) in [-1, 1] -> same layout and size, in [-1, 1]."""
        if not torch.is_tensor(images) or images.dim() not in (3, 4) or not images.is_floating_point():
            raise ValueError(
                "Translator expects a float tensor in [-1, 1] shaped C x H x W or N x C x H x W, got "
                f"{getattr(images, 'dtype', type(images).__name__)} of shape {tuple(getattr(images, 'shape', ()))}"
            )
        single = images.dim() == 3
        batch = (images.unsqueeze(0) if single else images).to(self.device, torch.float32)
        if batch.size(1) not in (self.input_nc, self.input_nc + self.instance_channels):
            extra = " (+ 1 instance-map channel)" if self.instance_channels else ""
            raise ValueError(f"the model takes {self.input_nc}-channel images{extra}, got {batch.size(1)} channels")
        height, width = batch.shape[-2:]
        if batch.numel() == 0:
            raise ValueError(f"cannot translate an empty batch of shape {tuple(batch.shape)}")
        batch, restore = self._fit_size(batch)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            output = self.generator(batch)
        output = restore(output.float()).clamp(-1, 1)
        assert output.shape[-2:] == (height, width)
        return output[0] if single else output

    def _fit_size(self, batch: torch.Tensor):
        height, width = batch.shape[-2:]
        rule = self.size_rule
        if self.size_policy == "pad":
            pad_h, pad_w = rule.at_least(height) - height, rule.at_least(width) - width
            if not pad_h and not pad_w:
                return batch, lambda out: out
            # Reflection needs the pad to be smaller than the image; replicate covers tiny inputs.
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            padded = F.pad(batch, (0, pad_w, 0, pad_h), mode=mode)
            return padded, lambda out: out[..., :height, :width]
        if self.size_policy == "train_size":
            size = [rule.nearest(self.train_size)] * 2
        else:
            size = [rule.nearest(height), rule.nearest(width)]
        if size == [height, width]:
            return batch, lambda out: out
        # Class ids and instance ids are resized with nearest: blending them would invent classes and boundaries.
        ids_from = 0 if self.label_nc else self.input_nc
        parts = [TF.resize(batch[:, :ids_from], size, antialias=True)] if ids_from else []
        if batch.size(1) > ids_from:
            parts.append(TF.resize(batch[:, ids_from:], size, interpolation=TF.InterpolationMode.NEAREST))
        resized = torch.cat(parts, 1)
        return resized, lambda out: TF.resize(out, [height, width], antialias=True)

    # ----- PIL -----
    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        if self.label_nc:
            try:
                return encode_label_ids(label_ids_of(image, self.label_nc))
            except ValueError as error:
                raise ValueError(
                    f"this model translates label maps of {self.label_nc} classes (trained with data.label_nc="
                    f"{self.label_nc}): give single-channel PNGs of class ids 0..{self.label_nc - 1}; {error}"
                ) from error
        return TF.to_dtype(TF.to_image(convert(image, self.input_nc)), torch.float32, scale=True) * 2 - 1

    @staticmethod
    def to_pil(image: torch.Tensor) -> Image.Image:
        return TF.to_pil_image(to_uint8(image.cpu()))

    def __call__(self, image: Image.Image | torch.Tensor | list[Image.Image]):
        """PIL image -> PIL image; list of PIL images -> list; tensor in [-1, 1] -> tensor."""
        if isinstance(image, torch.Tensor):
            return self.translate(image)
        if isinstance(image, list):
            return [self(item) for item in image]
        return self.to_pil(self.translate(self.to_tensor(image)))
