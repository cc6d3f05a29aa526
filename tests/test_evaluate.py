"""Metrics in a real training loop, best-checkpoint selection on a metric, and the evaluate CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from gan_translate.train import train
from gan_translate.weights import CACHE_ENV

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "generator.ngf=8", "discriminator.ndf=8", "data.size=32",
    "data.train_length=8", "data.val_length=8", "data.batch_size=4", "data.val_batch_size=4",
    "data.num_workers=0", "trainer.accelerator=cpu", "trainer.max_epochs=2", "trainer.log_every_n_steps=1",
    "callbacks.progress_bar=null", "logger=csv",
]
# A tiny random feature network stands in for Inception, so FID/KID run without weights.
WITH_FID = [
    "metrics.collection.fid=true", "metrics.collection.kid=true",
    "+metrics.collection.feature_extractor._target_=gan_translate.metrics.TinyFeatureExtractor",
    "+metrics.collection.feature_extractor.num_features=16",
]


def compose_train(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*TINY, f"paths.output_dir={tmp_path}", *overrides])
    if "num_downs" in cfg.generator:
        cfg.generator.num_downs = 5  # a U-Net for 32 px
    return cfg


def read_metrics_csv(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "csv" / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_metrics_logged_during_fit_and_best_checkpoint_tracks_fid(tmp_path):
    cfg = compose_train(tmp_path, [*WITH_FID, "monitor.metric=val/fid", "monitor.mode=min"])
    train(cfg)
    rows = read_metrics_csv(tmp_path)
    fids = [float(r["val/fid"]) for r in rows if r.get("val/fid")]
    assert len(fids) == 2 and all(torch.isfinite(torch.tensor(fids)))
    for key in ("val/psnr", "val/ssim", "val/kid_mean", "val/l1"):
        assert any(r.get(key) for r in rows), key
    best = list((tmp_path / "checkpoints").glob("best_*.ckpt"))
    assert len(best) == 1
    state = torch.load(best[0], map_location="cpu", weights_only=True)
    callback_states = [v for k, v in state["callbacks"].items() if "'monitor': 'val/fid'" in k]
    assert len(callback_states) == 1
    assert float(callback_states[0]["best_model_score"]) == pytest.approx(min(fids), rel=1e-5)
    # The metric networks are not part of the checkpoint.
    assert all(k.startswith(("generator.", "discriminator.")) for k in state["state_dict"])


def test_cyclegan_metrics_are_unpaired(tmp_path):
    cfg = compose_train(
        tmp_path,
        [*WITH_FID, "experiment=shapes_cyclegan", "generator=resnet_6blocks", "trainer.max_epochs=1", "data.train_length=4"],
    )
    train(cfg)
    keys = {k for row in read_metrics_csv(tmp_path) for k, v in row.items() if v}
    assert "val/fid" in keys and "val/cycle_l1" in keys
    assert "val/psnr" not in keys and "val/ssim" not in keys  # no pixel-aligned target in CycleGAN


def test_plateau_scheduler_without_a_monitored_metric_fails_before_training(tmp_path):
    cfg = compose_train(tmp_path, ["scheduler=plateau", "metrics=none"])
    with pytest.raises(ValueError, match="scheduler=plateau watches monitor.metric, which is unset"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(("scheduler", "key"), [("linear", "scheduler.total_epochs"), ("cosine", "scheduler.T_max")])
def test_schedule_over_an_unbounded_epoch_count_fails_before_training(tmp_path, scheduler, key):
    """trainer.max_epochs=-1 with max_steps: the linear schedule trained at rate 0 from the first step."""
    overrides = ["trainer.max_epochs=-1", "trainer.max_steps=4", "metrics=none", f"scheduler={scheduler}"]
    with pytest.raises(ValueError, match=f"{key}=-1: .*set {key}=N"):
        train(compose_train(tmp_path / "unset", overrides))
    assert not (tmp_path / "unset" / "checkpoints").exists()
    train(compose_train(tmp_path / "set", [*overrides, f"{key}=4"]))
    lrs = [float(r["lr-generator"]) for r in read_metrics_csv(tmp_path / "set") if r.get("lr-generator")]
    assert lrs and lrs[0] > 0


def test_plateau_scheduler_watches_a_real_metric(tmp_path):
    cfg = compose_train(
        tmp_path,
        ["scheduler=plateau", "scheduler.patience=0", "scheduler.threshold=10", "optim.lr=0.001",
         "trainer.max_epochs=3", "metrics=none", "monitor.metric=val/l1"],
    )
    train(cfg)
    lrs = [float(r["lr-generator"]) for r in read_metrics_csv(tmp_path) if r.get("lr-generator")]
    # threshold=10 (relative) means no epoch counts as an improvement, so the LR must drop.
    assert lrs[0] == pytest.approx(0.001) and lrs[-1] < 0.001


def test_plateau_scheduler_steps_only_after_a_validation(tmp_path):
    """Validation every 2nd epoch: the run stopped after epoch 2 (no value logged yet), and later epochs would
    have counted the last value again against the patience."""
    import pytorch_lightning as pl

    class Steps(pl.Callback):
        def __init__(self) -> None:
            self.counted: list[int] = []

        def on_train_epoch_start(self, trainer, pl_module) -> None:  # the steps taken after the epochs before
            self.counted.append(trainer.lr_scheduler_configs[0].scheduler.last_epoch)

        def on_train_end(self, trainer, pl_module) -> None:
            self.counted.append(trainer.lr_scheduler_configs[0].scheduler.last_epoch)

    steps = Steps()
    cfg = compose_train(tmp_path, ["scheduler=plateau", "trainer.max_epochs=4", "metrics=none",
                                   "monitor.metric=val/l1", "trainer.check_val_every_n_epoch=2"])
    # (every 3rd epoch: the run stopped at the end of epoch 2 with "val/l1 was not logged")
    train(cfg, extra_callbacks=[steps])
    assert steps.counted == [0, 0, 1, 1, 2]  # stepped after epochs 1 and 3, the validated ones


def test_plateau_scheduler_steps_only_when_its_metric_was_computed(tmp_path):
    """metrics.every_n_epochs=3 computes val/psnr after epochs 2 and 5 only: the run stopped after epoch 1 (not
    logged), and a stale value would have been counted again against the patience."""
    import pytorch_lightning as pl

    class Steps(pl.Callback):
        def __init__(self) -> None:
            self.counted: list[int] = []

        def on_train_end(self, trainer, pl_module) -> None:
            self.counted.append(trainer.lr_scheduler_configs[0].scheduler.last_epoch)

    steps = Steps()
    cfg = compose_train(tmp_path, ["scheduler=plateau", "trainer.max_epochs=6", "metrics.every_n_epochs=3",
                                   "metrics.collection.fid=false", "metrics.collection.lpips=false",
                                   "monitor.metric=val/psnr", "monitor.mode=max", "data.train_length=4",
                                   "data.val_length=4"])
    train(cfg, extra_callbacks=[steps])
    assert steps.counted == [2]  # after epochs 2 and 5


@pytest.fixture()
def trained_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    train(compose_train(run, ["trainer.max_epochs=1", "metrics=none"]))
    return run


def test_evaluate_cli_writes_report(trained_run, tmp_path):
    output = tmp_path / "report.json"
    subprocess.run(
        [sys.executable, "-m", "gan_translate.evaluate", f"ckpt_path={trained_run}/checkpoints/last.ckpt",
         "split=val", f"output={output}"],
        check=True, cwd=tmp_path, capture_output=True,
    )
    report = json.loads(output.read_text())
    assert report["num_images"] == 8 and report["split"] == "val" and report["model"] == "Pix2Pix"
    assert set(report["metrics"]) == {"l1", "psnr", "ssim"}
    assert 0 <= report["metrics"]["ssim"] <= 1 and len(report["config_hash"]) == 12
    assert Image.open(output.with_suffix(".png")).width > 0


def test_evaluate_names_an_unknown_split_and_takes_seed_null(trained_run, tmp_path):
    from gan_translate.evaluate import evaluate

    def run(*overrides: str):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            return evaluate(compose("evaluate", overrides=[f"ckpt_path={trained_run}/checkpoints/last.ckpt",
                                                           "device=cpu", f"output={tmp_path / 'r.json'}", *overrides]))

    with pytest.raises(ValueError, match=r"split='foo'.*\['test', 'train', 'val'\]"):  # was a bare KeyError
        run("split=foo")
    assert run("split=val", "seed=null")["num_images"] == 8  # was a TypeError in torch.manual_seed


def test_evaluate_seed_repeats_a_report_with_test_time_dropout(tmp_path):
    """dropout=true is random at test time: the same seed gives the same report, another seed another one."""
    from gan_translate.evaluate import evaluate

    trained_run = tmp_path / "run"
    cfg = compose_train(trained_run, ["trainer.max_epochs=1", "metrics=none", "data.size=64"])
    cfg.generator.num_downs = 6  # a U-Net with dropout in its innermost block
    train(cfg)

    def scores(seed: int, name: str) -> dict:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("evaluate", overrides=[f"ckpt_path={trained_run}/checkpoints/last.ckpt", "split=val",
                                                 "dropout=true", f"seed={seed}", "device=cpu", "metrics=none",
                                                 "+metrics.collection._target_=gan_translate.metrics.TranslationMetrics",
                                                 f"output={tmp_path / name}"])
        report = evaluate(cfg)
        assert report["seed"] == seed
        return report["metrics"]

    first = scores(0, "a.json")
    assert scores(0, "b.json") == first and scores(1, "c.json") != first


def test_evaluate_folders_cli(tmp_path):
    pred, target = tmp_path / "pred", tmp_path / "target"
    pred.mkdir(), target.mkdir()
    for i in range(3):
        Image.new("RGB", (16, 16), (10 * i, 100, 200)).save(pred / f"{i}.png")
        Image.new("RGB", (16, 16), (10 * i, 100, 200)).save(target / f"{i}.jpg", quality=100)
    output = tmp_path / "eval.json"
    subprocess.run(
        [sys.executable, "-m", "gan_translate.evaluate", f"pred_dir={pred}", f"target_dir={target}",
         f"output={output}"],
        check=True, cwd=tmp_path, capture_output=True,
    )
    report = json.loads(output.read_text())
    assert report["num_images"] == 3
    assert report["metrics"]["l1"] < 0.01 and report["metrics"]["ssim"] > 0.95
    # Without output=, the report goes to the working folder, not beside pred_dir (which may be inside a dataset).
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "gan_translate.evaluate", f"pred_dir={pred}", f"target_dir={target}"],
                   check=True, cwd=elsewhere, capture_output=True)
    (report_file,) = elsewhere.glob("pred_vs_target_*_eval.json")
    assert json.loads(report_file.read_text())["num_images"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "pred", "target", "work"]


def test_evaluate_unpaired_folders_compares_distributions(tmp_path, monkeypatch):
    """paired=false (CycleGAN): FID between folders of other names (and counts); the same images under other
    names score 0, inverted ones do not. Without FID weights it says how to get them."""
    from test_metrics import _FakeInception

    torch.manual_seed(0)
    weights = tmp_path / "fid.pt"
    torch.jit.script(_FakeInception()).save(str(weights))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(7)]
    folders = {name: tmp_path / name for name in ("zebras", "same", "inverted")}
    for folder in folders.values():
        folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folders["zebras"] / f"zebra_{i}.png")
        Image.fromarray(image).save(folders["same"] / f"horse_{i}.png")
        if i < 5:  # 5 outputs against 7 targets
            Image.fromarray(255 - image).save(folders["inverted"] / f"horse_{i}.png")

    def evaluate(pred: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "gan_translate.evaluate", f"pred_dir={folders[pred]}",
             f"target_dir={folders['zebras']}", "paired=false", f"output={tmp_path / pred}.json", *extra],
            cwd=tmp_path, capture_output=True, text=True,
        )

    monkeypatch.delenv("GAN_TRANSLATE_FID_WEIGHTS", raising=False)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty_cache"))  # no cached weights either
    missing = evaluate("same")
    assert missing.returncode != 0 and "gan_translate.weights fetch fid" in missing.stderr
    monkeypatch.setenv("GAN_TRANSLATE_FID_WEIGHTS", str(weights))
    reports = {}
    for pred in ("same", "inverted"):
        assert evaluate(pred).returncode == 0
        reports[pred] = json.loads((tmp_path / f"{pred}.json").read_text())
    assert reports["inverted"]["num_images"] == 5 and reports["inverted"]["num_targets"] == 7
    assert set(reports["same"]["metrics"]) == {"fid"} and not reports["same"]["paired"]
    assert abs(reports["same"]["metrics"]["fid"]) < 1e-2 < reports["inverted"]["metrics"]["fid"]

    # One image has no covariance: refused before scoring (not a NaN in a report), leaving no report folder.
    one = tmp_path / "one"
    one.mkdir()
    Image.fromarray(images[0]).save(one / "horse_0.png")
    refused = subprocess.run(
        [sys.executable, "-m", "gan_translate.evaluate", f"pred_dir={one}", f"target_dir={folders['zebras']}",
         "paired=false", f"output={tmp_path / 'reports' / 'one.json'}"],
        cwd=tmp_path, capture_output=True, text=True,
    )
    assert refused.returncode != 0
    assert f"FID needs at least 2 images on each side: prediction folder '{one}' has 1" in refused.stderr
    assert not (tmp_path / "reports").exists()


def test_evaluate_needs_a_source(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gan_translate.evaluate"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0 and "ckpt_path" in result.stderr


def test_evaluate_names_images_of_mixed_sizes(tmp_path):
    """preprocess=none keeps each file's size: a batch of two sizes gave torch.stack's bare RuntimeError."""
    from gan_translate.data.datasets import DataError
    from gan_translate.evaluate import evaluate

    root = tmp_path / "data"
    for split, sizes in (("train", [32, 32]), ("val", [32, 64])):
        (root / split).mkdir(parents=True)
        for i, side in enumerate(sizes):
            Image.fromarray(np.full((side, 2 * side, 3), 40 * i, np.uint8)).save(root / split / f"{i}.png")
    run = tmp_path / "run"
    overrides = [o for o in TINY if not o.startswith(("data.size", "data.train_length", "data.val_length"))]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, f"paths.output_dir={run}", "trainer.max_epochs=1", "metrics=none",
                                          "data=aligned", f"data.root={root}", "data.preprocess=none",
                                          "data.batch_size=1", "data.val_batch_size=1"])
    cfg.generator.num_downs = 5  # a U-Net for multiples of 32 px
    train(cfg)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=[f"ckpt_path={run}/checkpoints/last.ckpt", "split=val", "device=cpu",
                                             "batch_size=2", f"output={tmp_path / 'report.json'}"])
    with pytest.raises(DataError, match=r"different sizes \(0: 32x32, 1: 64x64\).*for evaluate, batch_size=1"):
        evaluate(cfg)


def test_default_reports_of_checkpoints_kept_outside_a_run_do_not_collide():
    from omegaconf import OmegaConf

    from gan_translate.evaluate import default_output

    def report(path: str) -> Path:
        return default_output(OmegaConf.create({"ckpt_path": path, "split": "test", "direction": None}))

    assert report("runs/a/checkpoints/last.ckpt") == Path("runs/a/eval/last_test.json")
    assert report("models/p2p/last.ckpt") != report("models/hd/last.ckpt")


def test_a_relative_data_root_is_kept_absolute_so_evaluate_works_from_elsewhere(tmp_path, monkeypatch):
    """data.root=facades (relative to the launch folder) was stored as given: evaluate from another folder looked
    for the test split in the wrong place."""
    from conftest import write_aligned

    launch = tmp_path / "launch"
    write_aligned(launch / "facades", splits=("train", "val", "test"), count=2)
    monkeypatch.chdir(launch)
    tiny = [o for o in TINY if not o.startswith(("data.size", "data.train_length", "data.val_length"))]
    run = tmp_path / "run"
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*tiny, "data=aligned", "data.root=facades", "data.load_size=36",
                                          "data.crop_size=32", "generator.num_downs=5", "trainer.max_epochs=1",
                                          "metrics=none",
                                          f"paths.output_dir={run}"])
    train(cfg)
    stored = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert stored["gan_translate"]["config"]["data"]["root"] == str(launch / "facades")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    subprocess.run([sys.executable, "-m", "gan_translate.evaluate", f"ckpt_path={run}/checkpoints/last.ckpt",
                    "split=test", f"output={elsewhere / 'report.json'}", "metrics.collection.fid=false",
                    "metrics.collection.lpips=false"],
                   check=True, cwd=elsewhere, capture_output=True, env={**__import__("os").environ,
                                                                         "PYTHONPATH": str(ROOT)})
    assert json.loads((elsewhere / "report.json").read_text())["num_images"] == 2
