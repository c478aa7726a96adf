#!/usr/bin/env bash
# validate_2fold over a grid of α × K, one process per GPU at a time (CUDA_VISIBLE_DEVICES), then
# the sweep's table and plot.
# Usage: bash validation/sweeping/sweep_parallel.sh MODEL_NAME [validate_2fold flags ...]
#   GPUS="0 1 2 3" ALPHAS="0 5 10 15 20" KS="16 32 48 64" bash validation/sweeping/sweep_parallel.sh llama2_chat_7B --use_center_of_mass
# GPUS defaults to every GPU nvidia-smi lists. α = 0 runs once, as the baseline (--num_heads 0);
# SEEDS="1 2 3" repeats the grid per seed. Logs: validation/sweeping/logs/{model}_a{α}_k{K}[_seed_{s}].log.
set -uo pipefail
cd "$(dirname "$0")/../.."
source validation/sweeping/sweep_grid.sh
shift
gpus=(${GPUS:-$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null)})
[ ${#gpus[@]} -gt 0 ] || { echo "no GPU found: set GPUS=\"0 1\" or use sweep_alpha_k.sh" >&2; exit 2; }

declare -A pid_of_gpu=()   # GPU -> pid of the run it holds
declare -A job_of_pid=()   # pid -> "NAME (see LOG)", to report failures

reap() {  # wait for the run of GPU $1 if it has finished; succeeds when the GPU is free
  local pid="${pid_of_gpu[$1]:-}"
  [ -z "$pid" ] && return 0
  kill -0 "$pid" 2>/dev/null && return 1
  wait "$pid" || failed+=("${job_of_pid[$pid]}")
  pid_of_gpu[$1]=""
}

for job in "${grid[@]}"; do
  read -r name cell <<<"$job"
  read -ra cell <<<"$cell"
  free=""
  while [ -z "$free" ]; do
    for gpu in "${gpus[@]}"; do
      if reap "$gpu"; then free="$gpu"; break; fi
    done
    [ -n "$free" ] || sleep 5
  done
  log="$log_dir/$name.log"
  echo "GPU $free: $name -> $log"
  CUDA_VISIBLE_DEVICES="$free" python validation/validate_2fold.py "${cell[@]}" --device 0 "$@" >"$log" 2>&1 &
  pid_of_gpu[$free]=$!
  job_of_pid[$!]="$name (see $log)"
done
for gpu in "${gpus[@]}"; do
  pid="${pid_of_gpu[$gpu]:-}"
  [ -n "$pid" ] && { wait "$pid" || failed+=("${job_of_pid[$pid]}"); }
done

finish "$@"
