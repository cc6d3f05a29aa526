"""Quality run of the noise-to-image GANs on mnist5k: train each model, then score it with the digit classifier.

    python scripts/quality_mnist.py [--data ../shared/data/mnist5k] [--models dcgan cgan infogan aae]
                                    [--out outputs/quality_mnist] [--threads 1] [--tag T] [-- EXTRA TRAIN OVERRIDES]

For each model, one after another (never in parallel: CPU time is the measure):
``python -m gan_translate.train experiment=mnist_<model> data.root=DATA`` with ``OMP_NUM_THREADS=threads``, timed
(wall clock and the process's CPU time, user + system; validation during training scores samples with the digit
classifier, which is trained once and cached before the first timed run), then
``python -m gan_translate.evaluate ckpt_path=.../last.ckpt metrics=generative split=val num_generated=N``
(class accuracy of cGAN / supervised-AAE samples, InfoGAN code accuracy after Hungarian matching, classifier
FID; the classifier trains once on DATA/train and is cached), and a 10 x 10 sample picture docs/<model>_mnist.png
(columns = classes for the class-conditional models, InfoGAN's codes in the order of their matched digits).
Results go to benchmarks/results/mnist_generative.json (merged with the models already there).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's gan_translate, not an installed one
TARGETS = {"cgan": ("class_accuracy", 0.90), "infogan": ("code_accuracy", 0.80)}
# Which experiment (and overrides) each name trains; aae_supervised is the label-conditioned AAE.
RECIPES = {
    "dcgan": ("mnist_dcgan", []),
    "cgan": ("mnist_cgan", []),
    "infogan": ("mnist_infogan", []),
    "aae": ("mnist_aae", []),
    "aae_supervised": ("mnist_aae", ["model.supervised=true"]),
}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} cores"
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"


def run_timed(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run ``cmd`` to completion; its wall seconds and CPU seconds (user + system of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def picture(ckpt: Path, code_to_class: list[int] | None, path: Path, seed: int = 1) -> None:
    """10 x 10 samples: one column per class (or per matched InfoGAN code), rows of fresh noise."""
    from gan_translate.sampler import Sampler

    sampler = Sampler.from_checkpoint(ckpt, device="cpu")
    labels = None
    if sampler.num_classes:
        order = list(range(sampler.num_classes))
        if code_to_class is not None:  # InfoGAN: the code matched to digit 0 first, then 1, ...
            order = sorted(order, key=lambda code: (code_to_class[code] < 0, code_to_class[code]))
        labels = torch.tensor(order).repeat(10)
    images = sampler(100 if labels is None else len(labels), labels, seed=seed)
    grid = make_grid(images.add(1).div(2), nrow=sampler.num_classes or 10, padding=2, pad_value=1.0)
    save_image(torch.nn.functional.interpolate(grid[None], scale_factor=2, mode="nearest")[0], path)  # 2x: readable


def real_baseline(data: Path, n: int) -> float:
    """Classifier FID of n real train digits against the val digits: the floor a perfect generator would reach."""
    from gan_translate.metrics.generative import GenerativeMetrics, load_class_folder

    train, _, _ = load_class_folder(data / "train")
    val, _, _ = load_class_folder(data / "val")
    metrics = GenerativeMetrics(data_root=data, max_images=n)
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n]
    metrics.update(train[chosen], real=val)
    return metrics.compute()["classifier_fid"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # ../shared/data/mnist5k next to the checkout (or next to the folder of worktrees).
    candidates = [up / "shared" / "data" / "mnist5k" for up in (ROOT.parent, ROOT.parent.parent)]
    parser.add_argument("--data", type=Path, default=next((c for c in candidates if c.is_dir()), candidates[0]))
    parser.add_argument("--models", nargs="+", default=["dcgan", "cgan", "infogan", "aae"], choices=list(RECIPES))
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "quality_mnist")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "mnist_generative.json")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-generated", type=int, default=1000)
    parser.add_argument("--skip-train", action="store_true", help="score existing runs only")
    parser.add_argument("--tag", default="", help="a repeat with other overrides (e.g. seed=1): kept as "
                        "'<model>@<tag>' in the results, without a picture")
    parser.add_argument("overrides", nargs="*", help="extra train overrides for every model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = args.data.resolve()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": str(ROOT), "HYDRA_FULL_ERROR": "1"}

    # The digit classifier scores validation during training (metrics=generative) and the evaluation after it.
    # Trained once per dataset and cached: done here, outside the timed training runs.
    from gan_translate.metrics.generative import load_or_train_classifier

    _, classifier_record = load_or_train_classifier(data)
    results = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results.setdefault("models", {})
    for model in args.models:
        experiment, extra = RECIPES[model]
        name = f"{model}@{args.tag}" if args.tag else model
        run_dir = args.out / name.replace("@", "_")
        overrides = [f"experiment={experiment}", f"data.root={data}", f"hydra.run.dir={run_dir}",
                     "~callbacks.progress_bar", "+trainer.enable_progress_bar=false", *extra, *args.overrides]
        entry = dict(results["models"].get(name, {}))
        if not args.skip_train:
            load_before = os.getloadavg()[0]
            wall, cpu = run_timed([sys.executable, "-m", "gan_translate.train", *overrides], env)
            entry = {"experiment": experiment, "overrides": [*extra, *args.overrides], "train_wall_s": round(wall, 1),
                     "train_cpu_s": round(cpu, 1), "train_cpu_min": round(cpu / 60, 2),
                     "load_average_1min_at_start": round(load_before, 2), "threads": args.threads}
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        report_path = run_dir / "eval" / "generative_val.json"
        subprocess.run([sys.executable, "-m", "gan_translate.evaluate", f"ckpt_path={ckpt}", "metrics=generative",
                        "split=val", f"num_generated={args.num_generated}", f"output={report_path}"],
                       check=True, env=env, cwd=ROOT)
        report = json.loads(report_path.read_text())
        config = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)["gan_translate"]["config"]
        entry.update({
            "model": report["model"], "epochs": config["trainer"]["max_epochs"],
            "batch_size": config["data"]["batch_size"], "metrics": report["metrics"],
            "num_generated": report["num_generated"], "num_real_val": report["num_real"],
        })
        if "code_to_class" in report:
            entry["code_to_class"] = report["code_to_class"]
        if model in TARGETS:
            key, target = TARGETS[model]
            entry["target"] = {key: target, "met": report["metrics"][key] >= target}
        if not args.tag:
            picture_path = args.docs / f"{model}_mnist.png"
            picture(ckpt, report.get("code_to_class"), picture_path)
            entry["picture"] = os.path.relpath(picture_path, ROOT)
            entry["picture_kb"] = round(picture_path.stat().st_size / 1024, 1)
        results["models"][name] = entry
        # The classifier that scored this run (this machine's cached one), and the score of real digits under it.
        if results.get("classifier", {}).get("val_accuracy") != classifier_record["val_accuracy"] or \
                "real_train_vs_val_fid" not in results["classifier"]:
            results["classifier"] = report["classifier"] | {
                "cache_file": None, "train_seconds": classifier_record["train_seconds"],
                "real_train_vs_val_fid": real_baseline(data, args.num_generated)}
        results.update({
            "data": str(data), "cpu": cpu_model(), "torch": torch.__version__,
            "updated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        })
        args.results.parent.mkdir(parents=True, exist_ok=True)
        # Merge into the file as it is now: another run of this script may have added models meanwhile.
        on_disk = json.loads(args.results.read_text()) if args.results.is_file() else {}
        results["models"] = {**on_disk.get("models", {}), name: entry}
        args.results.write_text(json.dumps(results, indent=2))
        print(json.dumps({name: entry}, indent=2), flush=True)


if __name__ == "__main__":
    main()
