"""The small pieces GANModule is made of, each on its own (not through a GAN), and what a run prints."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_OVERRIDES, compose_train, run_module
from hydra.utils import instantiate
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities.model_summary.model_summary import get_human_readable_count
from tiny_runs import tiny_config
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from gan_translate.checkpoint import build_model
from gan_translate.models.nonfinite import BufferSnapshot, NonFiniteLossError, NonFiniteLossPolicy
from gan_translate.models.norm_modes import EvalNormMode


class Regression(NonFiniteLossPolicy, pl.LightningModule):
    """A plain one-optimizer model (no GAN) using only the non-finite policy; batch 2 of every epoch is NaN."""

    def __init__(self, policy: str, check: str = "step", fused: bool | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.set_nonfinite_policy(policy, check)
        self.fused = fused
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    def optimizer_groups(self):
        return {"net": self.net.parameters()}

    def configure_optimizers(self):
        if self.fused is None:
            return torch.optim.SGD(self.net.parameters(), lr=0.1)
        return torch.optim.Adam(self.net.parameters(), lr=0.1, fused=self.fused)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if batch_idx == 2:
            x = x * float("nan")
        loss = nn.functional.mse_loss(self.net(x), y)
        opt = self.optimizers()
        if self.loss_is_usable(opt, loss, {"mse": loss}):
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()


def fit(model: pl.LightningModule, *callbacks: pl.Callback, max_epochs: int = 1) -> pl.Trainer:
    data = TensorDataset(torch.randn(16, 2, generator=torch.Generator().manual_seed(1)),
                         torch.randn(16, 1, generator=torch.Generator().manual_seed(2)))
    trainer = pl.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))
    trainer.fit(model, DataLoader(data, batch_size=4))
    return trainer


def test_nonfinite_raise_names_the_optimizer_term_and_step_before_the_update():
    model = Regression("raise")
    with pytest.raises(NonFiniteLossError, match=r"net loss is nan at global step 2 .*mse=nan"):
        fit(model)


def test_nonfinite_skip_drops_the_step_and_restores_norm_statistics():
    seen = {}

    class Watch(pl.Callback):
        # Callbacks' batch hooks run before the model's: batch 3's start sees batch 2 fully done.
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            key = {2: "", 3: "_after"}.get(batch_idx)
            if key is not None:
                seen["stats" + key] = pl_module.net[1].running_mean.clone()
                seen["weights" + key] = pl_module.net[0].weight.detach().clone()

    model = Regression("skip")
    with pytest.warns(UserWarning, match="skipped a step"):
        trainer = fit(model, Watch())
    assert model.skipped_steps == 1 and trainer.global_step == 3  # 4 batches, one update dropped
    assert torch.equal(seen["stats"], seen["stats_after"])  # the NaN forward pass left no trace in the statistics
    assert torch.equal(seen["weights"], seen["weights_after"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_policy_name_is_checked():
    with pytest.raises(ValueError, match=r"model.nonfinite must be one of \('raise', 'skip', 'ignore'\)"):
        Regression("drop")
    with pytest.raises(ValueError, match=r"model.nonfinite_check must be one of \('step', 'deferred'\)"):
        Regression("skip", "later")


class Watch(pl.Callback):
    """Records the weights, norm statistics and Adam step counts before every batch (callbacks' batch hooks run
    before the model's: batch i's start sees batch i - 1 fully done)."""

    def __init__(self) -> None:
        self.seen: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        state = trainer.optimizers[0].state
        self.seen.append({
            "stats": pl_module.net[1].running_mean.clone(), "weights": pl_module.net[0].weight.detach().clone(),
            "adam_steps": [float(s["step"]) for s in state.values()],
        })


def test_deferred_guard_drops_the_update_on_the_device_like_the_host_check():
    """nonfinite_check=deferred: the fused optimizer's found_inf leaves weights, moments and step count as they
    were, the norm statistics are put back, and the host hears of it at the epoch's end; the final weights
    equal those of the host-side skip."""
    host, device = Regression("skip", "step", fused=True), Regression("skip", "deferred", fused=True)
    with pytest.warns(UserWarning, match="skipped a step"):
        fit(host, max_epochs=2)
    watch = Watch()
    with pytest.warns(UserWarning, match=r"skipped a step: 1 non-finite loss\(es\) .*the net loss at global step 2 "):
        fit(device, watch, max_epochs=2)
    assert device.skipped_steps == 2  # one per epoch, counted at each epoch's end
    before, after = watch.seen[2], watch.seen[3]  # around the NaN batch 2 of epoch 0
    assert torch.equal(before["stats"], after["stats"]) and torch.equal(before["weights"], after["weights"])
    assert before["adam_steps"] == after["adam_steps"] == [2.0] * len(before["adam_steps"])
    assert not torch.equal(watch.seen[1]["weights"], before["weights"])  # ordinary batches did update
    for (name, p_host), p_device in zip(host.state_dict().items(), device.state_dict().values(), strict=True):
        assert torch.equal(p_host, p_device), name


def test_deferred_raise_stops_at_the_check_with_finite_weights():
    model = Regression("raise", "deferred", fused=True)
    with pytest.raises(NonFiniteLossError, match=r"the net loss at global step 2 .*the weights are still finite"):
        fit(model)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert torch.isfinite(model.net[1].running_mean).all()


class KernelCounter(TorchDispatchMode):
    """Counts the aten operations run inside it that compute (views do not): on a GPU each is a kernel launch."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def test_norm_statistics_snapshot_costs_a_few_kernels_whatever_the_layer_count():
    """The guards' per-batch snapshot of the norm buffers is a few kernels per dtype, not three per buffer (a
    pix2pix U-Net has ~50 buffers; at batch 1 on a GPU every launch counts); restoring is exact and masked."""
    network = nn.Sequential(*[nn.BatchNorm2d(4) for _ in range(20)])  # 60 buffers: float32 and int64
    buffers = list(network.buffers())
    network(torch.randn(2, 4, 3, 3))
    before = [b.clone() for b in buffers]
    with KernelCounter() as taking:
        snapshot = BufferSnapshot(buffers)
    network(torch.randn(2, 4, 3, 3) * 5)  # the "bad" batch changes every statistic
    changed = [b.clone() for b in buffers]
    with KernelCounter() as keeping:
        snapshot.restore(where=torch.tensor(False))
    assert all(torch.equal(b, c) for b, c in zip(buffers, changed, strict=True))  # kept: the batch was fine
    with KernelCounter() as restoring:
        snapshot.restore(where=torch.tensor(True))
    assert all(torch.equal(b, c) for b, c in zip(buffers, before, strict=True))  # put back bit for bit
    counts = (taking.count, keeping.count, restoring.count)
    assert max(counts) <= 6, f"kernels for {len(buffers)} buffers (take, keep, restore): {counts}"


def test_deferred_guard_costs_a_few_kernels_per_update():
    """The guard runs before every update outside any graph: the flag, the optimizer's found_inf and the record
    of the first bad update take a handful of kernels (they took 16; at batch 1 a GPU pays per launch)."""

    class Counted(Regression):
        counts: list[int] = []

        def _guard_on_device(self, optimizer, loss):
            with KernelCounter() as counter:
                super()._guard_on_device(optimizer, loss)
            self.counts.append(counter.count)

    model = Counted("skip", "deferred", fused=True)
    with pytest.warns(UserWarning, match=r"skipped a step: 1 non-finite loss\(es\) .*the net loss at global step 2 "):
        fit(model)
    assert len(model.counts) == 4 and max(model.counts) <= 6, model.counts


def test_deferred_guard_needs_a_fused_optimizer():
    with pytest.raises(ValueError, match=r"model.nonfinite_check=deferred .* set optim.fused=true"):
        fit(Regression("skip", "deferred", fused=False))


class Normed(EvalNormMode, pl.LightningModule):
    def __init__(self, test_batch_stats: bool) -> None:
        super().__init__()
        self.test_batch_stats = test_batch_stats
        self.norm = nn.BatchNorm2d(3)


@pytest.mark.parametrize("batch_stats", [False, True])
def test_eval_norm_mode_uses_running_or_batch_statistics_and_restores(batch_stats):
    model = Normed(batch_stats)
    model.norm.running_mean.fill_(5.0)
    x = torch.randn(2, 3, 4, 4) * 3 + 1
    running = model.norm.running_mean.clone()
    with model.evaluating():
        out = model.norm(x)
    per_channel_mean = out.mean(dim=(0, 2, 3))
    if batch_stats:  # normalised by the batch's own statistics: zero mean per channel
        torch.testing.assert_close(per_channel_mean, torch.zeros(3), atol=1e-5, rtol=0)
    else:  # by the running mean of 5: strongly negative
        assert (per_channel_mean < -2).all()
    assert torch.equal(model.norm.running_mean, running)  # statistics untouched either way
    assert model.training and model.norm.training and model.norm.momentum == 0.1  # back as it was


def test_cli_run_prints_parameter_counts_and_no_known_third_party_noise(tmp_path):
    overrides = [o for o in TINY_OVERRIDES if "enable_model_summary" not in o]
    result = run_module("gan_translate.train", *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert "FLOPs" not in out  # Lightning's FLOPs column is always 0 for GANs
    assert "LeafSpec" not in out and "litlogger" not in out
    model = build_model(compose_train(TINY_OVERRIDES, tmp_path / "x"))
    generator_params = sum(p.numel() for p in model.generator.parameters())
    assert "UnetGenerator" in out and get_human_readable_count(generator_params) in out


class KernelsPerBatch(pl.Callback):
    """Non-view operations of each training batch (the step and its batch hooks)."""

    def __init__(self) -> None:
        self.counts: list[int] = []
        self._counter: KernelCounter | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._counter = KernelCounter()
        self._counter.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._counter.__exit__(None, None, None)
        self.counts.append(self._counter.count)


@pytest.mark.parametrize("method", ["pix2pix", "cyclegan"])
def test_logging_only_the_logged_batches_keeps_every_logged_value(tmp_path, method):
    """model.log_every_batch=false (trainer=gpu_fast): the loggers get the same values at the same steps, and the
    batches in between run fewer kernels (no logged copies, no mean D scores)."""
    tables, kernels = {}, {}
    for every_batch in (True, False):
        cfg = tiny_config(method, tmp_path / str(every_batch), f"model.log_every_batch={every_batch}",
                          "trainer.log_every_n_steps=2", "trainer.max_epochs=2", train_length=8)
        pl.seed_everything(0)
        counter = KernelsPerBatch()
        trainer = instantiate(cfg.trainer, logger=CSVLogger(tmp_path / str(every_batch), name="", version=""),
                              enable_checkpointing=False, enable_progress_bar=False, callbacks=[counter])
        trainer.fit(build_model(cfg), datamodule=instantiate(cfg.data))
        tables[every_batch] = (tmp_path / str(every_batch) / "metrics.csv").read_text()
        kernels[every_batch] = counter.counts
    assert "train/loss_D" in tables[True] or "train/loss_D_A" in tables[True]
    assert tables[False] == tables[True]
    # From the third batch on (the first ones set up optimizer states and Lightning's result objects): batches
    # 4, 6, ... reach the loggers and cost the same; those in between cost less.
    logged = [i for i in range(2, len(kernels[True])) if (i + 1) % 2 == 0]
    others = [i for i in range(2, len(kernels[True])) if i not in logged]
    assert all(kernels[False][i] == kernels[True][i] for i in logged), kernels
    assert all(kernels[False][i] <= kernels[True][i] - 5 for i in others), kernels


def test_linear_decay_follows_the_papers_rule():
    """100 constant + 100 decaying epochs as the reference (1 - max(0, e + 1 - 100) / 101); with the default
    constant_epochs (half, rounded up) a 1-epoch run trains at the full rate (it trained at half)."""
    from gan_translate.schedulers import LinearDecayLR

    def rates(total: int, constant: int | None = None) -> list[float]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = LinearDecayLR(optimizer, total, constant)
        seen = []
        for _ in range(total):
            seen.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return seen

    paper = rates(200, 100)
    assert paper[:100] == [1.0] * 100 and paper[100] == pytest.approx(100 / 101)
    assert paper[-1] == pytest.approx(1 / 101)
    assert rates(200) == paper
    assert rates(1) == [1.0]
    assert rates(3) == pytest.approx([1.0, 1.0, 0.5])
    assert rates(5) == pytest.approx([1.0, 1.0, 1.0, 2 / 3, 1 / 3])  # 3 constant (half of 5, rounded up) + 2
