#!/usr/bin/env bash
# Issue 14's next GPU call (docs/fast_path.md, "How to run it"): why the CUDA graphs did not replay, and what each
# switch costs. About 4-5 minutes on an H200. Run from the repository root with the wheels of scripts/gpu_wheels.sh
# in .whl and the facades in .gpu/facades (both named in the call's carry):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && bash scripts/gpu_diagnose.sh
# Writes into $OUT (or ./gpu_diagnose): pytest_cuda.log, bench.json, bench.log (with torch's cudagraphs log).
set -u
out=${OUT:-gpu_diagnose}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
nvidia-smi -L
timeout 240 python3 -m pytest -q -p no:cacheprovider -k cuda tests/test_device_cache.py tests/test_precision.py \
  tests/test_benchmark.py > "$out/pytest_cuda.log" 2>&1
echo "pytest rc=$?" >> "$out/pytest_cuda.log"
tail -n 15 "$out/pytest_cuda.log"
# The skip reasons (TORCH_LOGS=cudagraphs), cg skip and sync/it per mode; warm-up long enough for the graphs to be
# recorded before the timed steps.
TORCH_LOGS=cudagraphs timeout 300 python3 -m gan_translate.benchmark device=cuda 'models=[pix2pix]' \
  'modes=[fp32,no_sync,cuda_graphs,gpu_fast]' warmup=30 iterations=100 data_root=.gpu/facades data_workers=4 \
  matmul_seconds=0.2 "output=$out/bench.json" > "$out/bench.log" 2>&1
echo "benchmark rc=$?"
grep -iE "skipping cudagraphs|cudagraph" "$out/bench.log" | sort | uniq -c | sort -rn | head -20
tail -n 14 "$out/bench.log"
