#!/usr/bin/env bash
# validate_2fold over a grid of α × K on this machine, then the sweep's table and plot. The grid runs as
# one-process sweeps (validate_2fold --sweep): per seed, the model is loaded, the features read and each
# fold's probes trained once for all its cells, and each cell is written as the run of that α and K alone
# (its summary, files and resume: a rerun keeps the cells and folds already done). docs/sweeps.md.
# Usage: bash validation/sweeping/sweep_alpha_k.sh MODEL_NAME [validate_2fold flags ...]
#   ALPHAS="0 5 10 15 20" KS="16 32 48 64" bash validation/sweeping/sweep_alpha_k.sh llama2_chat_7B --use_center_of_mass
# α = 0 runs once, as the baseline (--num_heads 0), in a process of its own (BASELINE_ONCE=0: every α × K in
# one); SEEDS="1 2 3" repeats the grid per seed, a process each.
# Logs: validation/sweeping/logs/{model}_a{α values}_k{K values}[_seed_{s}].log, one per process.
# A failed process is reported and the sweep goes on.
set -uo pipefail
cd "$(dirname "$0")/../.."
grid_command=sweeps
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
  grep '^alpha: ' "$log" || tail -n 1 "$log"  # each cell's summary line, or what stopped the process
done
finish "$@"
