"""Cluster the instance features of a trained pix2pixHD model (``model.feature_encoder=true``):

    python -m gan_translate.encode_features ckpt_path=CKPT [data_root=DIR] [n_clusters=10]

Runs the feature encoder over the training images (deterministic preprocessing: no random crop or flip),
keeps one feature vector per instance, runs k-means per class (``n_clusters`` centres, fewer for a class with
fewer distinct instances) over the instances larger than ``min_area`` of their image (1/64, as pix2pixHD's
encode_features: fragments would otherwise become centres that prediction draws from) and writes ``<checkpoint stem>-features.ckpt`` next to the checkpoint: the same
checkpoint with the cluster centres filled in. Predicting from that file draws one cluster per instance, so
repeated predictions give different plausible outputs (``Pix2PixHDGenerator.cluster_choice`` fixes one).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from gan_translate.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from gan_translate.config import CONF_DIR
from gan_translate.errors import usage_errors_as_messages
from gan_translate.models.base import CHECKPOINT_KEY
from gan_translate.models.pix2pixhd import Pix2PixHD
from gan_translate.networks.pix2pixhd import region_classes, region_index
from gan_translate.translator import _resolve_device

log = logging.getLogger(__name__)


def kmeans(points: torch.Tensor, k: int, iterations: int = 100, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding; returns at most ``k`` centres (fewer if fewer distinct points)."""
    generator = torch.Generator().manual_seed(seed)
    points = points.double().cpu()
    centres = points[torch.randint(len(points), (1,), generator=generator)]
    while len(centres) < k:
        distances = torch.cdist(points, centres).min(1).values ** 2
        if float(distances.sum()) == 0:  # every point is already a centre
            break
        centres = torch.cat([centres, points[torch.multinomial(distances, 1, generator=generator)]])
    for _ in range(iterations):
        assignment = torch.cdist(points, centres).argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, assignment, points)
        counts = torch.bincount(assignment, minlength=len(centres))
        updated = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centres)
        if torch.allclose(updated, centres):
            break
        centres = updated
    return centres.float()


@torch.no_grad()
def instance_features(model: Pix2PixHD, loader, device: torch.device, max_images: int | None = None):
    """(features R x feat_num, classes R, areas R) of every instance of the images in ``loader``; an area is the
    instance's fraction of its image."""
    features, classes, areas, seen = [], [], [], 0
    n_classes = model.generator.cluster_centres.size(0)
    for batch in loader:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        _, regions, ids = model.generator.condition(model._inputs(batch))
        averaged = model.encoder(batch["B"], regions)
        index, count = region_index(regions)
        flat = averaged.permute(0, 2, 3, 1).reshape(-1, averaged.size(1))
        per_region = flat.new_zeros(count, flat.size(1)).index_copy_(0, index.flatten(), flat)  # equal within one
        features.append(per_region.cpu())
        classes.append(region_classes(index, count, ids, n_classes).cpu())
        areas.append((torch.bincount(index.flatten(), minlength=count) / index[0].numel()).cpu())
        seen += batch["B"].size(0)
        if max_images is not None and seen >= max_images:
            break
    return torch.cat(features), torch.cat(classes), torch.cat(areas)


def encode_features(cfg: DictConfig) -> Path:
    torch.manual_seed(cfg.seed)
    model = model_from_checkpoint(cfg.ckpt_path, expected=Pix2PixHD)
    if model.encoder is None:
        raise CheckpointError(f"{cfg.ckpt_path} was trained without model.feature_encoder=true: nothing to cluster")
    run_config = OmegaConf.create(model.run_config)
    data_cfg = run_config.data
    if cfg.data_root is not None:
        data_cfg.root = cfg.data_root
    data_cfg.num_workers = cfg.num_workers
    datamodule = instantiate(data_cfg)
    dataset = datamodule.make_dataset(cfg.split, train=False)
    if dataset is None:
        raise ValueError(f"split={cfg.split!r}: the run's data ({data_cfg.get('root', data_cfg._target_)}) has no such split")
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers)
    device = _resolve_device(cfg.device)
    model.to(device)
    features, classes, areas = instance_features(model, loader, device, cfg.max_images)

    n_clusters = cfg.n_clusters or model.generator.cluster_centres.size(1)
    n_classes, feat_num = model.generator.cluster_centres.shape[0], features.size(1)
    centres = torch.zeros(n_classes, n_clusters, feat_num)
    counts = torch.zeros(n_classes, dtype=torch.long)
    large = areas > cfg.min_area
    fallback = []
    for class_id in classes.unique().tolist():
        members = classes == class_id
        if (members & large).any():
            members &= large
        else:  # only small instances: clustered all the same, so that the class gets centres
            fallback.append(class_id)
        class_centres = kmeans(features[members], n_clusters, seed=cfg.seed)
        centres[class_id, : len(class_centres)] = class_centres
        counts[class_id] = len(class_centres)
    log.info("%d instances of %d classes (%d of them larger than min_area=%g of their image) -> %d cluster centres",
             len(features), int((counts > 0).sum()), int(large.sum()), cfg.min_area, int(counts.sum()))
    if fallback:
        log.info("classes %s have no instance larger than min_area: all of their instances were clustered",
                 fallback)

    checkpoint = load_checkpoint(cfg.ckpt_path)
    checkpoint["state_dict"]["generator.cluster_centres"] = centres
    checkpoint["state_dict"]["generator.cluster_counts"] = counts
    checkpoint[CHECKPOINT_KEY]["config"]["model"]["n_clusters"] = n_clusters
    source = Path(cfg.ckpt_path)
    output = Path(cfg.output) if cfg.output else source.with_name(f"{source.stem}-features.ckpt")
    partial = output.with_name(output.name + ".part")
    torch.save(checkpoint, partial)
    partial.replace(output)  # never a half-written checkpoint under the final name
    log.info("wrote %s", output)
    return output


@hydra.main(config_path=CONF_DIR, config_name="encode_features", version_base="1.3")
def main(cfg: DictConfig) -> None:
    with usage_errors_as_messages():
        encode_features(cfg)


if __name__ == "__main__":
    main()
