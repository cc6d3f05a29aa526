"""Export a trained generator to ONNX or TorchScript, for serving without gan_translate.

    python -m gan_translate.export ckpt_path=X format=onnx|torchscript [output=PATH] [direction=AtoB|BtoA]

The exported graph is the generator in eval mode: dropout off, and batch norm as predict uses it (the model's
``test_batch_stats`` unless ``batch_stats`` says otherwise): normalising with the running statistics learned in
training, or (``batch_stats=true``) with each input batch's own statistics, like ``Translator(batch_stats=True)``.
The reference's ONNX export traces train-mode layers, so its outputs depend on the batch and on random dropout.

Models that generate from noise (DCGAN, cGAN, InfoGAN, AAE: they have ``sampling_network()`` and ``latent()``)
export their sampling network instead: inputs named as the model's latent parts (``z`` N x latent_dim float32,
``labels`` int64 N for class-conditional models; InfoGAN: ``z``, ``code`` int64, ``continuous``), output ``image``
N x C x H x W in [-1, 1], dynamic batch size; the metadata describes each input.

Input: ``N x C x H x W`` float32 in [-1, 1]; output: ``N x output_nc x H x W`` in [-1, 1]. Batch size and
spatial size are dynamic; H and W must be multiples of the generator's ``size_divisor`` (U-Net:
2**num_downs, e.g. 64 for unet_64, 256 for unet_256; ResNet: 4) and at least ``min_size``, both stored in the
file's metadata (ONNX metadata_props / TorchScript extra file ``gan_translate.json``) with ``direction`` and
``input_nc``. Pad or resize other sizes first. pix2pixHD on label maps (``data.label_nc`` > 0) takes 1 channel,
the class ids as an 8-bit grey image (``ids / 127.5 - 1``); its instance-feature encoder models are not
exportable (their cluster lookup has no ONNX form).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import warnings
from pathlib import Path

import hydra
import torch
from hydra.utils import get_class
from omegaconf import DictConfig
from torch import nn

from gan_translate.checkpoint import load_checkpoint, model_from_checkpoint
from gan_translate.config import CONF_DIR
from gan_translate.errors import usage_errors_as_messages
from gan_translate.known_warnings import silence_known_warnings
from gan_translate.models.base import CHECKPOINT_KEY
from gan_translate.networks.pix2pixhd import encode_label_ids
from gan_translate.translator import Translator

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
log = logging.getLogger(__name__)


class BatchStatisticsNorm(nn.Module):
    """Batch norm that always uses the current batch's mean and variance (plain ops, so it exports)."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.eps = norm.eps
        channels = norm.num_features
        weight = norm.weight.detach().clone() if norm.affine else torch.ones(channels)
        bias = norm.bias.detach().clone() if norm.affine else torch.zeros(channels)
        self.register_buffer("weight", weight.view(1, -1, 1, 1))
        self.register_buffer("bias", bias.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


def with_batch_statistics(module: nn.Module) -> nn.Module:
    """Replace every batch norm in ``module`` (in place) by a :class:`BatchStatisticsNorm`."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, BatchStatisticsNorm(child))
        else:
            with_batch_statistics(child)
    return module


def default_output(ckpt_path: str | Path, fmt: str, direction: str | None) -> Path:
    ckpt_path = Path(ckpt_path)
    suffix = f"_{direction}" if direction else ""
    return ckpt_path.with_name(f"{ckpt_path.stem}{suffix}{FORMATS[fmt]}")


def export_generator(
    ckpt_path: str | Path,
    format: str = "onnx",
    output: str | Path | None = None,
    direction: str | None = None,
    batch_stats: bool | None = None,
    example_size: int | None = None,
    opset: int = 17,
) -> Path:
    """Write the generator of ``ckpt_path`` as ONNX or TorchScript and return the file's path.
    ``batch_stats=None`` follows the model's ``test_batch_stats``, as predict, evaluate and validation do."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {format!r}")
    saved = load_checkpoint(ckpt_path)[CHECKPOINT_KEY]
    model_class = get_class(saved["model_class"])
    if batch_stats is None:
        batch_stats = bool(saved["config"]["model"].get("test_batch_stats", False))
    if callable(getattr(model_class, "sampling_network", None)):  # generates from noise (and labels)
        if direction is not None:
            raise ValueError(f"{model_class.__name__} generates from noise; direction={direction!r} does not apply")
        return export_sampling_network(ckpt_path, format, output, batch_stats, opset)
    # Running statistics here; batch statistics, when wanted, by with_batch_statistics (a form that traces).
    translator = Translator.from_checkpoint(ckpt_path, direction=direction, device="cpu", batch_stats=False)
    generator = translator.generator  # an eval-mode copy without gradients
    if getattr(generator, "feat_num", 0):
        raise ValueError(
            f"{ckpt_path}: a pix2pixHD model with the instance-feature encoder (model.feature_encoder=true) cannot be "
            "exported: its per-instance cluster lookup (unique/bincount over the regions, a random cluster each) "
            "has no ONNX or traced form; use gan_translate.predict or Translator on its checkpoint"
        )
    if batch_stats:
        generator = with_batch_statistics(generator)
    divisor = translator.size_divisor
    size = example_size or translator.train_size or divisor
    size = translator.size_rule.at_least(size)  # the next size the generator can take
    # Two images: a batch of one lets tracing treat the batch size as a constant. A label-map model's input is
    # class ids (encoded as an 8-bit grey image), and its generator checks them: the example holds valid ids.
    example_shape = (2, translator.input_nc, size, size)
    if translator.label_nc:
        example = encode_label_ids(torch.randint(0, translator.label_nc, example_shape))
    else:
        example = torch.zeros(example_shape).uniform_(-1, 1)
    metadata = {
        "input_nc": translator.input_nc,
        "size_divisor": divisor,
        "min_size": translator.size_rule.smallest,
        "direction": direction or translator.config.get("data", {}).get("direction") or "AtoB",
        "value_range": [-1, 1],
        "normalization": "batch_statistics" if batch_stats else "running_statistics",
        "source_checkpoint": Path(ckpt_path).name,
    }
    if translator.instance_channels:
        # The trace takes the label map alone, so the generator's boundary input comes from the class ids: the
        # objects of one class that touch merge (predict and evaluate take instance maps; the export does not).
        metadata["instance_boundaries"] = "from the class ids (no instance-map input)"
    output = Path(output) if output else default_output(ckpt_path, format, direction)
    output.parent.mkdir(parents=True, exist_ok=True)
    if format == "onnx":
        export_onnx(generator, example, output, metadata, opset)
    else:
        export_torchscript(generator, example, output, metadata)
    log.info("wrote %s (%s; H and W must be multiples of %d, at least %d)", output, format, divisor,
             translator.size_rule.smallest)
    return output


def export_sampling_network(
    ckpt_path: str | Path, format: str = "onnx", output: str | Path | None = None, batch_stats: bool = False,
    opset: int = 17,
) -> Path:
    """Write a noise-to-image model's sampling network, inputs (z[, labels ...]) -> image, and return the path."""
    model = model_from_checkpoint(ckpt_path)
    network = copy.deepcopy(model.sampling_network()).eval().requires_grad_(False)
    if batch_stats:
        network = with_batch_statistics(network)
    # Two samples: a batch of one lets tracing treat the batch size as a constant.
    example = model.latent(2, generator=torch.Generator().manual_seed(0))
    metadata = {
        "model": type(model).__name__,
        "inputs": {name: {"shape": ["batch", *value.shape[1:]], "dtype": str(value.dtype).removeprefix("torch.")}
                   for name, value in example.items()},
        "num_classes": model.num_classes,
        "labels_are_classes": bool(model.labels_are_classes),
        "image_size": model.image_size,
        "channels": model.channels,
        "value_range": [-1, 1],
        "normalization": "batch_statistics" if batch_stats else "running_statistics",
        "source_checkpoint": Path(ckpt_path).name,
    }
    output = Path(output) if output else default_output(ckpt_path, format, None)
    output.parent.mkdir(parents=True, exist_ok=True)
    inputs = tuple(example.values())
    if format == "onnx":
        try:
            import onnx
        except ImportError as error:
            raise ImportError("ONNX export needs the onnx package: pip install 'gan_translate[export]'") from error
        names = list(example)
        with quiet_tracing():
            torch.onnx.export(
                network, inputs, str(output), dynamo=False, input_names=names, output_names=["image"],
                dynamic_axes={name: {0: "batch"} for name in [*names, "image"]}, opset_version=opset,
            )
        onnx_model = onnx.load(str(output))
        for key, value in metadata.items():
            onnx_model.metadata_props.add(key=key, value=json.dumps(value))
        onnx.checker.check_model(onnx_model)
        onnx.save(onnx_model, str(output))
    else:
        with quiet_tracing():
            traced = torch.jit.trace(network, inputs)
            torch.jit.save(traced, str(output), _extra_files={"gan_translate.json": json.dumps(metadata)})
    log.info("wrote %s (%s; inputs %s -> image)", output, format, ", ".join(example))
    return output


@contextlib.contextmanager
def quiet_tracing():
    """Hide tracing notes that do not apply here: the exporter's deprecation notice, instance norm's
    size check (a trace-time constant) and 'instance_norm train=True' (it always uses input statistics)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*(instance_norm|Constant folding).*", category=UserWarning)
        yield


def export_onnx(generator: nn.Module, example: torch.Tensor, output: Path, metadata: dict, opset: int) -> None:
    try:
        import onnx
    except ImportError as error:
        raise ImportError("ONNX export needs the onnx package: pip install 'gan_translate[export]'") from error
    axes = {0: "batch", 2: "height", 3: "width"}
    # The TorchScript-based exporter: it keeps batch, height and width dynamic for these conv nets and
    # needs no onnxscript; the dynamo exporter specialises the U-Net's spatial size in torch 2.x.
    with quiet_tracing():
        torch.onnx.export(
            generator,
            (example,),
            str(output),
            dynamo=False,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": axes, "output": axes},
            opset_version=opset,
        )
    model = onnx.load(str(output))
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=json.dumps(value))
    onnx.checker.check_model(model)
    onnx.save(model, str(output))


def export_torchscript(generator: nn.Module, example: torch.Tensor, output: Path, metadata: dict) -> None:
    with quiet_tracing():
        traced = torch.jit.trace(generator, example)
        torch.jit.save(traced, str(output), _extra_files={"gan_translate.json": json.dumps(metadata)})


@hydra.main(config_path=CONF_DIR, config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> Path:
    silence_known_warnings()
    with usage_errors_as_messages():
        return export_generator(
            cfg.ckpt_path,
            format=cfg.format,
            output=cfg.output,
            direction=cfg.direction,
            batch_stats=cfg.batch_stats,
            example_size=cfg.example_size,
            opset=cfg.opset,
        )


if __name__ == "__main__":
    main()
