"""Quality run: pix2pix on facades (labels -> photo), then FID/KID/LPIPS/SSIM/PSNR/L1 against the real photos.

    python scripts/quality_facades.py --setting cpu    # 128 px, unet_128, fixed epochs: feasible on a CPU; val split
    python scripts/quality_facades.py --setting paper  # the paper's recipe (256 px, unet_256, batch 1, 200 epochs;
                                                       # use a GPU, e.g. trainer=gpu_fast); the 106 test images

The protocol (``--setting paper``): the trained generator translates every image of the split (test: 106) at
256x256 in two test-time modes, each scored on its own:
- ``paper``: what the reference test script does by default (no ``model.eval()``): dropout on (seeded) and batch
  norm with each image's own statistics (batch 1, so per-image normalisation);
- ``eval``: dropout off, batch norm with the running statistics of training.
FID and KID use the standard FID Inception network (pool features, 2048-d) on the outputs against the split's
real photos after the same eval transform (resize to 256); L1 (on [0, 1]), PSNR, SSIM and LPIPS (AlexNet) are
paired with those photos.

Stages (default all): ``train`` runs `python -m gan_translate.train experiment=facades_pix2pix ...`;
``translate`` writes, per mode, the outputs and the targets as PNGs (``<split>_output_<mode>/``,
``<split>_target/``); ``score`` runs the metrics on those folders (gan_translate.metrics.evaluate_folders) and
writes ``<out>/quality.json`` (one entry per mode) and a sample grid (``--grid``, default ``<out>/quality_samples.png``). Stages can run on different machines (e.g. train/translate on
a GPU, score where the FID weights are). FID/KID need the Inception file (`python -m gan_translate.weights fetch
fid` caches it; or metrics.fid_weights / $GAN_TRANSLATE_FID_WEIGHTS); without it only the pixel metrics run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from torchvision.utils import save_image

SETTINGS = {
    "cpu": ["generator=unet_128", "data.load_size=143", "data.crop_size=128"],
    "paper": [],
}
DEFAULT_EPOCHS = {"cpu": 20, "paper": 200}
DEFAULT_SPLIT = {"cpu": "val", "paper": "test"}
# Test-time modes: (dropout on, batch norm with the batch's own statistics).
MODES = {"paper": (True, True), "eval": (False, False)}


def train(args) -> None:
    overrides = [
        "experiment=facades_pix2pix", f"data.root={args.data}", f"seed={args.seed}",
        f"trainer.max_epochs={args.epochs}", f"hydra.run.dir={args.out}",
        # No bar at all (a bar reads the losses, a host synchronisation): callbacks.progress_bar=null alone
        # would leave Lightning its default bar.
        "callbacks.progress_bar=null", "+trainer.enable_progress_bar=false",
        *SETTINGS[args.setting], *args.overrides,
    ]
    subprocess.run([sys.executable, "-m", "gan_translate.train", *overrides], check=True)


def evaluation_split(args, data_config: dict):
    """The split's items (A, B, name) after the run's eval transform, as the model saw them in validation."""
    from gan_translate.data.datamodule import AlignedDataModule

    data = {k: v for k, v in data_config.items() if k != "_target_"}
    data["root"] = str(args.data)
    return AlignedDataModule(**data).make_dataset(args.split, train=False)


def write_references(args, dataset) -> None:
    """``<split>_target`` (the real photos) and ``<split>_input`` (the label maps) as PNGs."""
    from gan_translate.translator import Translator

    targets, inputs = args.out / f"{args.split}_target", args.out / f"{args.split}_input"
    targets.mkdir(exist_ok=True)
    inputs.mkdir(exist_ok=True)
    for item in dataset:
        Translator.to_pil(item["B"]).save(targets / f"{item['name']}.png")
        Translator.to_pil(item["A"]).save(inputs / f"{item['name']}.png")


def translate(args) -> None:
    from gan_translate.checkpoint import model_from_checkpoint
    from gan_translate.translator import Translator

    model = model_from_checkpoint(args.out / "checkpoints" / "last.ckpt")
    dataset = evaluation_split(args, model.run_config["data"])
    write_references(args, dataset)
    for mode in MODES:
        dropout, batch_stats = MODES[mode]
        translator = Translator(model.generator_for(None), input_nc=model.source_channels(), dropout=dropout,
                                batch_stats=batch_stats)
        outputs = args.out / f"{args.split}_output_{mode}"
        outputs.mkdir(exist_ok=True)
        torch.manual_seed(args.seed)  # the paper mode's dropout masks
        for item in dataset:  # one image at a time: batch statistics of one image, as in the reference
            Translator.to_pil(translator.translate(item["A"])).save(outputs / f"{item['name']}.png")


def score(args) -> None:
    from gan_translate.callbacks import sample_grid
    from gan_translate.metrics import TranslationMetrics, evaluate_folders, load_image
    from gan_translate.weights import find_weights

    # Weights named explicitly, by the env variables, or in the weights cache (`python -m gan_translate.weights`).
    has_fid = bool(args.fid_weights or os.environ.get("GAN_TRANSLATE_FID_WEIGHTS") or find_weights("fid"))
    has_lpips = bool(args.lpips_weights or os.environ.get("GAN_TRANSLATE_LPIPS_WEIGHTS") or find_weights("lpips-alex"))
    metrics = TranslationMetrics(
        paired=True, lpips=has_lpips, fid=has_fid, kid=has_fid, fid_weights=args.fid_weights,
        lpips_weights=args.lpips_weights,
    )
    targets = args.out / f"{args.split}_target"
    if not targets.is_dir():
        # Only the outputs came back from the machine that translated (e.g. a GPU machine): the references are
        # rebuilt from the data with the run's own data settings (Hydra's saved config in the run folder).
        from omegaconf import OmegaConf

        saved = args.out / ".hydra" / "config.yaml"
        if not saved.is_file():
            raise SystemExit(f"{targets} is missing and so is {saved}: run the translate stage, or keep the run's .hydra")
        write_references(args, evaluation_split(args, OmegaConf.to_container(OmegaConf.load(saved).data)))
    scores = {}
    for mode in MODES:
        values = evaluate_folders(args.out / f"{args.split}_output_{mode}", targets, metrics)
        scores[mode] = {"dropout": MODES[mode][0], "batch_statistics": MODES[mode][1], **values}
    names = sorted(p.stem for p in targets.glob("*.png"))[:6]
    images = {"input": torch.stack([load_image(args.out / f"{args.split}_input" / f"{n}.png") for n in names])}
    for mode in MODES:
        images[f"output ({mode})"] = torch.stack(
            [load_image(args.out / f"{args.split}_output_{mode}" / f"{n}.png") for n in names])
    images["target"] = torch.stack([load_image(targets / f"{n}.png") for n in names])
    grid_path = args.grid or args.out / "quality_samples.png"
    save_image(sample_grid(images), grid_path)
    report = {"setting": args.setting, "epochs": args.epochs, "seed": args.seed, "split": args.split,
              "num_images": len(list(targets.glob("*.png"))), "fid_network": "FID Inception-v3 (pool, 2048-d)"
              if has_fid else None, "modes": scores, "grid": str(grid_path)}
    (args.out / "quality.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/facades"))
    parser.add_argument("--out", type=Path, default=None, help="run folder (default outputs/quality/facades_SETTING)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=["val", "test"], default=None, help="default: val (cpu), test (paper)")
    parser.add_argument("--grid", type=Path, default=None, help="sample grid path (default <out>/quality_samples.png)")
    parser.add_argument("--stage", choices=["all", "train", "translate", "score"], default="all")
    parser.add_argument("--fid-weights", default=None)
    parser.add_argument("--lpips-weights", default=None)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for training, e.g. trainer=gpu")
    args = parser.parse_args()
    args.out = (args.out or Path(f"outputs/quality/facades_{args.setting}")).resolve()
    args.data = args.data.resolve()
    args.epochs = args.epochs or DEFAULT_EPOCHS[args.setting]
    args.split = args.split or DEFAULT_SPLIT[args.setting]
    if args.stage in ("all", "train"):
        train(args)
    if args.stage in ("all", "translate"):
        translate(args)
    if args.stage in ("all", "score"):
        score(args)


if __name__ == "__main__":
    main()
