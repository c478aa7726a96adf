#!/usr/bin/env bash
# validate_2fold over a grid of α × K, one run after another, then the sweep's table and plot.
# Usage: bash validation/sweeping/sweep_alpha_k.sh MODEL_NAME [validate_2fold flags ...]
#   ALPHAS="0 5 10 15 20" KS="16 32 48 64" bash validation/sweeping/sweep_alpha_k.sh llama2_chat_7B --use_center_of_mass
# α = 0 is the unshifted model whatever K is, so it runs once, as the baseline (--num_heads 0).
# Logs: validation/sweeping/logs/{model}_a{α}_k{K}.log. A failed run is reported and the sweep goes on.
set -uo pipefail
cd "$(dirname "$0")/../.."
[ $# -ge 1 ] || { echo "usage: $0 MODEL_NAME [validate_2fold flags ...]" >&2; exit 2; }
model="$1"; shift
alphas=(${ALPHAS:-0 5 10 15 20})
ks=(${KS:-16 32 48 64})
log_dir="validation/sweeping/logs"
mkdir -p "$log_dir"

failed=()
run() {  # run ALPHA K [validate_2fold flags ...]
  local alpha="$1" k="$2"; shift 2
  local log="$log_dir/${model}_a${alpha}_k${k}.log"
  echo "alpha $alpha, K $k -> $log"
  if ! python validation/validate_2fold.py --model_name "$model" --alpha "$alpha" --num_heads "$k" "$@" >"$log" 2>&1; then
    failed+=("alpha $alpha K $k (see $log)")
  fi
  tail -n 1 "$log"
}

for alpha in "${alphas[@]}"; do
  if awk "BEGIN { exit !($alpha == 0) }"; then
    run "$alpha" 0 "$@"
    continue
  fi
  for k in "${ks[@]}"; do
    run "$alpha" "$k" "$@"
  done
done

# collect_sweep reads the flags that name runs (seed, limit, method, results_dir) and ignores the rest.
python validation/sweeping/collect_sweep.py --model_name "$model" "$@" || failed+=("collect_sweep")
if [ ${#failed[@]} -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
