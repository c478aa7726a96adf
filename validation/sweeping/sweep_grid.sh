# Sourced by sweep_alpha_k.sh and sweep_parallel.sh from the repo root, with their arguments:
# sets model, log_dir (LOG_DIR, default validation/sweeping/logs), grid and failed; defines finish.
# grid holds one "name flags" line per run, e.g. "llama2_chat_7B_a5_k16 --model_name llama2_chat_7B
# --alpha 5 --num_heads 16", from ALPHAS, KS and SEEDS; the grid itself is iti/sweep.py's (the SLURM
# array uses it too). α = 0 is the unshifted model whatever K is, so it runs once, with K = 0.
# With grid_command=sweeps set before sourcing, grid holds one line per one-process sweep instead
# (validate_2fold --sweep over the product of its α and K values; python -m iti.sweep sweeps).
[ $# -ge 1 ] || { echo "usage: $0 MODEL_NAME [validate_2fold flags ...]" >&2; exit 2; }
model="$1"
log_dir="${LOG_DIR:-validation/sweeping/logs}"
mkdir -p "$log_dir"
cells=$(python -m iti.sweep "${grid_command:-cells}" "$model") || exit 2
mapfile -t grid <<<"$cells"
failed=()

finish() {  # finish [validate_2fold flags ...]: the sweep's table and plot; exit 1 if any run failed
  # collect_sweep reads the flags that name runs (seed, limit, method, dataset_path, results_dir) and ignores the rest.
  python validation/sweeping/collect_sweep.py --model_name "$model" "$@" || failed+=("collect_sweep")
  if [ ${#failed[@]} -gt 0 ]; then
    printf 'failed: %s\n' "${failed[@]}" >&2
    exit 1
  fi
}
