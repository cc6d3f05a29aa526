# Sourced by the GPU session scripts (gpu_facades_recipe.sh, gpu_horse2zebra_session.sh): one training attempt
# inside the session's time budget.
#   attempt NAME STATUS_FILE DEADLINE_EPOCH_S LOG_FILE COMMAND...
# Runs COMMAND with "+trainer.max_time=HH:MM:SS" (the time left until the deadline) appended as the last Hydra
# override, output to LOG_FILE. STATUS_FILE gets "NAME start=... command=..." before and "NAME rc=... end=..." after,
# or "NAME skipped: Ns left" when less than a minute is left (a start alone takes that long). Returns COMMAND's rc.
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
