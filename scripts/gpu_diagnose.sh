#!/usr/bin/env bash
# Issue 14's next GPU call (docs/fast_path.md, "How to run it"): does the whole-step CUDA graph (model.step_graph)
# capture and train like the eager step on the GPU, and what does each switch cost? About 3 minutes on an H200.
# Run from the repository root with the wheels of scripts/gpu_wheels.sh in .whl and the facades in .gpu/facades
# (both named in the call's carry):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && bash scripts/gpu_diagnose.sh
# Writes into $OUT (or ./gpu_diagnose): pytest_cuda.log, bench.json, bench.log.
set -u
out=${OUT:-gpu_diagnose}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L
# The CUDA-only tests: the step graph's real capture (fp32 and bf16) against the eager step, the device cache's
# batches. (The per-network CUDA graphs of compile_mode=reduce-overhead, no longer in trainer=gpu_fast, have their
# own CUDA tests in tests/test_precision.py and tests/test_benchmark.py: minutes of compilation, left out here.)
timeout 300 python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_step_graph.py tests/test_device_cache.py \
  > "$out/pytest_cuda.log" 2>&1
echo "pytest rc=$?" >> "$out/pytest_cuda.log"
tail -n 15 "$out/pytest_cuda.log"
# ms/iteration (with data), %busy and sync/it: fp32 eager, fp32 with the step graph, and gpu_fast (bf16 +
# channels_last + step graph + device cache); the loop floor (no network); pix2pix on the real facades, CycleGAN
# on the embedded shapes.
timeout 360 python3 -m gan_translate.benchmark device=cuda 'models=[pix2pix,cyclegan]' \
  'modes=[fp32,step_graph,gpu_fast,loop_only]' warmup=20 iterations=100 'data_root={pix2pix: .gpu/facades}' data_workers=4 \
  matmul_seconds=0.2 "output=$out/bench.json" > "$out/bench.log" 2>&1
echo "benchmark rc=$?"
grep -iE "step_graph|capture|Error" "$out/bench.log" | sort | uniq -c | sort -rn | head -10
tail -n 16 "$out/bench.log"
