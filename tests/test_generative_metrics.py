"""Classifier score, Hungarian code matching, classifier FID and the classifier cache (no shared data)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import logged, read_metrics
from PIL import Image

from gan_translate.metrics.generative import (
    GenerativeMetrics,
    data_hash,
    frechet_distance,
    load_class_folder,
    load_or_train_classifier,
    matched_accuracy,
)

SIZE = 16


def pattern(cls: int, seed: int) -> np.ndarray:
    """Three easy classes on a black background: a bright top half, left half, or centre square (+ noise)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 40, (SIZE, SIZE)).astype(np.uint8)
    if cls == 0:
        image[: SIZE // 2] = 230
    elif cls == 1:
        image[:, : SIZE // 2] = 230
    else:
        image[4:12, 4:12] = 230
    return image


def write_classes(root: Path, per_class: int = 8) -> Path:
    for split, offset in (("train", 0), ("val", 1000)):
        for cls in range(3):
            folder = root / split / f"c{cls}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray(pattern(cls, offset + 10 * cls + i)).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def classes_root(tmp_path_factory) -> Path:
    return write_classes(tmp_path_factory.mktemp("classes"))


@pytest.fixture(scope="module")
def classifier(classes_root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GAN_TRANSLATE_CACHE", str(cache))
        return load_or_train_classifier(classes_root, epochs=30)


def test_matched_accuracy_undoes_a_permutation_and_random_codes_stay_near_chance():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 10, 5000)
    permutation = rng.permutation(10)
    confusion = np.zeros((10, 10))
    np.add.at(confusion, (permutation[classes], classes), 1)  # code = permuted class
    accuracy, mapping = matched_accuracy(confusion)
    assert accuracy == 1.0
    assert [mapping[permutation[c]] for c in range(10)] == list(range(10))

    random_codes = np.zeros((10, 10))
    np.add.at(random_codes, (rng.integers(0, 10, 5000), classes), 1)
    accuracy, _ = matched_accuracy(random_codes)
    assert 0.09 < accuracy < 0.15  # chance is 0.1; the best matching of noise is a little above it

    # More codes than classes: each class takes its best code, the rest stay unmatched (-1).
    accuracy, mapping = matched_accuracy(np.array([[5, 0], [1, 0], [0, 4]]))
    assert accuracy == pytest.approx(9 / 10) and mapping == [0, -1, 1]
    with pytest.raises(ValueError, match="non-empty"):
        matched_accuracy(np.zeros((3, 3)))


def test_frechet_distance_is_zero_for_equal_sets_and_the_mean_shift_otherwise():
    features = torch.randn(400, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert frechet_distance(features, features) == pytest.approx(0.0, abs=1e-6)
    shift = torch.tensor([2.0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.float64)
    # Same covariance, means 2 apart: the distance is |shift|^2 = 4.
    assert frechet_distance(features, features + shift) == pytest.approx(4.0, rel=1e-4)
    assert frechet_distance(features, features * 2) > 1.0
    with pytest.raises(ValueError, match="N x d"):
        frechet_distance(features, features[:, :4])


def test_classifier_is_cached_by_data_content(classes_root, tmp_path, monkeypatch):
    monkeypatch.setenv("GAN_TRANSLATE_CACHE", str(tmp_path / "cache"))
    _, first = load_or_train_classifier(classes_root, epochs=1)
    assert not first["cached"] and Path(first["cache_file"]).parent == tmp_path / "cache" / "classifiers"
    assert first["classes"] == ["c0", "c1", "c2"] and first["train_images"] == 24

    model, again = load_or_train_classifier(classes_root, epochs=1)
    assert again["cached"] and again["cache_file"] == first["cache_file"]
    assert again["val_accuracy"] == first["val_accuracy"]

    copy = shutil.copytree(classes_root, tmp_path / "copy")  # other place, same content: same classifier
    assert load_or_train_classifier(copy, epochs=1)[1]["cached"]
    assert load_or_train_classifier(copy, epochs=2)[1]["cached"] is False  # other settings: trained anew

    Image.fromarray(pattern(0, 99)).save(copy / "train" / "c0" / "00.png")  # one image edited
    assert data_hash([copy / "train"]) != data_hash([classes_root / "train"])
    _, edited = load_or_train_classifier(copy, epochs=1)
    assert not edited["cached"] and edited["cache_file"] != first["cache_file"]


def test_classifier_learns_the_classes(classifier):
    _, record = classifier
    assert record["val_accuracy"] == 1.0


def test_class_accuracy_code_accuracy_and_classifier_fid_on_real_images(classes_root, classifier):
    model, _ = classifier
    images, labels, _ = load_class_folder(classes_root / "val")
    metrics = GenerativeMetrics(model)
    assert metrics.needs == {"labels", "codes", "real"}
    permutation = torch.tensor([2, 0, 1])
    # Real images standing in for samples: asked labels right, codes a permutation of the classes.
    metrics.update(images, real=images, labels=labels, codes=permutation[labels])
    values = metrics.compute()
    assert values["class_accuracy"] == 1.0 and values["code_accuracy"] == 1.0
    assert [metrics.code_to_class[int(permutation[c])] for c in range(3)] == [0, 1, 2]
    assert values["classifier_fid"] == pytest.approx(0.0, abs=1e-3)

    metrics.reset()
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    # Wrong labels (shifted by one) score 0; samples of one kind for every code match one code only.
    metrics.update(images, labels=(labels + 1) % 3, codes=torch.zeros_like(labels))
    metrics.update(noise[:0], real=images)
    values = metrics.compute()
    assert values["class_accuracy"] == 0.0 and values["code_accuracy"] == pytest.approx(1 / 3)

    metrics.reset()
    metrics.update(noise, real=images)
    values = metrics.compute()
    assert set(values) == {"classifier_fid"} and values["classifier_fid"] > 1.0


def test_cached_real_features_score_later_passes_against_the_first_real_pass(classes_root, classifier):
    """cache_real_features (the training config): the classifier FID keeps the first complete pass's real features,
    so later passes score as a fresh collection given those real images, and their own real images go unused."""
    model, _ = classifier
    images, labels, _ = load_class_folder(classes_root / "val")
    noise = torch.rand(images.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cached = GenerativeMetrics(model, code_accuracy=False, cache_real_features=True)
    cached.update(noise, real=noise)  # interrupted: reset before its compute, so not what is kept
    cached.reset()
    cached.update(images, real=images, labels=labels)
    assert cached.compute()["classifier_fid"] == pytest.approx(0.0, abs=1e-3)
    for step in (0.5, 0.25):
        fake = (images * step).clamp(-1, 1)
        cached.reset()
        cached.update(fake, real=noise, labels=labels)  # a different real set: ignored, the first one is kept
        fresh = GenerativeMetrics(model, code_accuracy=False)
        fresh.update(fake, real=images, labels=labels)
        got, want = cached.compute(), fresh.compute()
        assert got == pytest.approx(want, rel=1e-5) and got["classifier_fid"] > 1.0


def test_generative_metrics_resizes_samples_and_rejects_bad_labels(classes_root, classifier):
    model, _ = classifier
    images, labels, _ = load_class_folder(classes_root / "val", channels=3, size=2 * SIZE)
    metrics = GenerativeMetrics(model, classifier_fid=False, code_accuracy=False, max_images=10)
    metrics.update(images, labels=labels)  # 3 channels, 32 px: converted to the classifier's 1 x 16 x 16
    metrics.update(images, labels=labels)  # over max_images: ignored
    assert metrics._seen == [10, 0]
    assert metrics.compute()["class_accuracy"] >= 0.9
    with pytest.raises(ValueError, match=r"class_accuracy: need one value in \[0, 3\)"):
        GenerativeMetrics(model).update(images[:2], labels=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="needs a classifier or metrics.collection.data_root"):
        GenerativeMetrics()


# ------------------------------------------------------------------ evaluate on tiny noise-model checkpoints
TINY_GAN = [
    "data=image_folder", "data.image_size=28", "data.num_classes=3", "data.batch_size=8", "data.val_batch_size=8",
    "data.num_workers=0", "generator.ngf=8", "discriminator.ndf=8", "trainer.max_epochs=1",
    "trainer.accelerator=cpu", "trainer.num_sanity_val_steps=0", "trainer.log_every_n_steps=1",
    "+trainer.enable_model_summary=false", "~callbacks.progress_bar", "+trainer.enable_progress_bar=false",
    "logger=csv",
]


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    """Three classes of 28 px images (the DCGAN sizes are 28/32/64)."""
    root = tmp_path_factory.mktemp("digits")
    for split, offset in (("train", 0), ("val", 1000)):
        for cls in range(3):
            (root / split / str(cls)).mkdir(parents=True)
            for i in range(8):
                image = np.asarray(Image.fromarray(pattern(cls, offset + 10 * cls + i)).resize((28, 28)))
                Image.fromarray(image).save(root / split / str(cls) / f"{i}.png")
    return root


def tiny_checkpoint(root: Path, run_dir: Path, experiment: str, *overrides: str) -> Path:
    from conftest import compose_train

    from gan_translate.train import train

    train(compose_train([f"experiment={experiment}", *TINY_GAN, f"data.root={root}", *overrides], run_dir))
    return run_dir / "checkpoints" / "last.ckpt"


def compose_evaluate(overrides: list[str]):
    from conftest import compose_train

    return compose_train(overrides, config_name="evaluate")


def test_evaluate_cli_scores_cgan_samples_by_their_labels(digits_root, tmp_path, monkeypatch):
    from conftest import run_module

    monkeypatch.setenv("GAN_TRANSLATE_CACHE", str(tmp_path / "cache"))
    ckpt = tiny_checkpoint(digits_root, tmp_path / "run", "demo_cgan")
    report_path = tmp_path / "cgan.json"
    # The default split=test: this data has train/ and val/ only, so val is scored, as training validates on it.
    run_module("gan_translate.evaluate", f"ckpt_path={ckpt}", "metrics=generative", "num_generated=30",
               "num_samples=2", "metrics.collection.classifier_epochs=2", f"output={report_path}", cwd=tmp_path)
    report = json.loads(report_path.read_text())
    assert report["split"] == "val"
    assert report["model"] == "ConditionalGAN" and report["num_generated"] == 30 and report["num_real"] == 24
    assert set(report["metrics"]) == {"class_accuracy", "classifier_fid"}
    assert 0.0 <= report["metrics"]["class_accuracy"] <= 1.0 and report["metrics"]["classifier_fid"] > 0
    assert report["classifier"]["classes"] == ["0", "1", "2"] and report["classifier"]["train_images"] == 24
    assert Path(report["classifier"]["cache_file"]).parent == tmp_path / "cache" / "classifiers"
    # The sample grid: 2 rows of one sample per class (28 px + 2 px padding).
    assert Image.open(report_path.with_suffix(".png")).size == (3 * 30 + 2, 2 * 30 + 2)


def test_evaluate_infogan_matches_codes_and_dcgan_gets_the_fid_only(digits_root, tmp_path, monkeypatch):
    from gan_translate.evaluate import evaluate

    monkeypatch.setenv("GAN_TRANSLATE_CACHE", str(tmp_path / "cache"))
    common = ["metrics=generative", "split=val", "num_generated=24", "metrics.collection.classifier_epochs=2"]
    infogan = tiny_checkpoint(digits_root, tmp_path / "infogan", "demo_infogan", "model.categorical_dim=3")
    report = evaluate(compose_evaluate([f"ckpt_path={infogan}", *common, f"output={tmp_path / 'i.json'}"]))
    assert set(report["metrics"]) == {"code_accuracy", "classifier_fid"}
    assert report["metrics"]["code_accuracy"] >= 1 / 3  # 3 x 3: the best of the 3 cyclic matchings has >= 1/3
    assert sorted(c for c in report["code_to_class"] if c >= 0) == [0, 1, 2]
    assert json.loads((tmp_path / "i.json").read_text())["code_to_class"] == report["code_to_class"]

    dcgan = tiny_checkpoint(digits_root, tmp_path / "dcgan", "demo_dcgan")
    report = evaluate(compose_evaluate([f"ckpt_path={dcgan}", *common, f"output={tmp_path / 'd.json'}"]))
    assert set(report["metrics"]) == {"classifier_fid"} and "code_to_class" not in report
    with pytest.raises(ValueError, match="evaluate it with metrics=generative"):
        evaluate(compose_evaluate([f"ckpt_path={dcgan}", "split=val", f"output={tmp_path / 'x.json'}"]))
    with pytest.raises(FileNotFoundError, match="split 'holdout' not found.*the real images"):
        evaluate(compose_evaluate([f"ckpt_path={dcgan}", "metrics=generative", "split=holdout",
                                   f"output={tmp_path / 'x.json'}"]))


def test_training_validation_scores_samples_by_label_and_code(digits_root, tmp_path, monkeypatch):
    """With metrics=generative, validation during training passes each sample's label (cGAN) or categorical code
    (InfoGAN, 4 code values for 3 classes: the metric must be told the model's code count) to the classifier."""
    monkeypatch.setenv("GAN_TRANSLATE_CACHE", str(tmp_path / "cache"))
    common = ["metrics=generative", "metrics.collection.classifier_epochs=2"]
    tiny_checkpoint(digits_root, tmp_path / "cgan", "demo_cgan", *common)
    rows = read_metrics(tmp_path / "cgan")
    assert len(logged(rows, "val/class_accuracy")) == 1 and 0.0 <= logged(rows, "val/class_accuracy")[0] <= 1.0
    assert logged(rows, "val/classifier_fid")[0] > 0 and not logged(rows, "val/code_accuracy")

    tiny_checkpoint(digits_root, tmp_path / "infogan", "demo_infogan", "model.categorical_dim=4", *common)
    rows = read_metrics(tmp_path / "infogan")
    # 4 codes onto 3 classes: at best 3 codes are matched; the best matching does at least as well as chance.
    assert 1 / 4 <= logged(rows, "val/code_accuracy")[0] <= 1.0
    assert 0.0 <= logged(rows, "val/q_accuracy")[0] <= 1.0  # Q reading back its own codes, a separate number
    assert not logged(rows, "val/class_accuracy")  # InfoGAN's codes are not classes


def test_infogan_optuna_sweep_maximises_code_accuracy_and_logs_to_wandb(digits_root, tmp_path):
    """conf/hparams_search/infogan_optuna.yaml: two real trials on class folders, each with an offline W&B run
    that gets the losses, the classifier-scored code accuracy and the latent traversals."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    env = {**os.environ, "GAN_TRANSLATE_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path / "wandb_home"),
           "WANDB_CONFIG_DIR": str(tmp_path / "wandb_home"), "WANDB_CACHE_DIR": str(tmp_path / "wandb_home")}
    env.pop("WANDB_API_KEY", None)
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "gan_translate.train", "experiment=demo_infogan", *TINY_GAN, "logger=wandb",
               f"data.root={digits_root}", "model.categorical_dim=3", "metrics.collection.classifier_epochs=2",
               "hparams_search=infogan_optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"loss.lambda_categorical", "model.generator_lr"}
    assert 0.25 <= results["best_params"]["loss.lambda_categorical"] <= 4
    values = []
    for job in ("0", "1"):
        values += logged(read_metrics(sweep / job), "val/code_accuracy")
        record = next((sweep / job / "wandb").glob("offline-run-*/run-*.wandb")).read_bytes()
        for key in (b"train/loss_info_cat", b"val/code_accuracy", b"traversal_c1", b"samples"):
            assert key in record, key
    assert len(values) == 2 and max(values) == pytest.approx(results["best_value"])
