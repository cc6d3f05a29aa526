"""scripts/quality_facades.py, the facades quality protocol, end to end on a tiny aligned folder: train, translate
the test split in the paper's test mode (dropout on, per-image batch statistics) and in eval mode, score each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import write_aligned
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_protocol_translates_and_scores_both_test_modes(tmp_path):
    data = write_aligned(tmp_path / "facades", splits=("train", "val", "test"), count=3, size=128)
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "scripts" / "quality_facades.py"), "--setting", "cpu", "--split", "test",
               "--epochs", "1", "--data", str(data), "--out", str(out),
               "generator.ngf=8", "discriminator.ndf=8", "data.num_workers=0", "logger=csv", "callbacks.samples=null"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "quality.json").read_text())
    assert report["split"] == "test" and report["num_images"] == 3
    assert set(report["modes"]) == {"paper", "eval"}
    assert report["modes"]["paper"]["dropout"] and report["modes"]["paper"]["batch_statistics"]
    assert not report["modes"]["eval"]["dropout"] and not report["modes"]["eval"]["batch_statistics"]
    for scores in report["modes"].values():
        assert 0 <= scores["l1"] <= 1 and scores["psnr"] > 0 and scores["num_images"] == 3
    # The two modes are different translations of the same inputs (dropout and batch statistics change them).
    paper, evaluated = (np.asarray(Image.open(out / f"test_output_{mode}" / "000.png")) for mode in ("paper", "eval"))
    assert paper.shape == evaluated.shape == (128, 128, 3) and not np.array_equal(paper, evaluated)
    assert Path(report["grid"]).is_file()

    # Scoring elsewhere (the GPU machine returns only the outputs and the run's .hydra): the targets and inputs
    # are rebuilt from the data with the run's own settings, the same images, so the same scores.
    targets = {p.name: np.asarray(Image.open(p)) for p in (out / "test_target").glob("*.png")}
    for folder in ("test_target", "test_input", "checkpoints"):
        shutil.rmtree(out / folder)
    again = subprocess.run([*command[:2], "--stage", "score", *command[2:]], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    rebuilt = {p.name: np.asarray(Image.open(p)) for p in (out / "test_target").glob("*.png")}
    assert rebuilt.keys() == targets.keys() and all(np.array_equal(rebuilt[k], targets[k]) for k in targets)
    assert json.loads((out / "quality.json").read_text())["modes"] == report["modes"]
