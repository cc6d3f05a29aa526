#!/usr/bin/env bash
# Issue 14 on a lent GPU machine (the workplace's device tool: $OUT comes back, at most 8 files of 16 MiB), in two
# calls, the recipe running detached between them (a call is limited to 10 minutes, the recipe may take longer):
#   start TRAIN_BUDGET_S WATCH_S  the CUDA tests of the step graph (150 s at most); if they
#                                 pass, scripts/gpu_facades_recipe.sh detached with TRAIN_BUDGET_S (in fp32 if
#                                 only the bf16 test failed), watched until it is done or WATCH_S after the call
#                                 began; if the fp32 test failed, scripts/gpu_diagnose.sh instead (a recipe
#                                 without the step graph would only repeat the 19.7 ms run); packs
#   finish WAIT_S                 waits for the recipe (WAIT_S at most) and packs
# Run from the repository root with the data copied to .gpu/facades and the wheels of scripts/gpu_wheels.sh in
# .whl (both named in the call's carry); the command first installs them:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && bash scripts/gpu_facades_session.sh start 600 530
# Packed: logs.tgz (logs, CSV metrics, samples, .hydra, the watch log: time, GPU load, last logged step every 10 s)
# and the translated test images (outputs.tar.part_*), to be scored where the FID weights are:
#   cat outputs.tar.part_* | tar x -C RUN && python scripts/quality_facades.py --setting paper --stage score --out RUN
set -u
run=/tmp/run
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
t_call=$(date +%s)

. scripts/gpu_session_lib.sh
pack() { pack_run "$run" "$run/recipe_status.txt" test_output_paper test_output_eval; }
watch() { watch_run "$run" "$run/recipe_status.txt" '^done' "$1"; }  # watch UNTIL_EPOCH_S

case $1 in
  start)
    nvidia-smi -L
    python3 -c "import torch, pytorch_lightning, hydra; print(torch.__version__, pytorch_lightning.__version__, hydra.__version__)"
    rm -rf "$run" && mkdir -p "$run"
    # Only the step graph's capture gates the recipe: the device cache's CUDA test passed on the H200 (session 6)
    # and runs in gpu_diagnose.sh; each test here costs device time.
    # -v: each test's result is printed when it ends, so a timeout during the bf16 test keeps the fp32 result.
    timeout 150 python3 -m pytest -v -rA -p no:cacheprovider -k cuda tests/test_step_graph.py \
      > "$run/pytest_cuda.log" 2>&1
    rc=$?
    echo "pytest rc=$rc" >> "$run/pytest_cuda.log"; tail -n 4 "$run/pytest_cuda.log"
    # The capture works if its fp32 test passed. If only the bf16 one failed (its tolerance, or autocast in the
    # capture), the recipe still runs, in fp32; if the fp32 one failed, the diagnosis runs instead.
    extra=()
    if ! grep -q "capture.*\[32-true\] PASSED" "$run/pytest_cuda.log"; then
      grep -E "^E |Error" "$run/pytest_cuda.log" | head -n 20
      OUT=$run/diagnose bash scripts/gpu_diagnose.sh
      pack; exit 1
    elif [ "$rc" -ne 0 ]; then
      grep -E "^E |Error" "$run/pytest_cuda.log" | head -n 10
      extra=(trainer.precision=32-true)
      echo "the bf16 capture test failed: the recipe runs in fp32" | tee -a "$run/pytest_cuda.log"
    fi
    setsid nohup bash scripts/gpu_facades_recipe.sh .gpu/facades "$run" "$2" ${extra[@]+"${extra[@]}"} > "$run/recipe.out" 2>&1 \
      < /dev/null &
    watch $(( t_call + $3 ))
    pack ;;
  finish)
    watch $(( t_call + $2 ))
    pack ;;
  *) echo "usage: $0 start TRAIN_BUDGET_S WATCH_S | finish WAIT_S" >&2; exit 2 ;;
esac
