#!/usr/bin/env bash
# Issue 14 on a GPU machine: the pix2pix facades recipe with trainer=gpu_fast, timed end to end, then the
# 106 test images translated in both test-time modes (scripts/quality_facades.py), ready to be scored where
# the FID weights are. Meant to run detached (setsid) so that it can outlive one device call:
#   setsid bash scripts/gpu_facades_recipe.sh DATA RUN_DIR MAX_TRAIN_S [EXTRA_OVERRIDES...] &
# Writes RUN_DIR/recipe_status.txt: one line per attempt (start, end, exit code, flags), then "done".
# If the full gpu_fast set fails (e.g. the step graph's capture on this torch), it retries once without the step
# graph, inside the same time budget. trainer.max_time stops training at MAX_TRAIN_S (the note must then say so).
set -u
data=$1; run=$2; budget=$3; shift 3
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
mkdir -p "$run"
status=$run/recipe_status.txt
t_start=$(date +%s)
# Validation (100 val images), sample grids and figures every 20 epochs, last.ckpt every 10 epochs and every 2
# minutes (a stop by max_time then loses at most 2 minutes of training): their cost is
# part of the timed run; the periodic keep-everything checkpoints are off (700 MB each with Adam's moments).
schedule=(trainer.check_val_every_n_epoch=20 callbacks.samples.every_n_epochs=20 callbacks.figures.every_n_epochs=20
          +callbacks.last_checkpoint.every_n_epochs=10 callbacks.interval_checkpoint.every_n_minutes=2
          callbacks.periodic_checkpoint=null data.num_workers=8)
. scripts/gpu_session_lib.sh
train() {  # train NAME OVERRIDES...
  local name=$1; shift
  attempt "$name" "$status" $(( t_start + budget )) "$run/train_$name.log" \
    "${PYTHON:-python3}" scripts/quality_facades.py --setting paper --data "$data" --out "$run" --stage train -- \
    trainer=gpu_fast "${schedule[@]}" "$@"
}
train gpu_fast "$@" || { rm -rf "$run/checkpoints"; train no_step_graph model.step_graph=false "$@"; }
t0=$(date +%s.%N)
"${PYTHON:-python3}" scripts/quality_facades.py --setting paper --data "$data" --out "$run" --stage translate > "$run/translate.log" 2>&1
rc=$?
echo "translate start=$t0 end=$(date +%s.%N) rc=$rc" >> "$status"
echo done >> "$status"
