"""Benchmark: ``python -m gan_translate.benchmark [device=cuda] [size=128] [models=[pix2pix]] [profile=true]``.

Times steady-state training iterations (one full GAN step: D and G updates) through a real Lightning
``Trainer`` with the real ``training_step``, so manual_backward/LightningOptimizer and the precision plugin
(autocast, GradScaler) are in the measured path; a per-batch callback takes the time between
``on_train_batch_start`` and ``on_train_batch_end`` (data loading excluded; measured separately as the
data-wait fraction with the real DataLoader) and, per mode, the time from one batch end to the next (the
step plus fetching and device transfer: what ``data.device_cache`` changes). Also times generator inference
(the compile mode through ``Translator(compile=True)``, i.e. with inductor's weight freezing), counts FLOPs
with ``FlopCounterMode`` and relates them to a measured matmul peak.

Baselines:
- ``loop`` (always): the reference's training iteration measured here, in the same run: a plain PyTorch loop
  (no Lightning) doing what the reference's ``optimize_parameters`` does (forward, D update with
  D's grads on, G update with them off, or the CycleGAN order), with its optimizer settings (Adam,
  per-tensor, fp32, eager), on networks of the reference's architecture (same parameter counts and
  FLOPs). It runs before and after the modes; the table uses the mean and reports the drift;
- ``reference=FILE`` (optional): published figures measured elsewhere, and targets to reach, from a YAML
  file (``figures: {model: {s_per_iteration, generator_forward_s, peak_rss_gb}}``, ``targets: {...}``), such
  as ``benchmarks/reference_cpu.yaml`` in the source tree.
Writes JSON and prints a table with the ratios and, given targets, pass/miss against each baseline.
"""

from __future__ import annotations

import collections
import copy
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
import types
import warnings
from collections.abc import Mapping
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.flop_counter import FlopCounterMode

from gan_translate.checkpoint import build_model
from gan_translate.config import CONF_DIR
from gan_translate.errors import usage_errors_as_messages
from gan_translate.known_warnings import silence_known_warnings
from gan_translate.models.image_pool import ImagePool
from gan_translate.networks.pix2pixhd import encode_label_ids
from gan_translate.translator import FrozenCompiled
from gan_translate.weights import fetch_command, find_weights

TARGET_NAMES = ("best_throughput", "fp32_throughput", "inference_speedup", "memory_ratio")
FIGURE_KEYS = ("s_per_iteration", "generator_forward_s", "peak_rss_gb")


def load_reference(path: str | None, models: list[str]) -> dict:
    """``{"figures": {model: {...}}, "targets": {...}}`` from ``reference=FILE``; empty without one."""
    if not path:
        return {"figures": {}, "targets": {}}
    if not Path(path).is_file():
        raise FileNotFoundError(f"benchmark reference={path}: no such file")
    loaded = OmegaConf.to_container(OmegaConf.load(path))
    figures, targets = loaded.get("figures", {}), loaded.get("targets", {})
    for model_name in models:
        missing = [key for key in FIGURE_KEYS if key not in figures.get(model_name, {})]
        if missing:
            raise ValueError(f"benchmark reference={path}: figures.{model_name} lacks {missing}")
    unknown = sorted(set(targets) - set(TARGET_NAMES))
    if unknown:
        raise ValueError(f"benchmark reference={path}: unknown targets {unknown}; known: {list(TARGET_NAMES)}")
    return {"figures": figures, "targets": targets}
MODES = {  # precision, channels_last, compile, data.device_cache
    "fp32": ("32-true", False, False, False),
    "bf16": ("bf16-mixed", False, False, False),
    "fp16": ("16-mixed", False, False, False),
    "channels_last": ("32-true", True, False, False),
    "compile": ("32-true", False, True, False),
    "device_cache": ("32-true", False, False, True),
    "cuda_graphs": ("32-true", False, True, False),  # compile_mode=reduce-overhead (MODE_OVERRIDES)
    "no_sync": ("32-true", False, False, False),  # nonfinite_check=deferred: no host read of the losses per step
    "step_graph": ("32-true", False, False, False),  # model.step_graph: the whole training step as one CUDA graph
    # The floor under any step: Lightning's loop, the device cache's batches and logging, with a training step
    # that only logs (no network runs). What a step graph cannot go below on this host.
    "loop_only": ("32-true", False, False, True),
    "gpu_fast": ("bf16-mixed", True, False, True),  # what trainer=gpu_fast turns on
}
# Switches of a mode beyond the four above.
MODE_OVERRIDES = {
    "cuda_graphs": ["model.compile_mode=reduce-overhead"],
    "no_sync": ["model.nonfinite_check=deferred"],
    "step_graph": ["model.step_graph=true", "model.nonfinite_check=deferred"],
    "gpu_fast": ["model.step_graph=true", "model.nonfinite_check=deferred"],
}
# Untimed steps a mode needs at least: model.step_graph runs 3 eager steps, captures the 4th, replays from the 5th.
MODE_WARMUP = {"step_graph": 5, "gpu_fast": 5}
MODEL_OVERRIDES = {
    "pix2pix": ["~experiment", "model=pix2pix", "generator=unet_256"],  # no demo widths
    "cyclegan": ["experiment=shapes_cyclegan", "generator=resnet_9blocks"],
    # The Cityscapes experiment (bench.pix2pixhd.experiment) on the embedded label maps: its file-layout keys
    # go, its networks, losses, label_nc 35 and instance edges stay. The local stage trains G1 and G2 jointly.
    "pix2pixhd": ["~data.label_suffix", "~data.image_suffix", "~data.instance_suffix", "data.preprocess=none",
                  "model.global_ckpt=null", "model.fix_global_epochs=0"],
}
# Data of the training modes: the embedded synthetic sets, or real data in the papers' layouts (data_root).
SYNTHETIC_DATA = {"pix2pix": "synthetic_facades", "cyclegan": "synthetic_shapes",
                  "pix2pixhd": "synthetic_label_facades"}
REAL_DATA = {"pix2pix": ["data=aligned", "data.direction=BtoA"], "cyclegan": ["data=unaligned"]}
# Modes a model's data cannot take: the pix2pixHD label/instance data has no device cache.
UNSUPPORTED_MODES = {"pix2pixhd": {mode: "pix2pixHD label/instance data has no data.device_cache"
                                    for mode in ("device_cache", "loop_only")}}


def image_size(bench: DictConfig, model: str) -> tuple[int, int]:
    """(height, width) of the benchmark's images: ``size`` squares, pix2pixHD's own ``pix2pixhd.height/width``."""
    if model == "pix2pixhd":
        return int(bench.pix2pixhd.height), int(bench.pix2pixhd.width)
    return int(bench.size), int(bench.size)


def perceptual_setting(model: str) -> dict | None:
    """pix2pixHD's VGG19 term: on (lambda_vgg of the experiment) with the cached weights, else switched off."""
    if model != "pix2pixhd":
        return None
    if find_weights("vgg") is not None:
        return {"vgg_weights": str(find_weights("vgg")), "overrides": []}
    return {"vgg_weights": None, "overrides": ["loss.lambda_vgg=0"],
            "note": f"no VGG19 weights ({fetch_command('vgg')}): perceptual loss off (lambda_vgg=0)"}


def data_root_for(bench: DictConfig, model: str) -> str | None:
    """``data_root`` of ``model``: one path for every model, or a mapping model -> path."""
    root = bench.get("data_root")
    return root.get(model) if isinstance(root, Mapping) else root


def data_overrides(bench: DictConfig, model: str, steps: int, workers: int) -> list[str]:
    """The data of a run of ``steps`` batches: real files under data_root (the papers' 286/256 resize and crop,
    scaled to ``size``) with ``workers`` loader workers, else ``steps`` synthetic batches rendered in-process."""
    root = data_root_for(bench, model)
    height, width = image_size(bench, model)
    if root is None:
        return [f"data={SYNTHETIC_DATA[model]}", f"data.size={height}", "data.num_workers=0",
                f"data.train_length={steps * bench.batch_size}", *([f"data.width={width}"] if width != height else [])]
    if model not in REAL_DATA:
        raise ValueError(f"benchmark data_root: {model} runs on embedded data only; leave data_root.{model} unset")
    return [*REAL_DATA[model], f"data.root={root}", f"data.num_workers={workers}", f"data.crop_size={bench.size}",
            f"data.load_size={round(bench.size * 286 / 256)}"]
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def model_config(bench: DictConfig, model: str, setting: tuple = MODES["fp32"],
                 data: list[str] | None = None, extra: list[str] = ()) -> DictConfig:
    """The training config the benchmark runs: train.yaml with paper widths, a MODES ``setting`` and ``data``
    (data_overrides; default: a few synthetic batches)."""
    precision, channels_last, compile, device_cache = setting
    overrides = [f"experiment={bench.pix2pixhd.experiment}"] if model == "pix2pixhd" else []
    overrides += [*MODEL_OVERRIDES[model], *(perceptual_setting(model) or {"overrides": []})["overrides"]]
    if model == "pix2pix" and bench.size < 256:  # the U-Net halves down to 1x1
        overrides.append(f"generator.num_downs={int(math.log2(bench.size))}")
    overrides += [
            f"generator.ngf={bench.ngf}", f"discriminator.ndf={bench.ndf}",
            f"model.channels_last={channels_last}", f"model.compile={compile}", f"trainer.precision={precision}",
            *(data or data_overrides(bench, model, bench.warmup + bench.iterations + 1, 0)),
            f"data.batch_size={bench.batch_size}",
            *([] if "device_cache" in UNSUPPORTED_MODES.get(model, {}) else [f"data.device_cache={device_cache}"]),
            "paths.output_dir=benchmark_unused", *extra,
    ]
    if GlobalHydra.instance().is_initialized():  # inside @hydra.main: same config dir
        return compose("train", overrides=overrides)
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: time during which at least one kernel ran."""
    busy, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


class StepTimer(pl.Callback):
    """Wall time of each training batch (its full GAN step); optionally counts or profiles one step, and on
    CUDA measures the fraction of ``busy_steps`` consecutive steps' wall time during which the GPU ran a kernel
    (or a copy): the share the launch and framework overhead leaves to the GPU."""

    def __init__(self, device: torch.device, count_flops_at: int | None, profile_at: int | None,
                 busy_at: int | None = None, busy_steps: int = 0, window: tuple[int, int] | None = None,
                 sync_each_step: bool = True) -> None:
        self.device, self.count_flops_at, self.profile_at = device, count_flops_at, profile_at
        # window (first, last) batch: wall time from the first's start to the last's end, synchronised only there.
        self.window, self.sync_each_step, self.window_s = window, sync_each_step, None
        self.busy_at, self.busy_steps = busy_at, busy_steps
        self.busy_fraction: float | None = None
        self._busy = None
        self.times: list[float] = []
        # Batch end to batch end: the step plus fetching, device transfer and the loop's own work in between.
        self.times_with_data: list[float] = []
        self._last_end: float | None = None
        self.flops: int | None = None
        self.profile_table: str | None = None
        self.peak_rss_gb: float | None = None  # before the instrumented steps, whose bookkeeping costs memory
        self._context = None

    def _sync(self, force: bool = False) -> None:
        if self.device.type == "cuda" and (force or self.sync_each_step):
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.window and batch_idx == self.window[0]:
            self._sync(force=True)
            self._window_start = time.perf_counter()
        if batch_idx == self.busy_at:
            self._sync(force=True)
            self._busy = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA])
            self._busy.__enter__()
            self._busy_start = time.perf_counter()
        if batch_idx in (self.count_flops_at, self.profile_at) and self.peak_rss_gb is None:
            self.peak_rss_gb = peak_rss_gb()
        if batch_idx == self.count_flops_at:
            self._context = FlopCounterMode(display=False)
        elif batch_idx == self.profile_at:
            self._context = torch.profiler.profile(record_shapes=False)
        if self._context is not None:
            self._context.__enter__()
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.window and batch_idx == self.window[1]:
            self._sync(force=True)
            self.window_s = time.perf_counter() - self._window_start
        self._sync()
        end = time.perf_counter()
        elapsed = end - self._start
        if self._busy is not None and batch_idx == self.busy_at + self.busy_steps - 1:
            self._sync(force=True)
            end = time.perf_counter()
            self._busy.__exit__(None, None, None)
            kernels = [(e.time_range.start, e.time_range.end) for e in self._busy.events()
                       if e.device_type == torch.autograd.DeviceType.CUDA]
            self.busy_fraction = busy_seconds(kernels) / 1e6 / (end - self._busy_start)  # profiler times in us
            self._busy = None
            return
        if self._busy is not None:
            return
        if self._context is None:
            self.times.append(elapsed)
            self.times_with_data.append(end - self._last_end if self._last_end is not None else math.nan)
            self._last_end = end
            return
        self._context.__exit__(None, None, None)
        if batch_idx == self.count_flops_at:
            self.flops = self._context.get_total_flops()
        else:
            sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
            self.profile_table = self._context.key_averages().table(sort_by=sort, row_limit=15)
        self._context = None


class HostSyncCounter(pl.Callback):
    """CUDA: the host synchronisations of ``steps`` steady training batches, counted by torch's sync debug mode
    (each one is a warning from the synchronising call), from the start of batch ``first`` to the start of batch
    ``first + steps``: the step, the module's and callbacks' batch hooks, logging and the next batch's fetch.
    Keeps the five most frequent Python locations, which say who synchronises."""

    def __init__(self, first: int, steps: int) -> None:
        self.first, self.steps = first, steps
        self.count: int | None = None
        self.locations: dict[str, int] = {}
        self._catcher = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.first + self.steps and self._catcher is not None:
            torch.cuda.set_sync_debug_mode(0)
            self._catcher.__exit__(None, None, None)
            self._catcher = None
            syncs = [r for r in self._records if "synchroniz" in str(r.message)]
            self.count = len(syncs)
            where = collections.Counter(f"{Path(r.filename).name}:{r.lineno}" for r in syncs)
            self.locations = dict(where.most_common(5))
        elif batch_idx == self.first:
            self._catcher = warnings.catch_warnings(record=True)
            self._records = self._catcher.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def loop_only_step(model, batch: dict, batch_idx: int) -> None:
    """The loop_only mode's training step: logs one value from the batch, as a real step logs its losses."""
    images = next(value for value in batch.values() if isinstance(value, torch.Tensor))
    model.log_train({"train/loss": images.new_zeros(())}, images.size(0), prog_bar=True)


def run_mode(bench: DictConfig, device: torch.device, model_name: str, mode: str, setting: tuple,
             count_flops: bool, profile: bool) -> dict:
    """Train ``warmup + iterations`` steps in a real Trainer and time generator inference."""
    precision, channels_last, compile, device_cache = setting
    warmup = max(int(bench.warmup), MODE_WARMUP.get(mode, 0))
    torch.manual_seed(0)
    busy_steps = int(bench.busy_steps) if device.type == "cuda" else 0
    sync_steps = int(bench.sync_steps) if device.type == "cuda" else 0
    # Untimed steps: warm-up first; the FLOP count / profile / busy window / sync count come after the timed steps,
    # in that order (they slow a step down and their bookkeeping would raise the peak memory). The sync count
    # ends at the start of the batch after its window, hence its extra step.
    timed_end = warmup + bench.iterations
    count_at = timed_end if count_flops else None
    profile_at = timed_end + int(count_flops) if profile else None
    busy_first = timed_end + int(count_flops) + int(profile)
    busy_at = busy_first if busy_steps else None
    sync_at = busy_first + busy_steps
    steps = sync_at + (sync_steps + 1 if sync_steps else 0)
    cfg = model_config(bench, model_name, setting, data_overrides(bench, model_name, steps, bench.data_workers),
                       MODE_OVERRIDES.get(mode, []))
    model = build_model(cfg)
    if mode == "loop_only":
        model.training_step = types.MethodType(loop_only_step, model)
    # On CUDA a synchronisation per step would stall the very pipelining the fast path is for: by default the
    # timed steps are then measured as one window (synchronised at its ends only), per step only on the CPU.
    sync_each_step = device.type != "cuda" if bench.step_sync == "auto" else bool(bench.step_sync)
    timer = StepTimer(device, count_at, profile_at, busy_at, busy_steps,
                      (warmup, warmup + bench.iterations - 1), sync_each_step)
    callbacks: list[pl.Callback] = [timer]
    if sync_steps:  # after every other instrumented step: their own synchronisations stay out of the count
        syncs = HostSyncCounter(sync_at, sync_steps)
        callbacks.append(syncs)
    if compile and device.type == "cuda":
        from torch._dynamo.utils import counters

        counters.clear()  # this mode's compilations only (also when the modes share a process)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
        max_epochs=1, limit_train_batches=steps, limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
    )
    trainer.fit(model, datamodule=instantiate(cfg.data))
    training_rss_gb = timer.peak_rss_gb or peak_rss_gb()  # training only: compiled inference adds its own
    timed = timer.times[warmup:]
    step_s = statistics.median(timed)  # robust to the odd step slowed down by another process
    timed_with_data = [t for t in timer.times_with_data[warmup:] if not math.isnan(t)]  # none at warmup=0
    window_s = timer.window_s / bench.iterations
    if not sync_each_step:  # the per-step times are enqueue times only: the window is the measure
        step_s, timed_with_data = window_s, [window_s]

    # Lightning's teardown moved the model back to the CPU after fit: inference is timed on the training device.
    # (Before this line the CUDA rows timed a CPU forward: the H200 and H100 "G fwd" figures of fp32 etc.)
    model.to(device)
    generator = model.generator_for()
    if compile:  # what predict/evaluate run with compile=true: an eager copy compiled with freezing
        generator = copy.deepcopy(generator)
        generator._compiled_call_impl = None  # the training-time compile (no freezing) of the same module
        generator = FrozenCompiled(generator.requires_grad_(False))
    images = inference_images(model, (bench.batch_size, model.source_channels(), *image_size(bench, model_name)))
    forward_s = time_inference(bench, generator, model.prepare(images), precision)
    result = {
        "model": model_name, "mode": mode, "precision": precision, "channels_last": channels_last,
        "compile": compile, "device_cache": device_cache, "s_per_iteration": step_s,
        "images_per_s": bench.batch_size / step_s, "step_times_s": timed,
        "s_per_iteration_with_data": statistics.median(timed_with_data) if timed_with_data else None,
        "step_with_data_times_s": timed_with_data, "s_per_iteration_window": window_s,
        "synchronised_each_step": sync_each_step, "generator_forward_s": forward_s,
        "peak_rss_gb": training_rss_gb, "flops_per_iteration": timer.flops,
        "profile": timer.profile_table, "gpu_busy_fraction": timer.busy_fraction,
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        if sync_steps:
            result["host_syncs_per_iteration"] = None if syncs.count is None else syncs.count / sync_steps
            result["host_sync_locations"] = syncs.locations
        if compile:  # compiled graphs torch ran without CUDA graphs (CUDA-graph modes; TORCH_LOGS=cudagraphs: why)
            result["cudagraph_skips"] = counters["inductor"]["cudagraph_skips"]
    return result


def inference_images(model, shape: tuple[int, ...]) -> torch.Tensor:
    """Random generator inputs in [-1, 1]: images, or label maps of valid class ids (pix2pixHD's label_nc)."""
    label_nc = getattr(model, "label_nc", 0)
    if label_nc:
        return encode_label_ids(torch.randint(0, label_nc, shape, device=model.device))
    return torch.rand(shape, device=model.device) * 2 - 1


def time_inference(bench: DictConfig, generator: torch.nn.Module, images: torch.Tensor, precision: str) -> float:
    """Median seconds per generator forward (eval mode, no grad), after two warm-up forwards."""
    generator.eval()
    device = images.device
    autocast = torch.autocast(device.type, dtype=AUTOCAST.get(precision, torch.float32),
                              enabled=precision in AUTOCAST)
    times = []
    with torch.no_grad(), autocast:
        for i in range(bench.inference_iterations + 2):
            start = time.perf_counter()
            generator(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def reference_pix2pix_step(model, opt_g, opt_d, real_a: torch.Tensor, real_b: torch.Tensor, pools=None) -> None:
    """The reference's pix2pix iteration: G forward; D update (grads on); G update (D's grads off)."""
    generator, discriminator, loss = model.generator, model.discriminator, model.loss
    fake_b = generator(real_a)
    discriminator.requires_grad_(True)
    opt_d.zero_grad()
    loss_d = loss.gan.discriminator_loss(discriminator(torch.cat([real_a, real_b], 1)),
                                         discriminator(torch.cat([real_a, fake_b.detach()], 1)))
    loss_d.backward()
    opt_d.step()
    discriminator.requires_grad_(False)
    opt_g.zero_grad()
    loss_g = (loss.gan.generator_loss(discriminator(torch.cat([real_a, fake_b], 1)))
              + loss.lambda_l1 * F.l1_loss(fake_b, real_b))
    loss_g.backward()
    opt_g.step()


def reference_cyclegan_step(model, opt_g, opt_d, real_a: torch.Tensor, real_b: torch.Tensor,
                            pools: tuple[ImagePool, ImagePool]) -> None:
    """The reference's CycleGAN iteration: both cycles; G update (Ds off); D updates on pooled fakes
    (``pools``: fake B, fake A)."""
    g_a, g_b, d_a, d_b, loss = (model.generator_A, model.generator_B, model.discriminator_A,
                                model.discriminator_B, model.loss)
    fake_b, fake_a = g_a(real_a), g_b(real_b)
    rec_a, rec_b = g_b(fake_b), g_a(fake_a)
    d_a.requires_grad_(False)
    d_b.requires_grad_(False)
    opt_g.zero_grad()
    loss_g = (loss.gan.generator_loss(d_a(fake_b)) + loss.gan.generator_loss(d_b(fake_a))
              + loss.lambda_cycle * (F.l1_loss(rec_a, real_a) + F.l1_loss(rec_b, real_b)))
    if loss.lambda_identity > 0:
        identity = loss.lambda_identity * loss.lambda_cycle
        loss_g = loss_g + identity * (F.l1_loss(g_a(real_b), real_b) + F.l1_loss(g_b(real_a), real_a))
    loss_g.backward()
    opt_g.step()
    d_a.requires_grad_(True)
    d_b.requires_grad_(True)
    opt_d.zero_grad()
    loss.gan.discriminator_loss(d_a(real_b), d_a(pools[0].query(fake_b))).backward()
    loss.gan.discriminator_loss(d_b(real_a), d_b(pools[1].query(fake_a))).backward()
    opt_d.step()


REFERENCE_STEPS = {"pix2pix": reference_pix2pix_step, "cyclegan": reference_cyclegan_step}


def run_reference_loop(bench: DictConfig, device: torch.device, model_name: str) -> dict:
    """The reference's iteration as a plain PyTorch loop on the same networks (see the module docstring)."""
    torch.manual_seed(0)
    cfg = model_config(bench, model_name)
    model = build_model(cfg).to(device).train()
    groups = model.optimizer_groups()
    # The reference's optimizer: Adam(lr, betas) with torch's defaults, i.e. the per-tensor loop on CPU.
    adam = {"lr": cfg.optim.lr, "betas": tuple(cfg.optim.betas), "foreach": False, "fused": False}
    opt_g, opt_d = (torch.optim.Adam(groups[name], **adam) for name in ("generator", "discriminator"))
    pools = (ImagePool(50), ImagePool(50))
    shape = (bench.batch_size, model.source_channels(), bench.size, bench.size)
    step = REFERENCE_STEPS[model_name]
    times = []
    for i in range(bench.warmup + bench.iterations):
        real_a, real_b = (torch.rand(shape, device=device) * 2 - 1 for _ in range(2))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(model, opt_g, opt_d, real_a, real_b, pools)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= bench.warmup:
            times.append(time.perf_counter() - start)
    training_rss_gb = peak_rss_gb()
    images = torch.rand(shape, device=device) * 2 - 1
    forward_s = time_inference(bench, model.generator_for(), images, "32-true")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.generator_for()(images)
    return {"s_per_iteration": statistics.median(times), "step_times_s": times, "generator_forward_s": forward_s,
            "peak_rss_gb": training_rss_gb, "generator_forward_flops": counter.get_total_flops()}


def matmul_peak(device: torch.device, size: int | None = None, seconds: float = 1.0) -> dict:
    """Measured matmul throughput (GFLOP/s) in fp32 and bf16 (and fp16 on cuda): the machine's practical peak.

    Repeats one square matmul for about ``seconds`` (CPUs without native bf16 emulate it slowly)."""
    peaks = {}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    size = size or (8192 if device.type == "cuda" else 1024)
    if device.type == "cuda":
        dtypes["fp16"] = torch.float16

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for name, dtype in dtypes.items():
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b
        sync()
        repeats, start = 0, time.perf_counter()
        while repeats < 3 or time.perf_counter() - start < seconds:
            a @ b
            sync()
            repeats += 1
        peaks[name] = 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9
    return peaks


def data_wait(bench: DictConfig, model_name: str) -> dict:
    """Seconds per batch of the real DataLoader (embedded synthetic data, or data_root)."""
    data = data_overrides(bench, model_name, bench.data_batches + 1, bench.data_workers)
    cfg = model_config(bench, model_name, data=data)
    with open_dict(cfg):
        cfg.data.num_workers = bench.data_workers
        cfg.data.persistent_workers = False
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    loader = iter(datamodule.train_dataloader())
    next(loader)  # worker start-up is not steady state
    start = time.perf_counter()
    batches = 0
    for _ in range(bench.data_batches):
        try:
            next(loader)
        except StopIteration:
            break
        batches += 1
    return {"source": data_root_for(bench, model_name) or "embedded synthetic", "s_per_batch": (time.perf_counter() - start) / max(batches, 1)}


def in_child(function, *args):
    """Run ``function(*args)`` in a forked process (its own peak RSS); in-process where fork is unavailable."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return function(*args)
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        return pool.apply(function, args)


def environment(device: torch.device) -> dict:
    flags = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    model_name = platform.processor()
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        model_name = names[0] if names else model_name
    env = {
        "torch": torch.__version__, "pytorch_lightning": pl.__version__, "python": platform.python_version(),
        "device": str(device), "cpu": model_name, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
        "cpu_flags": sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma", "avx_vnni"))),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def choose_best(results: list[dict]) -> tuple:
    """The fastest measured precision, plus channels_last/compile/device_cache where each beat plain fp32 (the
    device cache by the time per iteration with the data, which is what it changes)."""
    by_mode = {r["mode"]: r for r in results}
    precisions = [m for m in ("fp32", "bf16", "fp16") if m in by_mode]
    best_precision = min(precisions, key=lambda m: by_mode[m]["s_per_iteration"])
    helps = {}
    for mode, key in (("channels_last", "s_per_iteration"), ("compile", "s_per_iteration"),
                      ("device_cache", "s_per_iteration_with_data")):
        times = (by_mode[mode][key], by_mode["fp32"][key]) if mode in by_mode else (None, None)
        helps[mode] = None not in times and times[0] < times[1]
    return MODES[best_precision][0], helps["channels_last"], helps["compile"], helps["device_cache"]


def summarise(model_name: str, results: list[dict], peaks: dict, flops: int | None, loops: list[dict],
              figures: dict | None = None, targets_wanted: dict | None = None) -> dict:
    """Ratios of every mode to the loop measured here (``loop_*``) and, given ``figures``, to those; targets.
    ``loops`` is empty for a model without a reference loop (pix2pixHD): then no ``loop_*`` ratios."""
    reference = figures
    loop = None
    if loops:
        loop = {key: sum(run[key] for run in loops) / len(loops)
                for key in ("s_per_iteration", "generator_forward_s", "peak_rss_gb")}
        loop["runs"] = loops
        # How much the machine drifted between the loop run before the modes and the one after them.
        loop["drift"] = loops[-1]["s_per_iteration"] / loops[0]["s_per_iteration"]
    by_mode = {r["mode"]: r for r in results}
    peak_by_precision = {"32-true": peaks["fp32"], "bf16-mixed": peaks["bf16"], "16-mixed": peaks.get("fp16", peaks["bf16"])}
    baselines = ((("", reference),) if reference is not None else ()) + ((("loop_", loop),) if loop else ())
    for r in results:
        for prefix, base in baselines:
            r[f"{prefix}throughput_ratio"] = base["s_per_iteration"] / r["s_per_iteration"]
            r[f"{prefix}inference_speedup"] = base["generator_forward_s"] / r["generator_forward_s"]
            r[f"{prefix}memory_ratio"] = r["peak_rss_gb"] / base["peak_rss_gb"]
        if flops:
            r["achieved_gflops"] = flops / r["s_per_iteration"] / 1e9
            r["fraction_of_matmul_peak"] = r["achieved_gflops"] / peak_by_precision[r["precision"]]
    if flops and loop:
        loop["achieved_gflops"] = flops / loop["s_per_iteration"] / 1e9
        loop["fraction_of_matmul_peak"] = loop["achieved_gflops"] / peaks["fp32"]
    # The fp32 ceiling: seconds if every FLOP ran at the measured fp32 matmul peak. No fp32 mode can beat
    # it, so a target above baseline / ceiling needs lower precision (bf16/fp16 hardware) or less work.
    ceiling_s = {"throughput": flops / (peaks["fp32"] * 1e9) if flops else None,
                 "inference": loops[0]["generator_forward_flops"] / (peaks["fp32"] * 1e9) if loops else None}
    fastest = min(results, key=lambda r: r["s_per_iteration"])
    best = by_mode.get("best", fastest)
    best = fastest if fastest["s_per_iteration"] < best["s_per_iteration"] else best
    fastest_inference = min(results, key=lambda r: r["generator_forward_s"])
    chosen = {"best_throughput": (best, "throughput_ratio"), "fp32_throughput": (by_mode["fp32"], "throughput_ratio"),
              "inference_speedup": (fastest_inference, "inference_speedup"),
              "memory_ratio": (by_mode["fp32"], "memory_ratio")}
    targets = {}
    for name, wanted in (targets_wanted or {}).items():
        r, key = chosen[name]
        target = {"mode": r["mode"], "target": wanted}
        for prefix, _ in baselines:
            target[f"{prefix}ratio"] = r[f"{prefix}{key}"]
        kind = "inference" if name == "inference_speedup" else "throughput" if name != "memory_ratio" else None
        field = "generator_forward_s" if kind == "inference" else "s_per_iteration"
        for prefix, base in baselines:
            if kind and ceiling_s[kind]:
                target[f"{prefix}fp32_ceiling"] = base[field] / ceiling_s[kind]
            ratio = target[f"{prefix}ratio"]
            target[f"{prefix}passed"] = bool(ratio <= wanted if name == "memory_ratio" else ratio >= wanted)
        targets[name] = target
    return {"reference": reference, "reference_loop": loop, "flops_per_iteration": flops, "modes": results,
            "targets": targets}


def _number(value) -> float:
    return float("nan") if value is None else value


def format_table(report: dict) -> str:
    """xref: ratio to the given reference figures (reference=FILE); xloop: to the reference loop measured in this
    run. The fp32 ceiling of a target is the ratio reached if every FLOP ran at the measured fp32 matmul peak."""
    gpu = report["environment"]["device"].startswith("cuda")
    header = (f"{'model':9} {'mode':15} {'s/it':>8} {'+data':>8} {'img/s':>7} {'xref':>6} {'xloop':>6} {'G fwd ms':>9} {'xref':>6} "
              f"{'xloop':>6} {'RSS GB':>7} {'xref':>5} {'GFLOP/s':>8} {'%peak':>6}") + (
                  f" {'GPU GB':>7} {'%busy':>6} {'sync/it':>7} {'cg skip':>7}" if gpu else "")
    lines = [header, "-" * len(header)]
    nan = float("nan")

    def ratio(a: float, b: float | None) -> float:
        return nan if b is None else a / b

    for model_name, summary in report["models"].items():
        ref, loop = summary["reference"], summary["reference_loop"]
        get = (lambda key: None) if ref is None else ref.get  # noqa: E731
        if ref is not None:
            lines.append(f"{model_name:9} {'reference/file':15} {ref['s_per_iteration']:8.3f} {'':8} "
                         f"{1 / ref['s_per_iteration']:7.2f} {1.0:6.2f} {'':6} {ref['generator_forward_s'] * 1e3:9.1f} "
                         f"{1.0:6.2f} {'':6} {ref['peak_rss_gb']:7.2f} {1.0:5.2f}")
        if loop is not None:
            lines.append(f"{model_name:9} {'reference/loop':15} {loop['s_per_iteration']:8.3f} {'':8} "
                         f"{1 / loop['s_per_iteration']:7.2f} "
                         f"{ratio(get('s_per_iteration') or nan, loop['s_per_iteration']):6.2f} {1.0:6.2f} "
                         f"{loop['generator_forward_s'] * 1e3:9.1f} "
                         f"{ratio(get('generator_forward_s') or nan, loop['generator_forward_s']):6.2f} "
                         f"{1.0:6.2f} {loop['peak_rss_gb']:7.2f} {ratio(loop['peak_rss_gb'], get('peak_rss_gb')):5.2f} "
                         f"{loop.get('achieved_gflops', nan):8.1f} {100 * loop.get('fraction_of_matmul_peak', nan):6.1f}")
        for r in summary["modes"]:
            with_data = r.get("s_per_iteration_with_data")
            line = (f"{model_name:9} {r['mode']:15} {r['s_per_iteration']:8.3f} {with_data or nan:8.3f} "
                    f"{r['images_per_s']:7.2f} "
                    f"{r.get('throughput_ratio', nan):6.2f} {r.get('loop_throughput_ratio', nan):6.2f} "
                    f"{r['generator_forward_s'] * 1e3:9.1f} {r.get('inference_speedup', nan):6.2f} "
                    f"{r.get('loop_inference_speedup', nan):6.2f} {r['peak_rss_gb']:7.2f} {r.get('memory_ratio', nan):5.2f} "
                    f"{r.get('achieved_gflops', nan):8.1f} {100 * r.get('fraction_of_matmul_peak', nan):6.1f}")
            if gpu:
                line += (f" {r.get('peak_gpu_memory_gb', nan):7.2f} {100 * (r.get('gpu_busy_fraction') or nan):6.1f}"
                         f" {_number(r.get('host_syncs_per_iteration')):7.2f} {_number(r.get('cudagraph_skips')):7.0f}")
            lines.append(line)
        data = summary["data_wait"]
        if summary.get("loop_floor"):
            floor = summary["loop_floor"]
            lines.append(f"{'':9} loop floor (loop_only: Lightning's loop, the device cache's batches and logging, no "
                         f"network): {1000 * _number(floor['s_per_iteration_with_data']):.2f} ms/iteration with data")
        if summary.get("recipe_projection"):
            projection = summary["recipe_projection"]
            lines.append(f"{'':9} full recipe ({projection['iterations']} iterations) at {projection['mode']}: "
                         f"{projection['minutes']:.1f} min (s/iteration with data; without compile warm-up, "
                         "validation, checkpoints)")
        drift = (f"reference loop drift (after/before the modes) {loop['drift']:.2f}x" if loop is not None
                 else "no reference loop for this model")
        lines.append(f"{'':9} data wait: {data['s_per_batch'] * 1e3:.1f} ms/batch ({data['source']}) = "
                     f"{100 * data['fraction_of_step']:.1f}% of the best step; {drift}")
        if summary.get("notes"):
            lines.extend(f"{'':9} {note}" for note in summary["notes"])
        for name, target in summary["targets"].items():
            op = "<=" if name == "memory_ratio" else ">="
            line = f"{'':9} target {name:18} {target['mode']:15} {op} {target['target']:.1f}x:"
            if "ratio" in target:
                line += f" vs reference file {target['ratio']:5.2f}x {'PASS' if target['passed'] else 'MISS'},"
            if "loop_ratio" in target:
                line += f" vs loop {target['loop_ratio']:5.2f}x {'PASS' if target['loop_passed'] else 'MISS'}"
            if "loop_fp32_ceiling" in target:
                line += f"  (fp32 ceiling here: {target.get('fp32_ceiling', nan):.2f}x / {target['loop_fp32_ceiling']:.2f}x)"
            lines.append(line)
    return "\n".join(lines)


def run(bench: DictConfig) -> dict:
    device = resolve_device(bench.device)
    if bench.threads:
        torch.set_num_threads(int(bench.threads))
    modes = list(bench.modes)
    if device.type == "cuda" and "fp16" not in modes:
        modes.insert(modes.index("best") if "best" in modes else len(modes), "fp16")
    if device.type == "cpu":
        modes = [m for m in modes if m != "fp16"]  # 16-mixed needs a GradScaler device
    unknown = [m for m in modes if m not in MODES and m != "best"]
    if unknown:
        raise ValueError(f"benchmark modes: unknown {unknown}; choose from {[*MODES, 'best']}")
    if "fp32" not in modes:
        modes.insert(0, "fp32")  # the baseline of every ratio
    isolate = bench.isolate and device.type == "cpu"  # CUDA cannot be forked once initialised
    call = in_child if isolate else (lambda function, *args: function(*args))

    report = {"environment": environment(device), "settings": OmegaConf.to_container(bench, resolve=True)}
    report["matmul_peak_gflops"] = call(matmul_peak, device, bench.matmul_size, bench.matmul_seconds)
    report["models"] = {}
    report["skipped"] = {}
    peaks = report["matmul_peak_gflops"]
    if device.type == "cpu" and "bf16" in modes and peaks["bf16"] < 0.5 * peaks["fp32"] and not bench.force_bf16:
        # Without native bf16 (avx512_bf16/amx) oneDNN emulates it: many times slower than fp32, not worth timing.
        modes.remove("bf16")
        report["skipped"]["bf16"] = (f"bf16 matmul {peaks['bf16']:.1f} GFLOP/s vs fp32 {peaks['fp32']:.1f}: "
                                     "no native bf16 on this CPU (force_bf16=true times it anyway)")
    unknown = [m for m in bench.models if m not in MODEL_OVERRIDES]
    if unknown:
        raise ValueError(f"benchmark models: unknown {unknown}; choose from {sorted(MODEL_OVERRIDES)}")
    reference = load_reference(bench.get("reference"), list(bench.models))
    for model_name in bench.models:
        # A model without a reference loop (pix2pixHD) reports its own timings and memory only.
        has_loop = model_name in REFERENCE_STEPS
        loops = [call(run_reference_loop, bench, device, model_name)] if has_loop else []
        results: list[dict] = []
        floor = None
        for mode in modes:
            if mode in UNSUPPORTED_MODES.get(model_name, {}):
                report["skipped"][f"{model_name}/{mode}"] = UNSUPPORTED_MODES[model_name][mode]
                continue
            setting = choose_best(results) if mode == "best" else MODES[mode]
            print(f"[benchmark] {model_name} {mode} {setting}", file=sys.stderr, flush=True)
            first = mode == "fp32"
            result = call(run_mode, bench, device, model_name, mode, setting, first, first and bench.profile)
            if mode == "loop_only":  # not a training mode: kept out of the ratios, the best and the projection
                floor = {key: result[key] for key in ("s_per_iteration", "s_per_iteration_with_data", "gpu_busy_fraction")}
            else:
                results.append(result)
        if has_loop:
            loops.append(call(run_reference_loop, bench, device, model_name))
        flops = results[0]["flops_per_iteration"]
        summary = summarise(model_name, results, report["matmul_peak_gflops"], flops, loops,
                            reference["figures"].get(model_name), reference["targets"])
        summary["image_size"] = list(image_size(bench, model_name))  # height, width
        perceptual = perceptual_setting(model_name)
        if perceptual is not None:
            cfg = model_config(bench, model_name)
            summary["setting"] = {"experiment": bench.pix2pixhd.experiment,
                                  "generator": cfg.generator._target_.rsplit(".", 1)[-1],
                                  "num_D": cfg.discriminator.num_D, "label_nc": cfg.data.label_nc,
                                  "instance": cfg.data.instance, "lambda_feat": cfg.loss.lambda_feat,
                                  "lambda_vgg": cfg.loss.lambda_vgg, "vgg_weights": perceptual["vgg_weights"]}
            summary["notes"] = [perceptual["note"]] if "note" in perceptual else []
        summary["data_wait"] = call(data_wait, bench, model_name)
        best_step = min(r["s_per_iteration"] for r in results)
        summary["data_wait"]["fraction_of_step"] = summary["data_wait"]["s_per_batch"] / best_step
        summary["recipe_projection"] = recipe_projection(bench, model_name, results)
        if floor is not None:
            summary["loop_floor"] = floor
        report["models"][model_name] = summary
    return report


def recipe_projection(bench: DictConfig, model_name: str, results: list[dict]) -> dict | None:
    """Minutes of the paper's full recipe at the fastest mode's s/iteration with data (batch 1 recipes)."""
    iterations = (bench.get("recipe_iterations") or {}).get(model_name)
    timed = [r for r in results if r.get("s_per_iteration_with_data")]
    if not iterations or not timed:
        return None
    fastest = min(timed, key=lambda r: r["s_per_iteration_with_data"])
    iterations = math.ceil(iterations / bench.batch_size)
    return {"mode": fastest["mode"], "iterations": iterations,
            "minutes": iterations * fastest["s_per_iteration_with_data"] / 60}


def where_time_goes(report: dict) -> str:
    lines = []
    for model_name, summary in report["models"].items():
        missed = [name for name, t in summary["targets"].items()
                  if not (t.get("passed", True) and t.get("loop_passed", True))]
        if not missed:
            continue
        fp32 = summary["modes"][0]
        lines.append(f"{model_name}: missed {', '.join(missed)}. fp32 reaches {fp32.get('achieved_gflops', 0):.1f} GFLOP/s "
                     f"({100 * fp32.get('fraction_of_matmul_peak', 0):.0f}% of the measured matmul peak) on "
                     f"{(fp32['flops_per_iteration'] or 0) / 1e9:.1f} GFLOP per iteration.")
        if fp32.get("profile"):
            lines.append(f"top ops of one fp32 {model_name} step:\n{fp32['profile']}")
        else:
            lines.append("  (rerun with profile=true for a torch.profiler top-ops table)")
    return "\n".join(lines)


@hydra.main(config_path=CONF_DIR, config_name="benchmark", version_base="1.3")
def main(bench: DictConfig) -> None:
    silence_known_warnings()
    with usage_errors_as_messages():
        report = run(bench)
    device_kind = "cuda" if report["environment"]["device"].startswith("cuda") else "cpu"
    output = Path(bench.output or f"benchmarks/results/{device_kind}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    env = report["environment"]
    print(f"torch {env['torch']}, {env.get('device_name', env['cpu'])}, {env['threads']} threads, "
          f"flags {' '.join(env['cpu_flags']) or '-'}; matmul peak GFLOP/s "
          + ", ".join(f"{k} {v:.0f}" for k, v in report["matmul_peak_gflops"].items()))
    print(format_table(report))
    for mode, reason in report["skipped"].items():
        print(f"skipped {mode}: {reason}")
    explanation = where_time_goes(report)
    if explanation:
        print(explanation)
    print(f"JSON: {output}")


if __name__ == "__main__":
    main()
