"""The benchmark entry point at tiny size: real Hydra run, real Trainer steps, JSON with every mode."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import compose_train, write_aligned
from hydra.utils import instantiate
from tiny_runs import tiny_config

from gan_translate.benchmark import REFERENCE_STEPS, busy_seconds, format_table, load_reference, run
from gan_translate.checkpoint import build_model
from gan_translate.models.image_pool import ImagePool

ROOT = Path(__file__).resolve().parent.parent
TINY = ["size=32", "ngf=8", "ndf=8", "warmup=1", "iterations=1", "inference_iterations=1", "data_batches=1",
        "device=cpu", "force_bf16=true", "matmul_size=128", "matmul_seconds=0.05"]


def run_benchmark(tmp_path: Path, *overrides: str) -> dict:
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "gan_translate.benchmark", *TINY, f"output={output}", *overrides]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(output.read_text())
    if report["settings"]["reference"]:
        assert "target best_throughput" in result.stdout  # the printed table
    return report


def check_loop_only_report(report: dict) -> None:
    """Without reference=FILE: ratios to the loop measured in the run only, no figures, no targets."""
    for summary in report["models"].values():
        assert summary["reference"] is None and summary["targets"] == {}
        for r in summary["modes"]:
            assert r["loop_throughput_ratio"] > 0 and "throughput_ratio" not in r


def check_report(report: dict, models: list[str], modes: list[str]) -> None:
    env = report["environment"]
    assert env["torch"] and env["threads"] >= 1 and isinstance(env["cpu_flags"], list)
    assert all(v > 0 and math.isfinite(v) for v in report["matmul_peak_gflops"].values())
    assert sorted(report["models"]) == sorted(models)
    for summary in report["models"].values():
        assert [r["mode"] for r in summary["modes"]] == modes
        assert summary["flops_per_iteration"] > 0
        for r in summary["modes"]:
            for key in ("s_per_iteration", "images_per_s", "generator_forward_s", "peak_rss_gb", "throughput_ratio",
                        "inference_speedup", "memory_ratio", "loop_throughput_ratio", "loop_inference_speedup",
                        "loop_memory_ratio", "achieved_gflops", "fraction_of_matmul_peak"):
                assert r[key] > 0 and math.isfinite(r[key]), (r["mode"], key, r[key])
            # Each ratio is against its own baseline: the loop measured in this run, or the figures.
            loop = summary["reference_loop"]
            assert math.isclose(r["loop_throughput_ratio"], loop["s_per_iteration"] / r["s_per_iteration"])
            assert math.isclose(r["throughput_ratio"], summary["reference"]["s_per_iteration"] / r["s_per_iteration"])
        loop = summary["reference_loop"]
        assert len(loop["runs"]) == 2 and all(run["s_per_iteration"] > 0 for run in loop["runs"])  # before and after
        assert loop["drift"] > 0 and loop["generator_forward_s"] > 0
        assert set(summary["targets"]) == {"best_throughput", "fp32_throughput", "inference_speedup", "memory_ratio"}
        assert all(isinstance(t["passed"], bool) and isinstance(t["loop_passed"], bool)
                   for t in summary["targets"].values())
        assert summary["data_wait"]["s_per_batch"] > 0
        # The GPU busy fraction exists on CUDA only (kernel intervals from the profiler); never invented on a CPU.
        cuda = report["environment"]["device"].startswith("cuda")
        assert all((r["gpu_busy_fraction"] is not None) == cuda for r in summary["modes"])
        assert all(0 < r["gpu_busy_fraction"] <= 1 for r in summary["modes"] if cuda)


def test_busy_seconds_is_the_union_of_kernel_intervals():
    assert busy_seconds([]) == 0
    assert busy_seconds([(5, 6), (0, 2), (1, 3)]) == 4  # overlapping streams count once
    assert busy_seconds([(0, 10), (2, 3), (4, 5)]) == 10  # nested
    assert busy_seconds([(0, 1), (1, 2)]) == 2  # back to back


def test_benchmark_smoke(tmp_path):
    modes = ["fp32", "bf16", "channels_last", "no_sync", "step_graph", "best"]
    report = run_benchmark(tmp_path, "models=[pix2pix,cyclegan]", f"modes=[{','.join([*modes, 'loop_only'])}]",
                           "isolate=false", f"reference={ROOT / 'benchmarks' / 'reference_cpu.yaml'}")
    check_report(report, ["pix2pix", "cyclegan"], modes)  # loop_only is not among the modes: the floor under them
    for summary in report["models"].values():
        floor = summary["loop_floor"]["s_per_iteration_with_data"]
        assert 0 < floor < min(r["s_per_iteration_with_data"] for r in summary["modes"])
    for summary in report["models"].values():
        assert all(r["s_per_iteration_window"] > 0 and r["synchronised_each_step"] for r in summary["modes"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="counts CUDA synchronisations: needs a GPU")
def test_benchmark_counts_host_syncs_and_cuda_graph_skips_on_cuda(tmp_path):
    """On CUDA each mode reports the host synchronisations of a few steady batches (with the lines causing them)
    and, compiled, the graphs torch ran without CUDA graphs. The per-step loss check (fp32: each loss read before
    its update, 2 per pix2pix batch) synchronises; the deferred guard (no_sync) does not, per batch, nor does the
    replayed step graph."""
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "gan_translate.benchmark", *[o for o in TINY if not o.startswith("device=")],
               "device=cuda", "models=[pix2pix]", "modes=[fp32,no_sync,cuda_graphs,step_graph]", "busy_steps=2",
               "sync_steps=3", "warmup=3", f"output={output}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(output.read_text())["models"]["pix2pix"]["modes"]}
    assert rows["fp32"]["host_syncs_per_iteration"] >= 2 and rows["fp32"]["host_sync_locations"]
    assert rows["no_sync"]["host_syncs_per_iteration"] < rows["fp32"]["host_syncs_per_iteration"]
    assert rows["step_graph"]["host_syncs_per_iteration"] <= rows["no_sync"]["host_syncs_per_iteration"]
    assert isinstance(rows["cuda_graphs"]["cudagraph_skips"], int) and "cudagraph_skips" not in rows["fp32"]
    assert "sync/it" in result.stdout


def test_benchmark_window_timing_without_per_step_sync(tmp_path):
    """step_sync=false (the CUDA default): the timed steps are one window, synchronised at its ends; s/it and
    +data are its mean."""
    report = run_benchmark(tmp_path, "models=[pix2pix]", "modes=[fp32]", "step_sync=false", "iterations=3")
    (fp32,) = report["models"]["pix2pix"]["modes"]
    assert not fp32["synchronised_each_step"] and fp32["s_per_iteration_window"] > 0
    assert fp32["s_per_iteration"] == fp32["s_per_iteration_with_data"] == fp32["s_per_iteration_window"]


def test_reference_file_is_checked(tmp_path):
    bad = tmp_path / "ref.yaml"
    bad.write_text("figures: {pix2pix: {s_per_iteration: 1.0}}\ntargets: {speed: 2}\n")
    with pytest.raises(ValueError, match=r"figures.pix2pix lacks \['generator_forward_s', 'peak_rss_gb'\]"):
        load_reference(str(bad), ["pix2pix"])
    with pytest.raises(FileNotFoundError, match="reference=nowhere.yaml"):
        load_reference("nowhere.yaml", ["pix2pix"])
    assert load_reference(None, ["pix2pix"]) == {"figures": {}, "targets": {}}


@pytest.mark.slow
def test_benchmark_all_modes_with_compile(tmp_path):
    modes = ["fp32", "bf16", "channels_last", "compile", "device_cache", "best"]  # conf/benchmark.yaml's default
    report = run_benchmark(tmp_path, "models=[pix2pix]", "profile=true")
    check_loop_only_report(report)
    assert [r["mode"] for r in report["models"]["pix2pix"]["modes"]] == modes
    assert report["models"]["pix2pix"]["modes"][0]["profile"]  # the torch.profiler table of one step


class FirstBatch(pl.Callback):
    """Records the first training batch and the RNG state it starts with, then stops after it."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch = {k: v.clone() for k, v in batch.items() if torch.is_tensor(v)}
        self.rng = torch.get_rng_state()


@pytest.mark.parametrize("method", ["pix2pix", "cyclegan"])
def test_reference_loop_is_the_same_iteration_as_the_lightning_step(tmp_path, method):
    """The benchmark's plain-PyTorch reference iteration and the LightningModule's training_step are the
    same computation: from the same weights, batch and RNG state they reach the same weights."""
    # scheduler=constant: the reference loop has no schedule.
    cfg = tiny_config(method, tmp_path, "optim.fused=false", "scheduler=constant", "trainer.accelerator=cpu",
                      "+trainer.limit_train_batches=1", "+trainer.limit_val_batches=0")
    model = build_model(cfg)
    replay = copy.deepcopy(model)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    recorder = FirstBatch()
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          callbacks=[recorder])
    trainer.fit(model, datamodule=instantiate(cfg.data))

    groups = replay.optimizer_groups()
    adam = {"lr": cfg.optim.lr, "betas": tuple(cfg.optim.betas), "foreach": False, "fused": False}
    opt_g, opt_d = (torch.optim.Adam(groups[name], **adam) for name in ("generator", "discriminator"))
    pools = (ImagePool(cfg.model.get("pool_size", 50)), ImagePool(cfg.model.get("pool_size", 50)))
    replay.train()
    torch.set_rng_state(recorder.rng)
    REFERENCE_STEPS[method](replay, opt_g, opt_d, recorder.batch["A"], recorder.batch["B"], pools)

    trained, replayed = dict(model.named_parameters()), dict(replay.named_parameters())
    assert set(trained) == set(replayed)
    for prefix in ("generator", "discriminator"):  # both updates happened
        assert any(not torch.equal(w, initial[n]) for n, w in trained.items() if n.startswith(prefix))
    for name, weight in trained.items():
        torch.testing.assert_close(replayed[name], weight, atol=1e-6, rtol=1e-5, msg=name)
    replayed_buffers = dict(replay.named_buffers())
    for name, buffer in model.named_buffers():  # batch-norm running statistics too
        torch.testing.assert_close(replayed_buffers[name], buffer, atol=1e-6, rtol=1e-5, msg=name)


def test_benchmark_device_cache_on_real_files(tmp_path):
    """modes=[fp32,device_cache] on real files (data_root per model): both modes train on them, report the time
    per iteration with the data, and the full-recipe projection uses it. In-process (cheaper than the CLI)."""
    root = write_aligned(tmp_path / "facades", splits=("train",), count=4)
    bench = compose_train([*TINY, "models=[pix2pix]", "modes=[fp32,device_cache]", "isolate=false",
                           f"data_root={{pix2pix:{root}}}", "recipe_iterations.pix2pix=100"], config_name="benchmark")
    summary = run(bench)["models"]["pix2pix"]
    assert [(r["mode"], r["device_cache"]) for r in summary["modes"]] == [("fp32", False), ("device_cache", True)]
    for r in summary["modes"]:
        assert r["s_per_iteration_with_data"] > 0 and len(r["step_with_data_times_s"]) == 1
    assert summary["data_wait"]["source"] == str(root)
    projection = summary["recipe_projection"]
    fastest = min(r["s_per_iteration_with_data"] for r in summary["modes"])
    assert projection["iterations"] == 100 and math.isclose(projection["minutes"], 100 * fastest / 60)


def test_benchmark_pix2pixhd_reports_memory_without_a_reference_loop(tmp_path):
    """models=[pix2pixhd]: the Cityscapes setting (label_nc 35 + instance edges, G1, 2 D scales) on embedded
    non-square label maps trains in a real Trainer and reports s/iteration and peak memory, with no reference loop
    (so no loop ratios); its data has no device cache, so that mode is skipped. In-process."""
    bench = compose_train([*TINY, "models=[pix2pixhd]", "modes=[fp32,device_cache]", "isolate=false",
                           "pix2pixhd.height=64", "pix2pixhd.width=128"], config_name="benchmark")
    report = run(bench)
    summary = report["models"]["pix2pixhd"]
    assert summary["reference_loop"] is None and summary["targets"] == {}
    assert summary["image_size"] == [64, 128]
    setting = summary["setting"]
    assert (setting["generator"], setting["num_D"], setting["label_nc"], setting["instance"]) == (
        "GlobalGenerator", 2, 35, True)
    # The tests' weights cache is empty: the perceptual term is switched off, and the report says so.
    assert setting["lambda_vgg"] == 0 and "lambda_vgg=0" in summary["notes"][0]
    assert [r["mode"] for r in summary["modes"]] == ["fp32"]
    assert "device_cache" in report["skipped"]["pix2pixhd/device_cache"]
    r = summary["modes"][0]
    assert r["s_per_iteration"] > 0 and r["generator_forward_s"] > 0 and r["flops_per_iteration"] > 0
    assert 0 < r["peak_rss_gb"] < 64
    assert not any(key.startswith("loop_") for key in r)
    report["environment"]["device"] = "cpu"
    table = format_table(report)
    assert "no reference loop for this model" in table and "reference/loop" not in table
