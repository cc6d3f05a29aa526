"""Quality run: pix2pix on facades (labels -> photo), then FID/KID/LPIPS/SSIM/PSNR/L1 on the val split.

    python scripts/quality_facades.py --setting cpu    # 128 px, unet_128, fixed epochs: feasible on a CPU
    python scripts/quality_facades.py --setting paper  # the paper's 256 px, unet_256, 200 epochs (use a GPU)

Stages (default all): ``train`` runs `python -m gan_translate.train experiment=facades_pix2pix ...`;
``translate`` writes the val outputs and their targets (the val photos after the eval transform) as PNGs;
``score`` runs the metrics on those folders (gan_translate.metrics.evaluate_folders) and writes
``<out>/quality.json`` and a sample grid. Stages can run on different machines (e.g. train/translate on
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


def train(args) -> None:
    overrides = [
        "experiment=facades_pix2pix", f"data.root={args.data}", f"seed={args.seed}",
        f"trainer.max_epochs={args.epochs}", f"hydra.run.dir={args.out}", "callbacks.progress_bar=null",
        *SETTINGS[args.setting], *args.overrides,
    ]
    subprocess.run([sys.executable, "-m", "gan_translate.train", *overrides], check=True)


def translate(args) -> None:
    from gan_translate.checkpoint import model_from_checkpoint
    from gan_translate.data.datamodule import AlignedDataModule
    from gan_translate.translator import Translator

    model = model_from_checkpoint(args.out / "checkpoints" / "last.ckpt")
    data = {k: v for k, v in model.run_config["data"].items() if k != "_target_"}
    data["root"] = str(args.data)
    dataset = AlignedDataModule(**data).make_dataset("val", train=False)
    translator = Translator(
        model.generator_for(None), input_nc=model.source_channels(), batch_stats=model.test_batch_stats
    )
    for folder in ("val_output", "val_target"):
        (args.out / folder).mkdir(exist_ok=True)
    for item in dataset:
        output = translator.translate(item["A"])
        Translator.to_pil(output).save(args.out / "val_output" / f"{item['name']}.png")
        Translator.to_pil(item["B"]).save(args.out / "val_target" / f"{item['name']}.png")


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
    values = evaluate_folders(args.out / "val_output", args.out / "val_target", metrics)
    names = sorted(p.stem for p in (args.out / "val_output").glob("*.png"))[:6]
    grid = sample_grid({
        "output": torch.stack([load_image(args.out / "val_output" / f"{n}.png") for n in names]),
        "target": torch.stack([load_image(args.out / "val_target" / f"{n}.png") for n in names]),
    })
    save_image(grid, args.out / "quality_samples.png")
    report = {"setting": args.setting, "epochs": args.epochs, "seed": args.seed, "split": "val", **values}
    (args.out / "quality.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="cpu")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/facades"))
    parser.add_argument("--out", type=Path, default=None, help="run folder (default outputs/quality/facades_SETTING)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stage", choices=["all", "train", "translate", "score"], default="all")
    parser.add_argument("--fid-weights", default=None)
    parser.add_argument("--lpips-weights", default=None)
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for training, e.g. trainer=gpu")
    args = parser.parse_args()
    args.out = (args.out or Path(f"outputs/quality/facades_{args.setting}")).resolve()
    args.data = args.data.resolve()
    args.epochs = args.epochs or DEFAULT_EPOCHS[args.setting]
    if args.stage in ("all", "train"):
        train(args)
    if args.stage in ("all", "translate"):
        translate(args)
    if args.stage in ("all", "score"):
        score(args)


if __name__ == "__main__":
    main()
