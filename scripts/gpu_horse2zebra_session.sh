#!/usr/bin/env bash
# Issue 14, deliverable 4, on a lent GPU machine (the workplace's device tool): CycleGAN on horse2zebra with
# trainer=gpu_fast, for as long as the session allows, then the test sets translated for FID here. The data
# (trainA 38 MB, trainB 28 MB, tests 12 MB) is over one call's 64 MiB, so it comes in two calls, kept in /tmp
# (the machine keeps /tmp while it is warm: each call must follow the last within 30 s). Prepare here:
#   mkdir -p .gpu/h2z_a .gpu/h2z_b && cp -r ../shared/data/horse2zebra/{trainA,testA} .gpu/h2z_a/ &&
#   cp -r ../shared/data/horse2zebra/{trainB,testB} .gpu/h2z_b/
# Calls (each starting with the wheels' install, see docs/fast_path.md), in order:
#   load_a                        carry [.whl, .gpu/h2z_a]: copies trainA and testA to /tmp/h2z
#   start TRAIN_BUDGET_S WATCH_S [OVERRIDES...]
#                                 carry [.whl, .gpu/h2z_b]: copies trainB and testB, starts the training detached
#                                 (trainer.max_time=TRAIN_BUDGET_S, last.ckpt at every epoch end and every 2
#                                 minutes; retried without the step graph if it fails before its first
#                                 checkpoint), watches it until WATCH_S after the call began; packs the logs
#   finish WAIT_S                 waits for the training (WAIT_S at most), translates testA -> fake_B and
#                                 testB -> fake_A with last.ckpt and packs them (outputs.tar.part_*)
# Score here: cat outputs.tar.part_* | tar x -C RUN, then
#   python -m gan_translate.evaluate pred_dir=RUN/fake_B target_dir=../shared/data/horse2zebra/testB paired=false
set -u
data=/tmp/h2z
run=/tmp/h2z_run
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:$PWD
t_call=$(date +%s)

. "$(dirname "$0")/gpu_session_lib.sh"
pack() { pack_run "$run" "$run/status.txt" fake_B fake_A; }
watch() { watch_run "$run" "$run/status.txt" '^train rc=' "$1"; }  # watch UNTIL_EPOCH_S

case $1 in
  load_a)
    rm -rf "$data" "$run" && mkdir -p "$data" "$run"
    cp -r .gpu/h2z_a/trainA .gpu/h2z_a/testA "$data/" && du -sh "$data"/* ;;
  start)
    cp -r .gpu/h2z_b/trainB .gpu/h2z_b/testB "$data/" && du -sh "$data"/*
    budget=$2; watch_s=$3; shift 3
    setsid nohup bash "$0" train "$budget" "$@" < /dev/null > /dev/null 2>&1 &
    watch $(( t_call + watch_s ))
    pack ;;
  train)  # train BUDGET_S [OVERRIDES...], detached by start: trainer=gpu_fast, and once more without the step graph
          # if that run fails before its first checkpoint (a capture that fails on this machine)
    t_start=$(date +%s); budget=$2; shift 2
    train() {  # train NAME OVERRIDES...
      local name=$1; shift
      attempt "$name" "$run/status.txt" $(( t_start + budget )) "$run/train_$name.log" \
        python3 -m gan_translate.train experiment=horse2zebra_cyclegan "data.root=$data" trainer=gpu_fast \
        "paths.output_dir=$run" data.num_workers=8 +callbacks.last_checkpoint.every_n_epochs=1 \
        callbacks.interval_checkpoint.every_n_minutes=2 callbacks.periodic_checkpoint=null "$@"
    }
    train gpu_fast "$@" || { [ -f "$run/checkpoints/last.ckpt" ] || train no_step_graph model.step_graph=false "$@"; }
    echo "train rc=$? end=$(date +%s)" >> "$run/status.txt" ;;
  finish)
    watch $(( t_call + $2 ))
    for pair in "testA fake_B AtoB" "testB fake_A BtoA"; do
      set -- $pair
      python3 -m gan_translate.predict "ckpt_path=$run/checkpoints/last.ckpt" "input=$data/$1" \
        "output_dir=$run/$2" "direction=$3" >> "$run/predict.log" 2>&1
      echo "predict $3 rc=$?" >> "$run/status.txt"
    done
    pack ;;
  *) echo "usage: $0 load_a | start TRAIN_BUDGET_S WATCH_S | finish WAIT_S" >&2; exit 2 ;;
esac
