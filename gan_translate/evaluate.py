"""Evaluate a checkpoint on a data split, or a folder of generated images against targets.

    python -m gan_translate.evaluate ckpt_path=X [data.root=PATH] [split=test] [direction=AtoB|BtoA] [metrics=full]
    python -m gan_translate.evaluate pred_dir=GENERATED target_dir=TARGETS [metrics=full] [paired=false]
    python -m gan_translate.evaluate ckpt_path=NOISE_MODEL metrics=generative split=val [num_generated=1000]

Writes a JSON report (every metric, number of images, direction, checkpoint, config hash) and, for a
checkpoint, a sample grid (source | output | target) next to it. The model, its preprocessing and its data
layout come from the checkpoint; ``data.root`` points it at another copy of the data.

Models that generate from noise (subclasses of ``GenerativeGAN``: DCGAN, cGAN, InfoGAN, AAE) are scored on
``num_generated`` samples against the real images of the split, with ``metrics=generative``; the grid is then
a grid of samples (one column per label for models that take labels).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader
from torchvision.utils import make_grid, save_image

from gan_translate.callbacks import sample_grid
from gan_translate.checkpoint import model_from_checkpoint
from gan_translate.config import CONF_DIR
from gan_translate.data.datamodule import collate_one_size
from gan_translate.errors import usage_errors_as_messages
from gan_translate.known_warnings import silence_known_warnings
from gan_translate.metrics import build_metrics, evaluate_folders
from gan_translate.metrics.folders import check_enough_images
from gan_translate.models.generative import GenerativeGAN
from gan_translate.sampler import Sampler
from gan_translate.translator import Translator

log = logging.getLogger(__name__)


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def split_dataset(cfg: DictConfig, datamodule, data_cfg: DictConfig, what: str = ""):
    """The split to score. ``split=test`` on data without a test split takes ``val``, as training does (its
    validation reads val/ or test/); the report names the split used."""
    lengths = getattr(datamodule, "lengths", None)  # the embedded datasets: their splits and sizes
    if lengths is not None and cfg.split not in lengths:
        raise ValueError(f"split={cfg.split!r}: the embedded {type(datamodule).__name__} has the splits "
                         f"{sorted(lengths)}")
    dataset = datamodule.make_dataset(cfg.split, train=False)
    if dataset is None and cfg.split == "test":
        dataset = datamodule.make_dataset("val", train=False)
        if dataset is not None:
            log.warning("no test split under data.root=%s: evaluating split 'val'", data_cfg.get("root"))
            cfg.split = "val"
    if dataset is None:
        raise FileNotFoundError(f"split {cfg.split!r} not found under data.root={data_cfg.get('root')}{what}")
    return dataset


def evaluate_checkpoint(cfg: DictConfig) -> tuple[dict, torch.Tensor]:
    """Metrics of the checkpoint's generator on ``cfg.split``; returns the report and a sample grid."""
    model = model_from_checkpoint(cfg.ckpt_path)
    if isinstance(model, GenerativeGAN):
        return evaluate_samples(cfg, model)
    run_config = model.run_config
    data_overrides = {key: value for key, value in (cfg.get("data") or {}).items() if value is not None}
    data_cfg = OmegaConf.merge(run_config["data"], data_overrides)
    datamodule = instantiate(data_cfg)
    dataset = split_dataset(cfg, datamodule, data_cfg)

    direction = cfg.direction
    batch_stats = model.test_batch_stats if cfg.batch_stats is None else cfg.batch_stats
    translator = Translator(
        model.generator_for(direction), input_nc=model.source_channels(direction), device=cfg.device,
        dropout=cfg.dropout, batch_stats=batch_stats, compile=cfg.compile,
    )
    # With batch statistics, each image is normalised on its own, as in the reference's batch-size-1 test.
    batch_size = 1 if batch_stats else cfg.batch_size
    metrics = build_metrics(cfg.metrics, paired=model.paired, l1=True)
    if metrics is None:
        raise ValueError("metrics=none leaves nothing to evaluate; choose metrics=default or metrics=full")
    check_enough_images(metrics, {f"split {cfg.split!r} of {data_cfg.get('root') or type(datamodule).__name__}":
                                  len(dataset)})
    metrics.to(translator.device)

    source_key, target_key = ("B", "A") if direction == "BtoA" else ("A", "B")
    # pix2pixHD trained with instance maps gets the split's instance maps, as in validation (predict, with one
    # file per sample, falls back to the label map's own boundaries).
    with_instances = bool(getattr(model, "instance", False))
    samples: dict[str, list[torch.Tensor]] = {"source": [], "output": [], "target": []}
    count = 0
    if cfg.seed is not None:  # null: not seeded
        torch.manual_seed(cfg.seed)  # test-time dropout, pix2pixHD's cluster draws and KID's subsets repeat
    for batch in DataLoader(dataset, batch_size=batch_size, num_workers=0, collate_fn=collate_one_size):
        source, target = batch[source_key], batch[target_key].to(translator.device)
        inputs = torch.cat([source, batch["inst"].to(source)], 1) if with_instances and "inst" in batch else source
        output = translator.translate(inputs)
        try:
            metrics.update(output, target)
        except ValueError as error:  # e.g. images too small for a metric: say which data
            raise ValueError(f"split {cfg.split!r} of data.root={data_cfg.get('root')}: {error}") from error
        count += source.size(0)
        if sum(len(s) for s in samples["source"]) < cfg.num_samples:
            for name, images in (("source", source), ("output", output), ("target", target)):
                samples[name].append(images.cpu())
    values = metrics.compute()
    grid = sample_grid({name: torch.cat(images)[: cfg.num_samples] for name, images in samples.items()})
    report = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "model": type(model).__name__,
        "split": cfg.split,
        "data_root": str(data_cfg.get("root")) if data_cfg.get("root") else type(datamodule).__name__,
        "direction": direction or run_config["data"].get("direction", "AtoB"),
        "num_images": count,
        "seed": cfg.seed,
        "metrics": values,
        "config_hash": config_hash(run_config),
    }
    return report, grid


def evaluate_samples(cfg: DictConfig, model: GenerativeGAN) -> tuple[dict, torch.Tensor]:
    """A noise model: ``cfg.num_generated`` samples (labels cycling through the model's classes or codes) scored
    by ``metrics=generative`` against the real images of ``cfg.split``."""
    from gan_translate.metrics.generative import GenerativeMetrics

    run_config = model.run_config
    collection = (cfg.metrics or {}).get("collection")
    if collection is None or not issubclass(get_class(collection._target_), GenerativeMetrics):
        raise ValueError(f"{type(model).__name__} generates from noise: evaluate it with metrics=generative "
                         "(classifier score and classifier FID; metrics.collection.fid=true adds the Inception FID)")
    data_overrides = {key: value for key, value in (cfg.get("data") or {}).items() if value is not None}
    data_cfg = OmegaConf.merge(run_config["data"], data_overrides)
    datamodule = instantiate(data_cfg)
    dataset = split_dataset(cfg, datamodule, data_cfg, " (the real images the samples are compared with)")
    overrides: dict = {}
    if not collection.get("data_root"):
        if not data_cfg.get("root"):
            raise ValueError(f"the classifier trains on a class-per-folder dataset, and the checkpoint's data "
                             f"({type(datamodule).__name__}) has no root: set metrics.collection.data_root=PATH")
        overrides["data_root"] = data_cfg.root
    labelled = model.num_classes > 0
    if labelled and not model.labels_are_classes:
        overrides["num_codes"] = model.num_classes  # an unsupervised code (InfoGAN): scored after matching
    metrics = build_metrics(cfg.metrics, **overrides)
    classes = getattr(datamodule, "classes", None)
    if classes is not None and metrics.classifier_record and metrics.classifier_record["classes"] != list(classes):
        raise ValueError(f"the classifier's classes {metrics.classifier_record['classes']} are not the model's "
                         f"data classes {list(classes)} (metrics.collection.data_root={overrides.get('data_root')})")

    sampler = Sampler(model, device=cfg.device, batch_size=max(cfg.batch_size, 100))
    metrics.to(sampler.device)
    num_real = 0
    for batch in DataLoader(dataset, batch_size=cfg.batch_size, num_workers=0, collate_fn=collate_one_size):
        metrics.update(None, real=batch["image"].to(sampler.device))
        num_real += batch["image"].size(0)
    # labels=None cycles through the classes / code values: 0, 1, ..., K-1, 0, ...
    fakes = sampler(cfg.num_generated, seed=cfg.seed)
    labels = torch.arange(cfg.num_generated) % model.num_classes if labelled else None
    for start in range(0, cfg.num_generated, cfg.batch_size):
        part = slice(start, start + cfg.batch_size)
        given = {} if labels is None else {"labels" if model.labels_are_classes else "codes": labels[part]}
        metrics.update(fakes[part].to(sampler.device), **given)
    # The grid: num_samples rows, one column per label (models that take labels) or 10 columns.
    columns = model.num_classes if labelled else 10
    values = metrics.compute()
    grid = make_grid(fakes[: cfg.num_samples * columns].add(1).div(2).clamp(0, 1), nrow=columns, padding=2)
    record = metrics.classifier_record
    report = {
        "checkpoint": str(Path(cfg.ckpt_path).resolve()),
        "model": type(model).__name__,
        "split": cfg.split,
        "data_root": str(data_cfg.get("root")),
        "num_generated": cfg.num_generated,
        "num_real": num_real,
        "seed": cfg.seed,
        "metrics": values,
        "classifier": {key: record.get(key) for key in ("val_accuracy", "classes", "train_images", "cache_file")},
        "config_hash": config_hash(run_config),
    }
    if metrics.code_to_class is not None:
        report["code_to_class"] = metrics.code_to_class
    return report, grid


def evaluate_generated(cfg: DictConfig) -> dict:
    metrics = build_metrics(cfg.metrics, l1=cfg.paired, paired=cfg.paired)
    if metrics is None:
        raise ValueError("metrics=none leaves nothing to evaluate; choose metrics=default or metrics=full")
    if not metrics.output_keys:  # unpaired: only FID/KID, which need the Inception weights
        raise ValueError(
            "paired=false compares the folders with FID/KID only, and no FID weights were found: "
            "python -m gan_translate.weights fetch fid, or set metrics.fid_weights"
        )
    if cfg.seed is not None:
        torch.manual_seed(cfg.seed)  # KID's subsets
    values = evaluate_folders(cfg.pred_dir, cfg.target_dir, metrics, batch_size=cfg.batch_size)
    report = {
        "pred_dir": str(Path(cfg.pred_dir).resolve()),
        "target_dir": str(Path(cfg.target_dir).resolve()),
        "paired": bool(cfg.paired),
        "num_images": values.pop("num_images"),
    }
    if "num_targets" in values:
        report["num_targets"] = values.pop("num_targets")
    report["metrics"] = values
    return report


def default_output(cfg: DictConfig) -> Path:
    if cfg.ckpt_path:
        ckpt = Path(cfg.ckpt_path)
        # RUN/checkpoints/X.ckpt -> RUN/eval/; a checkpoint kept elsewhere gets an eval/ of its own folder (two
        # models/NAME/last.ckpt must not share models/eval/last_test.json).
        run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
        return run / "eval" / f"{ckpt.stem}_{cfg.split}{'_' + cfg.direction if cfg.direction else ''}.json"
    # In the working folder: beside pred_dir could be inside a dataset (pred_dir=horse2zebra/testA). The digest of
    # both folders keeps runs/a/images and runs/b/images (against one target) apart; the same pair gets one file.
    pred, target = Path(cfg.pred_dir).resolve(), Path(cfg.target_dir).resolve()
    digest = hashlib.sha1(f"{pred}\n{target}".encode()).hexdigest()[:6]
    return Path(f"{pred.name}_vs_{target.name}_{digest}_eval.json")


def evaluate(cfg: DictConfig) -> dict:
    if bool(cfg.ckpt_path) == bool(cfg.pred_dir):
        raise ValueError("give either ckpt_path=... or pred_dir=... target_dir=... (exactly one of the two)")
    if cfg.pred_dir and not cfg.target_dir:
        raise ValueError("pred_dir=... needs target_dir=... (the ground-truth images, matched by file name)")
    if cfg.ckpt_path:
        report, grid = evaluate_checkpoint(cfg)
        output = Path(cfg.output) if cfg.output else default_output(cfg)  # after: the split may have become val
        grid_path = output.with_suffix(".png")
        output.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, grid_path)
        report["samples"] = str(grid_path)
    else:
        report = evaluate_generated(cfg)
        output = Path(cfg.output) if cfg.output else default_output(cfg)
    report["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    log.info("%s", json.dumps(report["metrics"], indent=2))
    log.info("report: %s", output)
    return report


@hydra.main(config_path=CONF_DIR, config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    silence_known_warnings()
    with usage_errors_as_messages():
        evaluate(cfg)


if __name__ == "__main__":
    main()
