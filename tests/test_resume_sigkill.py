"""The README's claim, short enough for the default suite: `python -m gan_translate.train`, kill -9 right after an
epoch's checkpoint, resume in the run folder -> bit-identical weights to an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from gan_translate.train import CONF_DIR, train

REPO = Path(__file__).resolve().parent.parent
EPOCHS = 4
# 32 px, widths 8, 2 batches of 4 per epoch (random flips: the resumed run must restore the random states),
# checkpoints/last.ckpt after every epoch, nothing else written.
ARGS = [
    "generator.ngf=8", "discriminator.ndf=8", "generator.num_downs=5", "data.size=32", "data.train_length=8",
    "data.val_length=4", "data.batch_size=4", "data.val_batch_size=4", "data.num_workers=0",
    "trainer.accelerator=cpu", "trainer.deterministic=true", "trainer.num_sanity_val_steps=0",
    f"trainer.max_epochs={EPOCHS}", "+trainer.enable_model_summary=false", "callbacks.progress_bar=null",
    "callbacks.samples=null", "callbacks.lr_monitor=null", "callbacks.periodic_checkpoint=null",
    "logger=none", "metrics=none", "seed=7",
]


def compose_train(*overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[*ARGS, *overrides])


def checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_sigkill_after_an_epoch_then_resume_gives_identical_weights(tmp_path):
    run_dir = tmp_path / "killed"
    # One thread, as in this test process, so that both runs do the same floating-point sums.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "killed.log"
    with open(log, "w") as output:  # a file, not a pipe that could fill up and stall the run
        process = subprocess.Popen(
            [sys.executable, "-m", "gan_translate.train", *ARGS, f"resume={run_dir}"],
            cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT,
        )
    last = run_dir / "checkpoints/last.ckpt"  # first written (atomically: complete once it exists) after epoch 0
    deadline = time.monotonic() + 300
    try:
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, f"the run ended before it was killed:\n{log.read_text()[-3000:]}"
    assert last.exists(), f"no checkpoint within 300 s:\n{log.read_text()[-3000:]}"
    killed_at = checkpoint(last)["epoch"]
    assert killed_at < EPOCHS - 1, "the run had finished its last epoch: nothing was resumed"

    # The same command again continues the run in its folder (here in-process: same code, no second start-up).
    train(compose_train(f"resume={run_dir}", f"paths.output_dir={run_dir}"))
    train(compose_train(f"paths.output_dir={tmp_path / 'full'}"))
    resumed, full = checkpoint(last), checkpoint(tmp_path / "full/checkpoints/last.ckpt")
    assert resumed["global_step"] == full["global_step"] == EPOCHS * 2 * 2  # 2 batches, 2 optimizer steps each
    assert resumed["state_dict"].keys() == full["state_dict"].keys()
    different = [k for k in full["state_dict"] if not torch.equal(resumed["state_dict"][k], full["state_dict"][k])]
    assert not different, f"{len(different)} tensors differ after the resume, e.g. {different[:3]}"
