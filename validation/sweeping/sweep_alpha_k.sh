#!/usr/bin/env bash
# validate_2fold over a grid of α × K, one run after another, then the sweep's table and plot.
# Usage: bash validation/sweeping/sweep_alpha_k.sh MODEL_NAME [validate_2fold flags ...]
#   ALPHAS="0 5 10 15 20" KS="16 32 48 64" bash validation/sweeping/sweep_alpha_k.sh llama2_chat_7B --use_center_of_mass
# α = 0 runs once, as the baseline (--num_heads 0); SEEDS="1 2 3" repeats the grid per seed.
# Logs: validation/sweeping/logs/{model}_a{α}_k{K}[_seed_{s}].log.
# A failed run is reported and the sweep goes on.
set -uo pipefail
cd "$(dirname "$0")/../.."
source validation/sweeping/sweep_grid.sh
shift

for job in "${grid[@]}"; do
  read -r name cell <<<"$job"
  read -ra cell <<<"$cell"
  log="$log_dir/$name.log"
  echo "$name -> $log"
  if ! python validation/validate_2fold.py "${cell[@]}" "$@" >"$log" 2>&1; then
    failed+=("$name (see $log)")
  fi
  tail -n 1 "$log"
done
finish "$@"
