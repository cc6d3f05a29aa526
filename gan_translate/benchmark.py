"""Benchmark: ``python -m gan_translate.benchmark [device=cuda] [size=128] [models=[pix2pix]] [profile=true]``.

Times steady-state training iterations (one full GAN step: D and G updates) through a real Lightning
``Trainer`` with the real ``training_step``, so manual_backward/LightningOptimizer and the precision plugin
(autocast, GradScaler) are in the measured path; a per-batch callback takes the time between
``on_train_batch_start`` and ``on_train_batch_end`` (data loading excluded; measured separately as the
data-wait fraction with the real DataLoader). Also times generator inference, counts FLOPs with
``FlopCounterMode`` and relates them to a measured matmul peak. Writes JSON and prints a table with the
reference figures of the issue (2-core CPU, batch 1, 256x256, fp32) and pass/miss per target.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import resource
import sys
import time
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from gan_translate.checkpoint import build_model
from gan_translate.train import CONF_DIR

# The issue's figures on the 2-core reference CPU (batch 1, 256x256, fp32).
REFERENCE = {
    "pix2pix": {"s_per_iteration": 0.80, "generator_forward_s": 0.130, "peak_rss_gb": 1.9},
    "cyclegan": {"s_per_iteration": 11.2, "generator_forward_s": 0.597, "peak_rss_gb": 4.2},
}
TARGETS = {"best_throughput": 1.5, "fp32_throughput": 1.0, "inference_speedup": 2.0, "memory_ratio": 1.0}
MODES = {  # precision, channels_last, compile
    "fp32": ("32-true", False, False),
    "bf16": ("bf16-mixed", False, False),
    "fp16": ("16-mixed", False, False),
    "channels_last": ("32-true", True, False),
    "compile": ("32-true", False, True),
}
MODEL_OVERRIDES = {
    "pix2pix": ["model=pix2pix", "generator=unet_256", "data=synthetic_facades"],
    "cyclegan": ["model=cyclegan", "generator=resnet_9blocks", "data=synthetic_shapes"],
}
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def model_config(bench: DictConfig, model: str, precision: str, channels_last: bool, compile: bool,
                 data_overrides: list[str] | None = None) -> DictConfig:
    """The training config the benchmark runs: train.yaml with paper widths (experiment=null)."""
    overrides = [*MODEL_OVERRIDES[model]]
    if model == "pix2pix" and bench.size < 256:  # the U-Net halves down to 1x1
        overrides.append(f"generator.num_downs={int(math.log2(bench.size))}")
    overrides += [
            "~experiment", f"generator.ngf={bench.ngf}", f"discriminator.ndf={bench.ndf}",
            f"model.channels_last={channels_last}", f"model.compile={compile}", f"trainer.precision={precision}",
            f"data.size={bench.size}", f"data.batch_size={bench.batch_size}", "data.num_workers=0",
            f"data.train_length={(bench.warmup + bench.iterations + 1) * bench.batch_size}",
            "paths.output_dir=benchmark_unused", *(data_overrides or []),
    ]
    if GlobalHydra.instance().is_initialized():  # inside @hydra.main: same config dir
        return compose("train", overrides=overrides)
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


class StepTimer(pl.Callback):
    """Wall time of each training batch (its full GAN step); optionally counts or profiles one step."""

    def __init__(self, device: torch.device, count_flops_at: int | None, profile_at: int | None) -> None:
        self.device, self.count_flops_at, self.profile_at = device, count_flops_at, profile_at
        self.times: list[float] = []
        self.flops: int | None = None
        self.profile_table: str | None = None
        self._context = None

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.count_flops_at:
            from torch.utils.flop_counter import FlopCounterMode

            self._context = FlopCounterMode(display=False)
        elif batch_idx == self.profile_at:
            self._context = torch.profiler.profile(record_shapes=False)
        if self._context is not None:
            self._context.__enter__()
        self._sync()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync()
        elapsed = time.perf_counter() - self._start
        if self._context is None:
            self.times.append(elapsed)
            return
        self._context.__exit__(None, None, None)
        if batch_idx == self.count_flops_at:
            self.flops = self._context.get_total_flops()
        else:
            sort = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
            self.profile_table = self._context.key_averages().table(sort_by=sort, row_limit=15)
        self._context = None


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


def run_mode(bench: DictConfig, device: torch.device, model_name: str, mode: str, setting: tuple,
             count_flops: bool, profile: bool) -> dict:
    """Train ``warmup + iterations`` steps in a real Trainer and time generator inference."""
    precision, channels_last, compile = setting
    torch.manual_seed(0)
    cfg = model_config(bench, model_name, precision, channels_last, compile)
    model = build_model(cfg)
    extra = int(count_flops) + int(profile)
    # Untimed steps: warm-up first, then the FLOP count / profile (counting slows a step down).
    count_at = bench.warmup if count_flops else None
    profile_at = bench.warmup + int(count_flops) if profile else None
    timer = StepTimer(device, count_at, profile_at)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with open_dict(cfg):
        cfg.data.train_length = (bench.warmup + bench.iterations + extra) * bench.batch_size
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, precision=precision,
        max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )
    trainer.fit(model, datamodule=instantiate(cfg.data))
    timed = timer.times[bench.warmup:]
    step_s = sum(timed) / len(timed)

    generator = model.generator_for().eval()
    images = torch.rand(bench.batch_size, model.source_channels(), bench.size, bench.size, device=model.device) * 2 - 1
    images = model.prepare(images)
    autocast = torch.autocast(device.type, dtype=AUTOCAST.get(precision, torch.float32),
                              enabled=precision in AUTOCAST)
    forward_times = []
    with torch.no_grad(), autocast:
        for i in range(bench.inference_iterations + 2):  # two warm-up forwards
            start = time.perf_counter()
            generator(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:
                forward_times.append(time.perf_counter() - start)
    result = {
        "model": model_name, "mode": mode, "precision": precision, "channels_last": channels_last,
        "compile": compile, "s_per_iteration": step_s, "images_per_s": bench.batch_size / step_s,
        "step_times_s": timed, "generator_forward_s": sum(forward_times) / len(forward_times),
        "peak_rss_gb": peak_rss_gb(), "flops_per_iteration": timer.flops,
        "profile": timer.profile_table,
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


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
    data = []
    if bench.data_root:
        kind = "aligned" if model_name == "pix2pix" else "unaligned"
        data = [f"data={kind}", f"data.root={bench.data_root}", f"data.num_workers={bench.data_workers}"]
        if model_name == "pix2pix":
            data.append("data.direction=BtoA")
    cfg = model_config(bench, model_name, "32-true", False, False, data)
    with open_dict(cfg):
        cfg.data.num_workers = bench.data_workers
        cfg.data.persistent_workers = False
        if not bench.data_root:
            cfg.data.train_length = (bench.data_batches + 1) * bench.batch_size
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
    return {"source": bench.data_root or "embedded synthetic", "s_per_batch": (time.perf_counter() - start) / max(batches, 1)}


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
    """The fastest measured precision, plus channels_last/compile where each beat plain fp32."""
    by_mode = {r["mode"]: r for r in results}
    precisions = [m for m in ("fp32", "bf16", "fp16") if m in by_mode]
    best_precision = min(precisions, key=lambda m: by_mode[m]["s_per_iteration"])
    fp32 = by_mode["fp32"]["s_per_iteration"]
    helps = {m: m in by_mode and by_mode[m]["s_per_iteration"] < fp32 for m in ("channels_last", "compile")}
    return MODES[best_precision][0], helps["channels_last"], helps["compile"]


def summarise(model_name: str, results: list[dict], device: torch.device, peaks: dict, flops: int | None) -> dict:
    reference = REFERENCE[model_name]
    by_mode = {r["mode"]: r for r in results}
    peak_by_precision = {"32-true": peaks["fp32"], "bf16-mixed": peaks["bf16"], "16-mixed": peaks.get("fp16", peaks["bf16"])}
    for r in results:
        r["throughput_ratio"] = reference["s_per_iteration"] / r["s_per_iteration"]
        r["inference_speedup"] = reference["generator_forward_s"] / r["generator_forward_s"]
        r["memory_ratio"] = r["peak_rss_gb"] / reference["peak_rss_gb"]
        if flops:
            r["achieved_gflops"] = flops / r["s_per_iteration"] / 1e9
            r["fraction_of_matmul_peak"] = r["achieved_gflops"] / peak_by_precision[r["precision"]]
    fastest = min(results, key=lambda r: r["s_per_iteration"])
    best = by_mode.get("best", fastest)
    best = fastest if fastest["s_per_iteration"] < best["s_per_iteration"] else best
    fastest_inference = min(results, key=lambda r: r["generator_forward_s"])
    targets = {
        "best_throughput": {"mode": best["mode"], "ratio": best["throughput_ratio"], "target": TARGETS["best_throughput"]},
        "fp32_throughput": {"mode": "fp32", "ratio": by_mode["fp32"]["throughput_ratio"], "target": TARGETS["fp32_throughput"]},
        "inference_speedup": {"mode": fastest_inference["mode"], "ratio": fastest_inference["inference_speedup"],
                              "target": TARGETS["inference_speedup"]},
        "memory_ratio": {"mode": "fp32", "ratio": by_mode["fp32"]["memory_ratio"], "target": TARGETS["memory_ratio"]},
    }
    for name, target in targets.items():
        better = target["ratio"] <= target["target"] if name == "memory_ratio" else target["ratio"] >= target["target"]
        target["passed"] = bool(better)
    return {"reference": reference, "flops_per_iteration": flops, "modes": results, "targets": targets}


def format_table(report: dict) -> str:
    gpu = report["environment"]["device"].startswith("cuda")
    header = f"{'model':9} {'mode':14} {'s/it':>8} {'img/s':>7} {'xref':>6} {'G fwd ms':>9} {'xref':>6} {'RSS GB':>7} {'xref':>5}"
    header += f" {'GFLOP/s':>8} {'%peak':>6}" + (f" {'GPU GB':>7}" if gpu else "")
    lines = [header, "-" * len(header)]
    for model_name, summary in report["models"].items():
        ref = summary["reference"]
        lines.append(f"{model_name:9} {'reference':14} {ref['s_per_iteration']:8.3f} {1 / ref['s_per_iteration']:7.2f} "
                     f"{1.0:6.2f} {ref['generator_forward_s'] * 1e3:9.1f} {1.0:6.2f} {ref['peak_rss_gb']:7.2f} {1.0:5.2f}")
        for r in summary["modes"]:
            gflops = r.get("achieved_gflops")
            line = (f"{model_name:9} {r['mode']:14} {r['s_per_iteration']:8.3f} {r['images_per_s']:7.2f} "
                    f"{r['throughput_ratio']:6.2f} {r['generator_forward_s'] * 1e3:9.1f} {r['inference_speedup']:6.2f} "
                    f"{r['peak_rss_gb']:7.2f} {r['memory_ratio']:5.2f} "
                    f"{gflops if gflops else float('nan'):8.1f} {100 * r.get('fraction_of_matmul_peak', float('nan')):6.1f}")
            if gpu:
                line += f" {r.get('peak_gpu_memory_gb', float('nan')):7.2f}"
            lines.append(line)
        data = summary["data_wait"]
        lines.append(f"{'':9} data wait: {data['s_per_batch'] * 1e3:.1f} ms/batch ({data['source']}) = "
                     f"{100 * data['fraction_of_step']:.1f}% of the best step")
        for name, target in summary["targets"].items():
            op = "<=" if name == "memory_ratio" else ">="
            lines.append(f"{'':9} target {name:18} {target['mode']:14} {target['ratio']:5.2f}x {op} "
                         f"{target['target']:.1f}x  {'PASS' if target['passed'] else 'MISS'}")
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
    for model_name in bench.models:
        if model_name not in REFERENCE:
            raise ValueError(f"benchmark models: unknown {model_name!r}; choose from {sorted(REFERENCE)}")
        results: list[dict] = []
        for mode in modes:
            setting = choose_best(results) if mode == "best" else MODES[mode]
            print(f"[benchmark] {model_name} {mode} {setting}", file=sys.stderr, flush=True)
            first = mode == "fp32"
            results.append(call(run_mode, bench, device, model_name, mode, setting, first, first and bench.profile))
        flops = results[0]["flops_per_iteration"]
        summary = summarise(model_name, results, device, report["matmul_peak_gflops"], flops)
        summary["data_wait"] = call(data_wait, bench, model_name)
        best_step = min(r["s_per_iteration"] for r in results)
        summary["data_wait"]["fraction_of_step"] = summary["data_wait"]["s_per_batch"] / best_step
        report["models"][model_name] = summary
    return report


def where_time_goes(report: dict) -> str:
    lines = []
    for model_name, summary in report["models"].items():
        missed = [name for name, t in summary["targets"].items() if not t["passed"]]
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
