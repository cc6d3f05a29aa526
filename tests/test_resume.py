"""Resume is exact at epoch boundaries; checkpoints are written atomically and never with NaN weights."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import run_module
from hydra import compose, initialize_config_dir

from gan_translate.resume import AtomicCheckpointIO, NonFiniteCheckpointError, resume_checkpoint
from gan_translate.train import CONF_DIR, train

REPO = Path(__file__).resolve().parent.parent
# 64 px (the U-Net/PatchGAN minimum), widths 8, 3 batches of 4 per epoch, nothing but checkpoints written.
TINY = [
    "generator.ngf=8", "discriminator.ndf=8", "data.train_length=12", "data.val_length=4", "data.batch_size=4",
    "data.num_workers=0", "trainer.accelerator=cpu", "trainer.deterministic=true", "trainer.num_sanity_val_steps=0",
    "callbacks.progress_bar=null", "callbacks.samples=null", "callbacks.lr_monitor=null", "logger=none", "seed=7",
]


def compose_train(*overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[*TINY, *overrides])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def test_resume_at_epoch_boundary_matches_uninterrupted_run(tmp_path):
    """pix2pix with dropout and random flips: every random draw after the resume must match."""
    full, split = tmp_path / "full", tmp_path / "split"
    train(compose_train("trainer.max_epochs=2", f"paths.output_dir={full}"))
    # Stop after epoch 0 (3 batches x 2 optimizer steps), like a job that ran out of time ...
    train(compose_train("trainer.max_epochs=2", "trainer.max_steps=6", f"paths.output_dir={split}"))
    assert torch.load(split / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 6
    # ... then continue the run in its folder.
    train(compose_train("trainer.max_epochs=2", f"resume={split}", f"paths.output_dir={split}"))
    assert torch.load(split / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 12
    assert_same_weights(full / "checkpoints/last.ckpt", split / "checkpoints/last.ckpt")


@pytest.mark.slow
def test_cyclegan_resume_restores_image_pools_and_matches(tmp_path):
    common = ["experiment=shapes_cyclegan", "generator=unet_64", "model.pool_size=6", "data.train_length=8",
              "trainer.max_epochs=2"]
    full, split = tmp_path / "full", tmp_path / "split"
    train(compose_train(*common, f"paths.output_dir={full}"))
    train(compose_train(*common, "trainer.max_steps=4", f"paths.output_dir={split}"))
    pools = torch.load(split / "checkpoints/last.ckpt", weights_only=True)["image_pools"]
    assert pools["fake_A"]["images"].shape[0] == 6  # 2 batches of 4 fakes, capped at the pool size
    train(compose_train(*common, f"ckpt_path={split / 'checkpoints/last.ckpt'}", f"paths.output_dir={tmp_path / 'r'}"))
    assert_same_weights(full / "checkpoints/last.ckpt", tmp_path / "r/checkpoints/last.ckpt")


def test_resume_dir_without_checkpoint_starts_fresh_and_rejects_conflicts(tmp_path):
    assert resume_checkpoint(None, str(tmp_path)) is None
    with pytest.raises(ValueError, match="not both"):
        resume_checkpoint("a.ckpt", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        resume_checkpoint(str(tmp_path / "missing.ckpt"), None)
    (tmp_path / "file.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match="ckpt_path="):
        resume_checkpoint(None, str(tmp_path / "file.ckpt"))


def test_a_new_run_in_a_folder_that_holds_a_run_is_refused(tmp_path):
    """hydra.run.dir given twice: the second run overwrote the first one's last.ckpt (Lightning only warns)."""
    run = tmp_path / "run"
    train(compose_train("trainer.max_epochs=1", f"paths.output_dir={run}"))
    before = (run / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(FileExistsError, match=f"already holds a run .*resume={run}"):
        train(compose_train("trainer.max_epochs=1", f"paths.output_dir={run}"))
    assert (run / "checkpoints" / "last.ckpt").read_bytes() == before
    train(compose_train("trainer.max_epochs=2", f"resume={run}", f"paths.output_dir={run}"))  # continuing is fine
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12


def test_the_command_line_refuses_it_before_hydra_rewrites_the_run_record(tmp_path):
    """Through Hydra: the refusal comes before Hydra writes .hydra/ into the folder, so the first run's record
    of its config survives; a sweep into a used sweep folder is refused the same way; resume= still continues."""
    run, sweep = tmp_path / "run", tmp_path / "sweep"
    tiny = [*TINY, "trainer.max_epochs=1", "data.train_length=4"]
    run_module("gan_translate.train", *tiny, f"hydra.run.dir={run}", cwd=tmp_path)
    record = (run / ".hydra" / "config.yaml").read_bytes()
    again = run_module("gan_translate.train", *tiny, "loss.lambda_l1=1", f"hydra.run.dir={run}", cwd=tmp_path,
                       check=False)
    assert again.returncode != 0 and f"resume={run}" in again.stderr
    assert (run / ".hydra" / "config.yaml").read_bytes() == record
    other = tmp_path / "other"  # resume=RUN into another run's folder would write RUN's continuation over it
    run_module("gan_translate.train", *tiny, f"hydra.run.dir={other}", cwd=tmp_path)
    into_other = run_module("gan_translate.train", *tiny, "trainer.max_epochs=2", f"resume={run}",
                            f"hydra.run.dir={other}", cwd=tmp_path, check=False)
    assert into_other.returncode != 0 and f"{other} already holds a run" in into_other.stderr
    run_module("gan_translate.train", *tiny, "trainer.max_epochs=2", f"resume={run}", cwd=tmp_path)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4  # 2 epochs x 1 batch x 2 steps
    # The run's first record is kept; the resume's own is beside it.
    assert (run / ".hydra" / "config.yaml").read_bytes() == record
    (resumed,) = (run / ".hydra" / "resumed").glob("*/overrides.yaml")
    assert f"resume={run}" in resumed.read_text()

    run_module("gan_translate.train", "-m", *tiny, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    record = (sweep / "0" / ".hydra" / "config.yaml").read_bytes()
    again = run_module("gan_translate.train", "-m", *tiny, "loss.lambda_l1=1,2", f"hydra.sweep.dir={sweep}",
                       cwd=tmp_path, check=False)
    assert again.returncode != 0 and "already holds runs" in again.stderr
    assert (sweep / "0" / ".hydra" / "config.yaml").read_bytes() == record and not (sweep / "1").exists()


def test_last_checkpoint_holds_the_final_epoch_whatever_its_interval(tmp_path):
    """last.ckpt every 2 epochs, a 3-epoch run: it still ends with epoch 3's weights (3 x 3 batches x 2 steps),
    the same as with a save every epoch, and continuing from either gives the same run."""
    runs = {n: tmp_path / f"every{n}" for n in (1, 2)}
    common = {n: [f"+callbacks.last_checkpoint.every_n_epochs={n}", "callbacks.best_checkpoint=null",
                  "callbacks.periodic_checkpoint=null", f"paths.output_dir={runs[n]}"] for n in runs}
    for n in runs:
        train(compose_train("trainer.max_epochs=3", *common[n]))
        assert torch.load(runs[n] / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 18
    assert_same_weights(runs[1] / "checkpoints/last.ckpt", runs[2] / "checkpoints/last.ckpt")
    for n in runs:
        train(compose_train("trainer.max_epochs=4", f"resume={runs[n]}", *common[n]))
        assert torch.load(runs[n] / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 24
    assert_same_weights(runs[1] / "checkpoints/last.ckpt", runs[2] / "checkpoints/last.ckpt")


def test_interval_checkpoint_refreshes_last_mid_epoch(tmp_path):
    train(compose_train("trainer.max_epochs=1", "trainer.max_steps=4", "callbacks.best_checkpoint=null",
                        "callbacks.interval_checkpoint.every_n_train_steps=2", f"paths.output_dir={tmp_path}"))
    # Saved at optimizer steps 2 and 4, i.e. inside the 3-batch epoch; no epoch-end save happened.
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4


def test_atomic_write_keeps_old_checkpoint_on_failure_and_refuses_nan(tmp_path):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises(NonFiniteCheckpointError, match="w"):
        io.save_checkpoint({"state_dict": {"w": torch.tensor([1.0, float("nan")])}}, path)
    with pytest.raises(Exception):  # noqa: B017 - any pickling error; the point is what stays on disk
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "bad": lambda: None}, path)
    assert torch.equal(torch.load(path, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temporary files left


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    """A real `python -m gan_translate.train` killed with SIGKILL after an epoch checkpoint, then resumed."""
    args = [*TINY, "data.train_length=16", "trainer.max_epochs=6", "callbacks.periodic_checkpoint.every_n_epochs=1"]
    # One intra-op thread, as conftest sets for the in-process reference run: bit-identity needs the same kernels.
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "gan_translate.train", *args, f"resume={run_dir}"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not (run_dir / "checkpoints/epoch001.ckpt").exists() and process.poll() is None:
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = torch.load(run_dir / "checkpoints/last.ckpt", weights_only=True)["epoch"]
    assert killed_at < 5, "the run finished before it was killed; nothing was tested"
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    train(compose_train(*args[len(TINY):], f"paths.output_dir={tmp_path / 'full'}"))
    assert_same_weights(tmp_path / "full/checkpoints/last.ckpt", run_dir / "checkpoints/last.ckpt")


def test_best_checkpoint_by_a_higher_is_better_metric_survives_resume(tmp_path, caplog):
    """monitor.mode=max: the run's summary names the highest PSNR as best, the same the best checkpoint holds;
    last.ckpt carries the best checkpoint's state of that epoch, so a resume keeps exactly one best file."""
    run = tmp_path / "run"
    settings = ["monitor.metric=val/psnr", "monitor.mode=max", "metrics.collection.fid=false",
                "metrics.collection.lpips=false", "callbacks.periodic_checkpoint=null", f"paths.output_dir={run}"]
    with caplog.at_level("INFO", logger="gan_translate.train"):
        train(compose_train("trainer.max_epochs=3", *settings))
    summary = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("val/psnr: first validation"))
    best_summary = float(summary.split("best ")[1].split(",")[0])
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    (state,) = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint{'monitor': 'val/psnr'")]
    assert Path(state["best_model_path"]).exists()  # written before last.ckpt took its state
    assert best_summary == pytest.approx(float(state["best_model_score"]), abs=1e-4)
    assert [p.name for p in (run / "checkpoints").glob("best_*.ckpt")] == [Path(state["best_model_path"]).name]
    train(compose_train("trainer.max_epochs=5", f"resume={run}", *settings))
    assert len(list((run / "checkpoints").glob("best_*.ckpt"))) == 1


def test_resume_warning_lists_model_changes_first_and_not_the_moved_run_folder(tmp_path, caplog):
    """Resuming into a new folder moves every checkpoint and sample dirpath: not a change. A changed loss weight
    is, and the model's keys come before the top-level copies they were interpolated from."""
    from gan_translate.checkpoint import build_model
    from gan_translate.train import check_resumable, choose_monitor

    def model(*overrides: str):
        cfg = compose_train("trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'second'}", *overrides)
        choose_monitor(cfg)  # as train() does before it builds the model
        return build_model(cfg)

    train(compose_train("trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'first'}"))
    ckpt = str(tmp_path / "first/checkpoints/last.ckpt")
    moved, changed = model(), model("loss.lambda_l1=50")

    def resume_warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("resuming")]

    caplog.clear()
    with caplog.at_level("WARNING", logger="gan_translate.train"):
        check_resumable(ckpt, moved)
        assert not resume_warnings()
        check_resumable(ckpt, changed)
    (message,) = resume_warnings()
    assert "differs in 2 keys: model.loss.lambda_l1, loss.lambda_l1." in message


def test_run_summary_after_a_resume_covers_the_whole_run(tmp_path, caplog):
    """The validation history travels in the checkpoint: "first validation" is the run's first, not the resume's."""
    run = tmp_path / "run"
    settings = ["monitor.metric=val/psnr", "monitor.mode=max", "metrics.collection.fid=false",
                "metrics.collection.lpips=false", f"paths.output_dir={run}"]

    def summary() -> str:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("val/psnr: first")][-1]

    with caplog.at_level("INFO", logger="gan_translate.train"):
        train(compose_train("trainer.max_epochs=1", *settings))
        first_run = summary()
        train(compose_train("trainer.max_epochs=3", f"resume={run}", *settings))
        resumed = summary()
    first = first_run.split("first validation ")[1].split(",")[0]
    assert resumed.startswith(f"val/psnr: first validation {first},")
    history = torch.load(run / "checkpoints/last.ckpt", weights_only=False)["callbacks"]["ValidationHistory"]
    assert [epoch["epoch"] for epoch in history["epochs"]] == [0, 1, 2]


@pytest.mark.parametrize(("scheduler", "expected"), [
    ("linear", {2: 2e-4, 3: 1.5e-4, 4: 1e-4, 5: 0.5e-4}),
    # cosine over 6 epochs from epoch 2; the saved T_max=2 climbed back up (periodic past its end)
    ("cosine", {e: 1e-4 * (1 + math.cos(math.pi * e / 6)) for e in (2, 3, 4, 5)}),
])
def test_resume_that_extends_the_run_decays_over_the_new_length(tmp_path, scheduler, expected):
    """Linear decay, 2 epochs (1 constant, 1 decaying), then resumed to 6: the schedule is the config's (3 + 3),
    as the reference's --continue_train; the saved one would run its rate to 0 at epoch 2 and stay there.
    The same for the cosine schedule."""
    import pytorch_lightning as pl

    class Rates(pl.Callback):
        def __init__(self) -> None:
            self.rates: dict[int, float] = {}

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self.rates[trainer.current_epoch] = float(trainer.optimizers[0].param_groups[0]["lr"])

    run = tmp_path / "run"
    train(compose_train("trainer.max_epochs=2", f"scheduler={scheduler}", "metrics=none", f"paths.output_dir={run}"))
    rates = Rates()
    train(compose_train("trainer.max_epochs=6", f"scheduler={scheduler}", "metrics=none", f"resume={run}",
                        f"paths.output_dir={run}"), extra_callbacks=[rates])
    assert rates.rates == pytest.approx(expected)


def test_resumed_run_keeps_its_earlier_csv_rows(tmp_path):
    """resume=RUN continues metrics.csv: Lightning's CSV logger deleted it. A row logged after the checkpoint by
    the stopped run (here written by hand: the tail of a killed run) is dropped, as that part is trained again."""
    import csv

    run = tmp_path / "run"
    settings = ["logger=csv", "trainer.log_every_n_steps=1", "metrics=none", f"paths.output_dir={run}"]
    train(compose_train("trainer.max_epochs=1", *settings))
    table = run / "csv" / "metrics.csv"
    with table.open(newline="") as file:
        first = list(csv.DictReader(file))
    last_step = max(int(row["step"]) for row in first)
    with table.open("a", newline="") as file:
        file.write(",".join("999" if key == "train/loss_D" else str(last_step + 1) if key == "step" else ""
                            for key in first[0]) + "\n")
    train(compose_train("trainer.max_epochs=2", f"resume={run}", *settings))
    with table.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert rows[: len(first)] == first  # the first run's rows, as they were
    assert not any(row.get("train/loss_D") == "999" for row in rows)
    assert {row["epoch"] for row in rows if row.get("val/l1")} == {"0", "1"}
    train_steps = [int(row["step"]) for row in rows if row.get("train/loss_D")]
    assert train_steps == sorted(set(train_steps)) and max(train_steps) > last_step


def test_a_failure_in_validation_keeps_the_epoch_in_on_exception_ckpt(tmp_path, caplog):
    """A truncated val file past the sanity check failed the run after a whole epoch of training, and no checkpoint
    held it. checkpoints/on_exception.ckpt does; resuming from it once the file is fixed ends where an
    uninterrupted run ends, bit for bit."""
    import numpy as np
    from PIL import Image

    from gan_translate.data.datasets import DataError

    root = tmp_path / "data"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        for i in range(4):
            pixels = np.random.default_rng(i).integers(0, 256, (64, 128, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / f"{i}.jpg", quality=95)
    broken = root / "val" / "3.jpg"
    good = broken.read_bytes()
    broken.write_bytes(good[: len(good) // 2])  # the header reads; decoding fails
    data = ["data=aligned", f"data.root={root}", "data.preprocess=none", "data.batch_size=1", "data.val_batch_size=1",
            "trainer.max_epochs=2", "metrics=none", "callbacks.periodic_checkpoint=null"]

    tiny = [o for o in TINY if not o.startswith(("data.train_length", "data.val_length"))]

    def run(folder: str, *extra: str):
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose("train", overrides=[*tiny, *data, f"paths.output_dir={tmp_path / folder}", *extra])
        return train(cfg)

    with pytest.raises(DataError, match=r"3\.jpg"):
        run("failed")
    saved = tmp_path / "failed" / "checkpoints" / "on_exception.ckpt"
    assert torch.load(saved, map_location="cpu", weights_only=True)["global_step"] == 2 * 4  # epoch 0 kept
    assert "continue from it with ckpt_path=" in caplog.text
    # A new run in that folder neither resumes from it silently (Lightning's "last" rule with an
    # OnExceptionCheckpoint among the callbacks did) nor overwrites it.
    with pytest.raises(FileExistsError, match="on_exception.ckpt"):
        run("failed")
    broken.write_bytes(good)
    run("resumed", f"ckpt_path={saved}")
    run("uninterrupted")
    assert_same_weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt",
                        tmp_path / "uninterrupted" / "checkpoints" / "last.ckpt")
    run("failed", f"resume={tmp_path / 'failed'}")  # resume= continues from the state saved at the failure
    assert_same_weights(tmp_path / "failed" / "checkpoints" / "last.ckpt",
                        tmp_path / "uninterrupted" / "checkpoints" / "last.ckpt")
    assert not saved.exists()  # the finished run removed it


def test_resuming_another_models_or_other_widths_checkpoint_names_it(tmp_path):
    """A checkpoint whose optimizers have the same layout but whose weights do not fit failed inside fit with
    torch's bare "Error(s) in loading state_dict"."""
    from gan_translate.checkpoint import CheckpointError

    run = tmp_path / "run"
    train(compose_train("trainer.max_epochs=1", f"paths.output_dir={run}"))
    last = run / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"last\.ckpt cannot be resumed.*weights have other shapes.*ngf"):
        train(compose_train("trainer.max_epochs=2", "generator.ngf=16", f"ckpt_path={last}",
                            f"paths.output_dir={tmp_path / 'wider'}"))
    with pytest.raises(CheckpointError, match=r"it holds a Pix2Pix, this config builds a CycleGAN"):
        train(compose_train("experiment=shapes_cyclegan", "trainer.max_epochs=2", f"ckpt_path={last}",
                            f"paths.output_dir={tmp_path / 'other'}"))


def test_resume_continues_from_the_checkpoint_with_more_steps_whatever_the_file_times(tmp_path):
    """resume=RUN chose between last.ckpt and on_exception.ckpt by file time, so a copy that reset the times (or an
    older on_exception.ckpt touched later) continued from the state with fewer steps."""
    import os

    from gan_translate.resume import resume_checkpoint

    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"global_step": 40}, folder / "last.ckpt")
    torch.save({"global_step": 24}, folder / "on_exception.ckpt")
    os.utime(folder / "last.ckpt", (1_000, 1_000))  # the further state has the older file time
    assert resume_checkpoint(None, str(tmp_path / "run")) == str(folder / "last.ckpt")
    torch.save({"global_step": 48}, folder / "on_exception.ckpt")
    assert resume_checkpoint(None, str(tmp_path / "run")) == str(folder / "on_exception.ckpt")
    (folder / "on_exception.ckpt").write_text("truncated")  # unreadable: the readable state wins
    assert resume_checkpoint(None, str(tmp_path / "run")) == str(folder / "last.ckpt")
