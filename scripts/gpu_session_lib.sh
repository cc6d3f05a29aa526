# Sourced by the GPU session scripts (gpu_facades_session.sh, gpu_facades_recipe.sh, gpu_horse2zebra_session.sh).
# Needs $OUT (the folder the device tool brings back) for pack_run.

# attempt NAME STATUS_FILE DEADLINE_EPOCH_S LOG_FILE COMMAND...
# One training attempt inside the session's time budget. Runs COMMAND with "+trainer.max_time=HH:MM:SS" (the time
# left until the deadline) appended as the last Hydra override, output to LOG_FILE. STATUS_FILE gets
# "NAME start=... command=..." before and "NAME rc=... end=..." after, or "NAME skipped: Ns left" when less than a
# minute is left (a start alone takes that long). Returns COMMAND's rc.
attempt() {
  local name=$1 status=$2 deadline=$3 log_file=$4; shift 4
  local left=$(( deadline - $(date +%s) ))
  if [ "$left" -lt 60 ]; then echo "$name skipped: ${left}s left" >> "$status"; return 1; fi
  local limit; limit=$(printf '00:%02d:%02d:%02d' $((left / 3600)) $((left % 3600 / 60)) $((left % 60)))
  echo "$name start=$(date +%s.%N) command=$*" >> "$status"
  "$@" "+trainer.max_time=$limit" > "$log_file" 2>&1
  local rc=$?
  echo "$name rc=$rc end=$(date +%s.%N)" >> "$status"
  return $rc
}

# watch_run RUN_DIR STATUS_FILE DONE_PATTERN UNTIL_EPOCH_S
# Every 10 s until UNTIL_EPOCH_S or until STATUS_FILE has a line matching DONE_PATTERN: appends the time, GPU load,
# GPU memory and the start of the last logged CSV row to RUN_DIR/watch.log.
watch_run() {
  local run=$1 status=$2 done_pattern=$3 until=$4
  while [ "$(date +%s)" -lt "$until" ] && ! grep -q "$done_pattern" "$status" 2>/dev/null; do
    echo "$(date +%s) $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader | tr -d ' ')" \
         "| $(tail -n 1 "$run/csv/metrics.csv" 2>/dev/null | cut -c1-40)" >> "$run/watch.log"
    sleep 10
  done
}

# pack_run RUN_DIR STATUS_FILE OUTPUT_DIR...
# $OUT/logs.tgz: RUN_DIR without its checkpoints and OUTPUT_DIRs (relative to RUN_DIR); then, when the first
# OUTPUT_DIR exists, all of them as one tar in 15 MiB parts ($OUT/outputs.tar.part_*: the device tool brings back
# files of 16 MiB at most). Prints the status, the last watch lines and what $OUT holds.
pack_run() {
  local run=$1 status=$2; shift 2
  local exclude=(--exclude=checkpoints) dir
  for dir in "$@"; do exclude+=("--exclude=$dir"); done
  (cd "$run" && tar czf "$OUT/logs.tgz" "${exclude[@]}" . &&
   if [ -d "$1" ]; then tar cf - "$@" | split -b 15m - "$OUT/outputs.tar.part_"; fi)
  cat "$status" 2>/dev/null; tail -n 3 "$run/watch.log" 2>/dev/null; ls -la "$OUT"
}
