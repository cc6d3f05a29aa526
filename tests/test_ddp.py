"""Real 2-process DDP (gloo, spawn) runs through gan_translate.train: data sharding, weight sync, rank-0 files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from tiny_runs import tiny_config

from gan_translate.checkpoint import model_from_checkpoint
from gan_translate.train import train

ROOT = Path(__file__).resolve().parent.parent


class RankProbe(pl.Callback):
    """Runs inside each DDP worker: records which samples this rank trained on and, at the end, its
    parameters and the all_gather of every rank's parameter checksum."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.seen: list[tuple[int, str]] = []  # (epoch, sample name)
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.extend((trainer.current_epoch, name) for name in batch["name"])

    def on_train_end(self, trainer, pl_module) -> None:
        params = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
        checksum = torch.stack([p.double().sum() for p in params.values()]).sum().reshape(1)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"world_size": trainer.world_size, "seen": self.seen, "params": params, "initial": self.initial,
             "gathered_checksums": pl_module.all_gather(checksum).flatten()},
            self.out_dir / f"rank{trainer.global_rank}.pt",
        )


# A monitored metric, so that train() returns it from the spawned processes.
MONITOR = {"pix2pix": ["monitor.metric=val/psnr", "monitor.mode=max"], "cyclegan": ["monitor.metric=val/cycle_l1"]}


def ddp_train(model: str, tmp_path: Path, *overrides: str) -> tuple[float | None, list[dict]]:
    probe_dir = tmp_path / "probe"
    cfg = tiny_config(
        model, tmp_path / "run", "trainer=ddp_cpu", "trainer.max_epochs=2", "logger=csv", *MONITOR[model],
        "+callbacks.probe._target_=test_ddp.RankProbe", f"+callbacks.probe.out_dir={probe_dir}", *overrides,
    )
    value = train(cfg)
    ranks = [torch.load(probe_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return value, ranks


def check_synchronised_training(ranks: list[dict]) -> None:
    rank0, rank1 = ranks
    assert rank0["world_size"] == rank1["world_size"] == 2
    # DistributedSampler: in every epoch each rank trained on its own half of the data.
    for epoch in (0, 1):
        seen0 = [name for e, name in rank0["seen"] if e == epoch]
        seen1 = [name for e, name in rank1["seen"] if e == epoch]
        assert len(seen0) == len(seen1) == 4 and not set(seen0) & set(seen1)
        assert len(set(seen0) | set(seen1)) == 8
    # G and D trained (moved from the init) and ended bit-identical on both ranks.
    assert rank0["params"].keys() == rank1["params"].keys()
    for name in rank0["params"]:
        assert torch.equal(rank0["params"][name], rank1["params"][name]), name
    moved = [n for n in rank0["params"] if not torch.equal(rank0["params"][n], rank0["initial"][n])]
    assert any(n.startswith("generator") for n in moved) and any(n.startswith("discriminator") for n in moved)
    gathered = rank0["gathered_checksums"]
    assert gathered.numel() == 2 and gathered[0] == gathered[1]
    assert torch.equal(rank0["gathered_checksums"], rank1["gathered_checksums"])


def test_pix2pix_ddp_cpu_two_processes(tmp_path):
    value, ranks = ddp_train("pix2pix", tmp_path)
    check_synchronised_training(ranks)
    # The spawned fit's metrics come back to the main process (what sweepers read).
    assert value is not None and torch.isfinite(torch.tensor(value))
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["epoch_0000.png", "epoch_0001.png"]
    model = model_from_checkpoint(run / "checkpoints" / "last.ckpt")
    for name, param in model.named_parameters():
        assert torch.equal(param, ranks[0]["params"][name]), name


class PooledFeatures(torch.nn.Module):
    """A stand-in for the FID Inception TorchScript file: [-1, 1] images -> 2048-d features."""

    def __init__(self) -> None:
        super().__init__()
        self.project = torch.nn.Linear(3, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(x.mean(dim=(2, 3)))


def test_ddp_cpu_with_fid_from_a_torchscript_file(tmp_path):
    """With the FID weights cached, FID is on by default, and the spawn launcher failed to pickle the TorchScript
    network ("WrapNet ... does not have a __getstate__"): the extractor now reloads it from its file."""
    torch.manual_seed(0)
    weights = tmp_path / "inception.pt"
    torch.jit.save(torch.jit.script(PooledFeatures()), str(weights))
    cfg = tiny_config(
        "pix2pix", tmp_path / "run", "trainer=ddp_cpu", "logger=csv", f"metrics.fid_weights={weights}",
        "metrics.collection.fid=true", "monitor.metric=val/fid", "monitor.mode=min",
    )
    value = train(cfg)
    assert value is not None and torch.isfinite(torch.tensor(value))
    rows = (tmp_path / "run" / "csv" / "metrics.csv").read_text()
    assert "val/fid" in rows.splitlines()[0]


@pytest.mark.slow
def test_cyclegan_ddp_cpu_two_processes(tmp_path):
    value, ranks = ddp_train("cyclegan", tmp_path)
    check_synchronised_training(ranks)
    assert value is not None and torch.isfinite(torch.tensor(value))
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_hydra_multirun_with_ddp_cpu(tmp_path):
    """ddp_spawn does not re-run argv, so each multirun job trains in its own folder."""
    sweep = tmp_path / "sweep"
    command = [
        sys.executable, "-m", "gan_translate.train", "-m", "trainer=ddp_cpu", "loss.lambda_l1=50,100",
        "generator.num_downs=5", "generator.ngf=8", "discriminator.ndf=8", "data.size=32", "data.train_length=4",
        "data.val_length=2", "data.num_workers=0", "data.batch_size=2", "trainer.max_epochs=1",
        "callbacks.progress_bar=null", f"hydra.sweep.dir={sweep}",
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        checkpoint = sweep / job / "checkpoints" / "last.ckpt"
        assert checkpoint.is_file()
        model = model_from_checkpoint(checkpoint)
        assert model.loss.lambda_l1 == (50.0 if job == "0" else 100.0)


def test_pix2pixhd_stage2_with_a_frozen_g1_ddp_cpu_two_processes(tmp_path):
    """pix2pixHD's stage 2 under DDP: every rank loads G1 from the stage-1 file, G1 stays frozen in epoch 0 (its
    requires_grad switched after DDP wrapped the model) and trains in epoch 1; the ranks end identical."""
    from conftest import compose_train
    from test_pix2pixhd import LOCAL, TINY_HD

    stage1 = tmp_path / "stage1"
    train(compose_train(TINY_HD, stage1))
    probe_dir = tmp_path / "probe"
    cfg = compose_train([*TINY_HD, *LOCAL, f"model.global_ckpt={stage1 / 'checkpoints/last.ckpt'}",
                         "model.fix_global_epochs=1", "trainer.max_epochs=2", "trainer=ddp_cpu",
                         "+callbacks.probe._target_=test_ddp.RankProbe", f"+callbacks.probe.out_dir={probe_dir}"],
                        tmp_path / "run")
    train(cfg)
    ranks = [torch.load(probe_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]
    check_synchronised_training(ranks)
    stage1_weights = torch.load(stage1 / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    # G1 is generator.network.features.* in stage 1 and generator.network.global_features.* in stage 2.
    g1 = {n: n.replace("network.global_features.", "network.features.", 1)
          for n in ranks[0]["params"] if n.startswith("generator.network.global_features.")}
    assert g1 and all(source in stage1_weights for source in g1.values())
    for rank in ranks:  # both ranks started from stage 1's G1, and G1 trained once unfrozen
        assert all(torch.equal(rank["initial"][n], stage1_weights[source]) for n, source in g1.items())
        assert any(not torch.equal(rank["params"][n], rank["initial"][n]) for n in g1)
