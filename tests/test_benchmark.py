"""The benchmark entry point at tiny size: real Hydra run, real Trainer steps, JSON with every mode."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["size=32", "ngf=8", "ndf=8", "warmup=1", "iterations=1", "inference_iterations=1", "data_batches=1",
        "device=cpu", "force_bf16=true", "matmul_size=128", "matmul_seconds=0.05"]


def run_benchmark(tmp_path: Path, *overrides: str) -> dict:
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "gan_translate.benchmark", *TINY, f"output={output}", *overrides]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "target best_throughput" in result.stdout  # the printed table
    return json.loads(output.read_text())


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
                        "inference_speedup", "memory_ratio", "achieved_gflops", "fraction_of_matmul_peak"):
                assert r[key] > 0 and math.isfinite(r[key]), (r["mode"], key, r[key])
        assert set(summary["targets"]) == {"best_throughput", "fp32_throughput", "inference_speedup", "memory_ratio"}
        assert all(isinstance(t["passed"], bool) for t in summary["targets"].values())
        assert summary["data_wait"]["s_per_batch"] > 0


def test_benchmark_smoke(tmp_path):
    modes = ["fp32", "bf16", "channels_last", "best"]
    report = run_benchmark(tmp_path, "models=[pix2pix,cyclegan]", f"modes=[{','.join(modes)}]", "isolate=false")
    check_report(report, ["pix2pix", "cyclegan"], modes)


@pytest.mark.slow
def test_benchmark_all_modes_with_compile(tmp_path):
    modes = ["fp32", "bf16", "channels_last", "compile", "best"]
    report = run_benchmark(tmp_path, "models=[pix2pix]", "profile=true")
    check_report(report, ["pix2pix"], modes)
    assert report["models"]["pix2pix"]["modes"][0]["profile"]  # the torch.profiler table of one step
