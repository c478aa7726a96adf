#!/usr/bin/env bash
# validate_2fold over a grid of α × K, one run after another, then the sweep's table and plot.
# Usage: bash validation/sweeping/sweep_alpha_k.sh MODEL_NAME [validate_2fold flags ...]
#   ALPHAS="0 5 10 15 20" KS="16 32 48 64" bash validation/sweeping/sweep_alpha_k.sh llama2_chat_7B --use_center_of_mass
# α = 0 runs once, as the baseline (--num_heads 0). Logs: validation/sweeping/logs/{model}_a{α}_k{K}.log.
# A failed run is reported and the sweep goes on.
set -uo pipefail
cd "$(dirname "$0")/../.."
source validation/sweeping/sweep_grid.sh
shift

for job in "${grid[@]}"; do
  read -r alpha k <<<"$job"
  log="$log_dir/${model}_a${alpha}_k${k}.log"
  echo "alpha $alpha, K $k -> $log"
  if ! python validation/validate_2fold.py --model_name "$model" --alpha "$alpha" --num_heads "$k" "$@" >"$log" 2>&1; then
    failed+=("alpha $alpha K $k (see $log)")
  fi
  tail -n 1 "$log"
done
finish "$@"
