"""Optuna sweep: conf/hparams_search/pix2pix_optuna.yaml runs real trials and records the best parameters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _tiny_run import TINY

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_optuna_sweep_two_tiny_trials(tmp_path):
    cmd = [
        sys.executable, "-m", "gan_translate.train", "hparams_search=pix2pix_optuna",
        "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}", "logger=csv",
        *TINY, "generator.num_downs=5",
        # A tiny random feature network stands in for Inception: FID without weights.
        "+metrics.collection.feature_extractor._target_=gan_translate.metrics.TinyFeatureExtractor",
        "+metrics.collection.feature_extractor.num_features=16",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"loss.lambda_l1", "optim.lr"}
    assert 10 <= results["best_params"]["loss.lambda_l1"] <= 300
    assert 5e-5 <= results["best_params"]["optim.lr"] <= 1e-3
    # Each trial trained in its own job folder and the best value is one of their val/fid results.
    values = []
    for job in ("0", "1"):
        assert (tmp_path / job / "checkpoints" / "last.ckpt").is_file()
        overrides = yaml.safe_load((tmp_path / job / ".hydra" / "overrides.yaml").read_text())
        assert any(o.startswith("optim.lr=") for o in overrides)
        rows = (tmp_path / job / "csv" / "metrics.csv").read_text().splitlines()
        column = rows[0].split(",").index("val/fid")
        values += [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert min(values) == pytest.approx(results["best_value"])
