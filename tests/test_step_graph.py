"""model.step_graph: the whole training step captured once and replayed per batch (models/step_graph.py).

On the CPU there is no CUDA graph: the captured step runs eagerly, and everything the host redoes after a replay
(Lightning's step count, the logged values, the non-finite guard's record, the device learning rate) goes
through the same code as on the GPU. These tests hold that bookkeeping to the normal path's results. The
capture itself is tested on CUDA only (``test_cuda_capture_trains_like_the_eager_step``).
"""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from conftest import (
    TINY_CPU_QUIET,
    TINY_CYCLEGAN_OVERRIDES,
    TINY_OVERRIDES,
    compose_train,
    logged,
    read_metrics,
)
from test_gan_family import RUN as FAMILY_RUN
from test_gan_family import TINY as FAMILY
from test_pix2pixhd import LOCAL, TINY_HD

from gan_translate.models.base import NonFiniteLossError
from gan_translate.models.pix2pix import Pix2Pix
from gan_translate.models.step_graph import (
    FindHostReads,
    FindHostTensors,
    HostReadError,
    ReplayDivergenceError,
    autocast_without_cache,
    first_error,
)
from gan_translate.resume import nonfinite_entries
from gan_translate.train import train

# Batch 1 where the model allows it: 3 warm-up batches, the capture, then replays, in every epoch after the first.
# The scheduler halves the learning rate at each epoch (the captured Adam reads it from a float32 tensor; powers of
# two keep it exact, so the runs must agree bit for bit), and the values reach the loggers every 3 batches only
# (the replays log the graph's outputs then).
COMMON = ["trainer.max_epochs=3", "optim.lr=0.000244140625", "scheduler=step", "scheduler.step_size=1",
          "scheduler.gamma=0.5", "model.nonfinite_check=deferred", "model.log_every_batch=false",
          "trainer.log_every_n_steps=3"]
MODELS = {
    "pix2pix": [*TINY_OVERRIDES, "data.batch_size=1"],
    "cyclegan": [*TINY_CYCLEGAN_OVERRIDES, "model.pool_size=4", "data.batch_size=1", "generator.n_blocks=2"],
    "pix2pixhd": [*TINY_HD, "data.batch_size=1"],
    # The local enhancer with G1 frozen for the first epoch: a new capture once it trains (GraphStats.captures).
    "pix2pixhd_local": [*TINY_HD, *LOCAL, "data.batch_size=1", "model.fix_global_epochs=1"],
    **{name: [*overrides, *FAMILY_RUN, "data.batch_size=2"] for name, overrides in FAMILY.items()},
}
MODELS["infogan"].append("model.generator_lr=0.0009765625")  # 2^-10 for the 1e-3 of its tiny run


class GraphStats(pl.Callback):
    """How many batches the step graph replayed (read before the model lets go of its graph)."""

    replays = captured = captures = 0

    def on_train_end(self, trainer, pl_module) -> None:
        graph = pl_module._step_graph
        self.replays, self.captured, self.captures = graph.replays, len(graph.captured), graph.captures


def fit(tmp_path, overrides, step_graph: bool, *extra: str, callbacks=()):
    cfg = compose_train([*overrides, *COMMON, f"model.step_graph={step_graph}", *extra], tmp_path)
    train(cfg, extra_callbacks=list(callbacks))
    return torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)


@pytest.mark.parametrize("model", list(MODELS))
def test_step_graph_trains_like_the_eager_step(tmp_path, model):
    """Same seed: the same optimizer-step count, and the same logged values, learning rates and final weights, bit
    for bit, as the normal step."""
    stats = GraphStats()
    extra = []
    if model == "pix2pixhd_local":  # a frozen G1 starts from a stage-1 checkpoint (the run refuses a random one)
        train(compose_train([*TINY_HD, "trainer.max_epochs=1"], tmp_path / "stage1"))
        extra = [f"model.global_ckpt={tmp_path / 'stage1' / 'checkpoints' / 'last.ckpt'}"]
    eager = fit(tmp_path / "eager", MODELS[model], False, *extra)
    graphed = fit(tmp_path / "graph", MODELS[model], True, *extra, callbacks=[stats])
    assert stats.captured == 1 and stats.replays > 0
    assert stats.captures == (2 if model == "pix2pixhd_local" else 1)
    assert graphed["global_step"] == eager["global_step"] > 0
    rows = {run: read_metrics(tmp_path / run) for run in ("eager", "graph")}
    keys = [k for k in rows["eager"][0] if k.startswith(("train/", "lr-"))]
    assert any(k.startswith("train/loss") for k in keys) and any(k.startswith("lr-") for k in keys)
    for key in keys:
        values = logged(rows["eager"], key)
        assert values and all(math.isfinite(v) for v in values), key
        assert logged(rows["graph"], key) == values, key
    for name, weight in eager["state_dict"].items():
        assert torch.equal(graphed["state_dict"][name], weight), name


class AssignOptimizerSettings(pl.Callback):
    """What a hand-written schedule may do: assign the learning rate as a number each epoch, and new Adam betas
    from the third epoch. Numbers are baked into a CUDA graph at capture; the step graph must capture again."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = 2.0 ** -(12 + trainer.current_epoch)
                if trainer.current_epoch == 2:
                    group["betas"] = (0.25, 0.5)


def test_optimizer_settings_assigned_between_epochs_are_captured_anew(tmp_path):
    """Same weights as the normal step with the same assignments; one capture per epoch (the lr object changed
    each time), each after its own warm-up."""
    stats = GraphStats()
    eager = fit(tmp_path / "eager", MODELS["pix2pix"], False, callbacks=[AssignOptimizerSettings()])
    graphed = fit(tmp_path / "graph", MODELS["pix2pix"], True, callbacks=[AssignOptimizerSettings(), stats])
    assert stats.captures == 3 and stats.replays > 0
    assert graphed["global_step"] == eager["global_step"] > 0
    assert tuple(graphed["optimizer_states"][0]["param_groups"][0]["betas"]) == (0.25, 0.5)
    for name, weight in eager["state_dict"].items():
        assert torch.equal(graphed["state_dict"][name], weight), name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.nonfinite_check=step"], "model.nonfinite_check=step reads every loss on the host"),
        (["model.compile=true", "model.compile_mode=reduce-overhead"], "model.compile_mode=reduce-overhead"),
        (["model.gradient_clip_val=1.0"], "model.gradient_clip_val"),
        (["optim._target_=torch.optim.SGD", "~optim.betas", "~optim.fused"], "has no capturable mode"),
        (["experiment=demo_pix2pixhd", "generator.n_downsample_global=2", "model.feature_encoder=true",
          "model.encoder_downsampling=2", "data.size=64"],
         "model.feature_encoder=true"),
    ],
    ids=["host-check", "compile-graphs", "clipping", "sgd", "pix2pixhd-encoder"],
)
def test_step_graph_refuses_what_a_capture_cannot_do(tmp_path, overrides, message):
    """Before the first step, naming the key to change."""
    base = TINY_CPU_QUIET if "experiment=demo_pix2pixhd" in overrides else TINY_OVERRIDES
    cfg = compose_train([*base, "model.step_graph=true", "model.nonfinite_check=deferred", *overrides], tmp_path)
    with pytest.raises(ValueError, match=f"model.step_graph=true: .*{message}"):
        train(cfg)


class LogsGradientNorm(pl.Callback):
    """Host code in a hook Lightning calls inside optimizer.step(): a replay would not run it."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        pl_module.log("grad_norm", torch.stack([p.grad.norm() for p in pl_module.parameters() if p.grad is not None]).sum())


class ChecksGradients(Pix2Pix):
    def on_after_backward(self) -> None:
        pass


def test_step_graph_refuses_host_hooks_of_the_step(tmp_path):
    """Callbacks' and the model's backward/optimizer-step hooks would run at the capture only: refused, naming them."""
    cfg = compose_train([*TINY_OVERRIDES, "model.step_graph=true", "model.nonfinite_check=deferred",
                         "model._target_=test_step_graph.ChecksGradients"], tmp_path)
    with pytest.raises(ValueError, match="on_after_backward of ChecksGradients would run at the capture only.*"
                                         "on_before_optimizer_step of LogsGradientNorm"):
        train(cfg, extra_callbacks=[LogsGradientNorm()])


class ReadsOnHost(Pix2Pix):
    """A step that decides on the host from a tensor's value (what a CUDA graph cannot replay)."""

    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)
        if batch["A"].mean() > 10:  # bool(tensor): the host reads the value
            raise AssertionError("never")


class NoiseOnHost(Pix2Pix):
    """A step that draws noise on the host: on the GPU a capture would replay the first draw forever."""

    def training_step(self, batch, batch_idx):
        noise = torch.randn(batch["A"].shape) * 0.01  # no device=: the host's random numbers
        super().training_step({**batch, "A": batch["A"] + noise.to(self.device)}, batch_idx)


class ScalarConstant(Pix2Pix):
    """A 0-dim constant made on the host is a kernel argument on the GPU: allowed."""

    def training_step(self, batch, batch_idx):
        super().training_step({**batch, "A": batch["A"] * torch.tensor(1.0)}, batch_idx)


@pytest.mark.parametrize("model, where", [
    ("ReadsOnHost", r"_local_scalar_dense.* at .*test_step_graph.py:\d+ \(if batch"),
    ("NoiseOnHost", r"torch.randn without device= at .*test_step_graph.py:\d+ \(noise = torch.randn"),
])
def test_a_step_reading_a_value_or_making_a_tensor_on_the_host_is_named(tmp_path, model, where):
    cfg = compose_train([*TINY_OVERRIDES, "data.batch_size=1", *COMMON, "model.step_graph=true",
                         f"model._target_=test_step_graph.{model}"], tmp_path)
    with pytest.raises(HostReadError, match=f"{model}.training_step .*{where}"):
        train(cfg)


class WeightFromBatchIndex(Pix2Pix):
    """A Python number that changes per batch: a graph would replay the captured batch's number."""

    def training_step(self, batch, batch_idx):
        super().training_step({**batch, "A": batch["A"] * (1.0 - 0.01 * batch_idx)}, batch_idx)


class ConstantFromBatchIndex(Pix2Pix):
    """torch.tensor of a per-batch number: a graph keeps the captured value (a 0-dim CPU tensor is a kernel
    argument on the GPU)."""

    def training_step(self, batch, batch_idx):
        super().training_step({**batch, "A": batch["A"] * torch.tensor(1.0 - 0.01 * batch_idx)}, batch_idx)


class KeepsLastFake(Pix2Pix):
    """A tensor assigned anew each batch and read by the next: a graph would read the captured one forever."""

    last = None

    def training_step(self, batch, batch_idx):
        if self.last is not None:
            batch = {**batch, "A": batch["A"] + 0.01 * self.last}
        super().training_step(batch, batch_idx)
        self.last = batch["A"].detach() * 0.5


@pytest.mark.parametrize("model, where", [
    ("WeightFromBatchIndex", r"op \d+ is \('aten.mul.Tensor', .*'0.9\d+'.* at .*test_step_graph.py:\d+ .*"
                             r"where the capture ran \('aten.mul.Tensor', .*'0.97'"),
    ("KeepsLastFake", r"tensor from before the step.* at .*test_step_graph.py:\d+ \(batch = "),
    ("ConstantFromBatchIndex", r"op \d+ is \('aten.lift_fresh.default', .*'0.959\d*'\) at .*test_step_graph.py:\d+ .*"
                               r"where the capture ran \('aten.lift_fresh.default', .*'0.970\d*'\)"),
])
def test_a_step_that_changes_between_batches_is_named(tmp_path, model, where):
    """The CPU stand-in compares each replay with the capture op by op, as a CUDA graph would replay it."""
    cfg = compose_train([*TINY_OVERRIDES, "data.batch_size=1", *COMMON, "model.step_graph=true",
                         f"model._target_=test_step_graph.{model}"], tmp_path / "graph")
    with pytest.raises(ReplayDivergenceError, match=f"{model}.training_step did something else at batch 4 .*{where}"):
        train(cfg)
    cfg = compose_train([*TINY_OVERRIDES, "data.batch_size=1", *COMMON, f"model._target_=test_step_graph.{model}"],
                        tmp_path / "eager")
    train(cfg)  # a valid step without the graph


X, REPEATS = torch.randn(4, 3), torch.tensor([1, 2, 1, 1])
HOST_READ_CASES = {  # what a CUDA capture cannot take (a synchronisation), and what it can
    "bool(tensor)": (lambda: bool(X.sum() > 0), "aten._local_scalar_dense"),
    "mask indexing": (lambda: X[X > 0], "aten.index.Tensor"),
    "mask assignment": (lambda: X.clone().__setitem__(X > 0, 0.0), "aten.index_put_"),
    "bincount": (lambda: torch.bincount(X.argmax(1)), "aten.bincount"),
    "repeats from a tensor": (lambda: X.repeat_interleave(REPEATS, dim=0), "aten.repeat_interleave"),
    "tolist": (lambda: X.tolist(), "Tensor.tolist"),
    "cpu": (lambda: X.cpu(), "Tensor.cpu"),
    "index with longs": (lambda: X[X.argmax(1)], None),
    "where": (lambda: torch.where(X > 0, X, 0.0), None),
    "repeats from a number": (lambda: X.repeat_interleave(2, dim=0), None),
    "repeats with their total": (lambda: X.repeat_interleave(REPEATS, dim=0, output_size=5), None),
}


@pytest.mark.parametrize("case", list(HOST_READ_CASES))
def test_host_reads_are_found(case):
    run, expected = HOST_READ_CASES[case]
    with FindHostReads() as reads, FindHostTensors(reads.found):
        run()
    ops = [op for op, _ in reads.found]
    assert (ops[0].startswith(expected) and len(ops) == 1) if expected else not ops, ops
    assert not expected or "test_step_graph.py" in reads.found[0][1]


def test_a_host_scalar_constant_is_allowed(tmp_path):
    cfg = compose_train([*TINY_OVERRIDES, "data.batch_size=1", *COMMON, "model.step_graph=true",
                         "model._target_=test_step_graph.ScalarConstant"], tmp_path)
    train(cfg)
    assert torch.load(tmp_path / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 48


class PoisonFromBatch(pl.Callback):
    """NaN in an input image from the ``first``-th training batch on (counted over the whole run)."""

    def __init__(self, first: int) -> None:
        self.first, self.seen = first, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.seen >= self.first:
            batch["A"][0, 0, 0, 0] = float("nan")
        self.seen += 1


def test_nonfinite_guard_inside_the_graph(tmp_path):
    """A NaN batch met in a replay: skip drops its updates like the normal step (same weights, NaN-free), and
    raise stops at the next check naming the first bad update's step."""
    tiny = [*TINY_OVERRIDES, "data.batch_size=1", "data.train_length=6"]  # 6 batches per epoch
    runs = {}
    for step_graph in (False, True):
        with pytest.warns(UserWarning, match="skipped a step"):
            runs[step_graph] = fit(tmp_path / str(step_graph), tiny, step_graph, "model.nonfinite=skip",
                                   callbacks=[PoisonFromBatch(8)])  # batch 8: a replay (warm-up 0-2, capture 3)
    assert not nonfinite_entries(runs[True]["state_dict"])
    for name, weight in runs[False]["state_dict"].items():
        assert torch.equal(runs[True]["state_dict"][name], weight), name
    with pytest.raises(NonFiniteLossError, match=r"the first of them the discriminator loss at global step 16 "):
        fit(tmp_path / "raise", tiny, True, callbacks=[PoisonFromBatch(8)])
    last = torch.load(tmp_path / "raise" / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 12 and not nonfinite_entries(last["state_dict"])  # epoch 0's, before the NaN


class KeepsOptimizers(pl.Callback):
    def on_train_start(self, trainer, pl_module) -> None:
        self.optimizers = list(trainer.optimizers)


def test_the_guard_flag_does_not_outlive_the_fit(tmp_path):
    """The deferred guard's found_inf (under the step graph: memory of the graph) is gone from the optimizers after
    fit, so a later step() elsewhere cannot read it."""
    kept = KeepsOptimizers()
    fit(tmp_path, MODELS["pix2pix"], True, "trainer.max_epochs=1", callbacks=[kept])
    assert kept.optimizers and not any(hasattr(o, "found_inf") for o in kept.optimizers)


def test_a_failed_capture_names_the_error_it_started_from():
    def step():
        raise ValueError("the step's own error")

    try:
        try:
            step()
        finally:  # what torch.cuda.graph's exit does: the capture fails too
            raise RuntimeError("operation failed due to a previous error during capture")
    except RuntimeError as error:
        message = first_error(error)
    assert message.startswith("ValueError: the step's own error at ") and "test_step_graph.py" in message
    assert message.endswith("then: operation failed due to a previous error during capture")
    assert first_error(RuntimeError("alone")) == "RuntimeError: alone"  # never raised: no line to name


def test_the_capture_leaves_autocast_settings_alone_unless_its_cache_is_on():
    """torch.compile guards on the autocast cache switch: flipping it only for the capture would recompile there."""
    with autocast_without_cache("cpu"):  # no autocast (32-true)
        assert torch.is_autocast_cache_enabled()
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):  # Lightning's bf16-mixed
        with autocast_without_cache("cpu"):
            assert not torch.is_autocast_cache_enabled() and torch.is_autocast_enabled("cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an autocast with its cache on
        with autocast_without_cache("cpu"):
            assert not torch.is_autocast_cache_enabled()
            assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.is_autocast_cache_enabled()


def test_resume_of_a_step_graph_run(tmp_path):
    """Stopped after an epoch and resumed (Lightning restores the optimizers, then they are made capturable again),
    it ends with the same weights as the run that went through; its checkpoint also resumes without the graph."""
    tiny = [*TINY_OVERRIDES, "data.batch_size=1", "data.train_length=6", "seed=3"]
    full = fit(tmp_path / "full", tiny, True)
    split = tmp_path / "split"
    fit(split, tiny, True, "trainer.max_steps=12")
    resumed = fit(split, tiny, True, f"resume={split}")
    assert resumed["global_step"] == full["global_step"] == 36
    for name, weight in full["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], weight), name
    plain = fit(tmp_path / "plain", tiny, False, "trainer.max_epochs=4", f"ckpt_path={split / 'checkpoints/last.ckpt'}")
    assert plain["global_step"] == 48 and not nonfinite_entries(plain["state_dict"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_cuda_capture_trains_like_the_eager_step(tmp_path, precision):
    """On a GPU the step is really captured and replayed: the same step count, close losses and weights as the eager
    step (one epoch of 8 batches: 3 eager, the capture, 4 replays; deterministic kernels, and no dropout, whose draws
    differ between a graph and eager kernels)."""
    overrides = [*TINY_CPU_QUIET, "generator.num_downs=5", "generator.dropout=0", "data.batch_size=1",
                 "trainer.accelerator=gpu", f"trainer.precision={precision}"]
    extra = ["trainer.max_epochs=1", "trainer.deterministic=true", "trainer.log_every_n_steps=1",
             "model.log_every_batch=true"]
    stats = GraphStats()
    eager = fit(tmp_path / "eager", overrides, False, *extra)
    graphed = fit(tmp_path / "graph", overrides, True, *extra, callbacks=[stats])
    assert stats.captured == 1 and stats.replays == 4
    assert graphed["global_step"] == eager["global_step"] == 16
    tolerance = {"rel": 2e-2, "abs": 1e-3} if precision == "bf16-mixed" else {"rel": 1e-3, "abs": 1e-5}
    rows = {run: read_metrics(tmp_path / run) for run in ("eager", "graph")}
    for key in ("train/loss_D", "train/loss_G_GAN", "train/loss_G_L1"):
        assert logged(rows["graph"], key) == pytest.approx(logged(rows["eager"], key), **tolerance), key
    for name, weight in eager["state_dict"].items():
        torch.testing.assert_close(graphed["state_dict"][name].float(), weight.float(), rtol=tolerance["rel"],
                                   atol=tolerance["abs"], msg=name)


@pytest.mark.slow
def test_step_graph_with_compiled_networks(tmp_path):
    """model.compile=true (default mode: inductor kernels, no graphs of its own) inside the step graph trains like
    the compiled networks without it, bit for bit: the stand-in's host-read check lets torch.compile run (with any
    other dispatch mode active, compiled code steps aside and the networks would run eagerly)."""
    overrides = [*MODELS["pix2pix"], "model.compile=true"]
    stats = GraphStats()
    eager = fit(tmp_path / "eager", overrides, False)
    graphed = fit(tmp_path / "graph", overrides, True, callbacks=[stats])
    assert stats.captured == 1 and stats.replays > 0
    assert graphed["global_step"] == eager["global_step"] > 0
    for name, weight in eager["state_dict"].items():
        assert torch.equal(graphed["state_dict"][name], weight), name


@pytest.mark.slow
def test_a_host_read_in_compiled_code_is_still_found():
    """A host read in a compiled function is a graph break that runs eagerly, where the check sees it."""
    def step(x):
        y = x.sin()
        return y * 2 if y.sum() > 0 else y  # bool(tensor)

    compiled = torch.compile(step)
    compiled(torch.ones(3))
    with FindHostReads() as reads:
        compiled(torch.ones(3))
    assert [op for op, _ in reads.found] == ["aten._local_scalar_dense.default"]
    assert "test_step_graph.py" in reads.found[0][1]
