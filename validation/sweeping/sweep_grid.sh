# Sourced by sweep_alpha_k.sh and sweep_parallel.sh from the repo root, with their arguments:
# sets model, log_dir, grid (one "alpha K" per run, from ALPHAS and KS) and failed; defines finish.
[ $# -ge 1 ] || { echo "usage: $0 MODEL_NAME [validate_2fold flags ...]" >&2; exit 2; }
model="$1"
log_dir="validation/sweeping/logs"
mkdir -p "$log_dir"
grid=()
for alpha in ${ALPHAS:-0 5 10 15 20}; do
  # α = 0 is the unshifted model whatever K is, so it runs once, as the baseline (--num_heads 0).
  if awk "BEGIN { exit !($alpha == 0) }"; then
    grid+=("$alpha 0")
    continue
  fi
  for k in ${KS:-16 32 48 64}; do grid+=("$alpha $k"); done
done
failed=()

finish() {  # finish [validate_2fold flags ...]: the sweep's table and plot; exit 1 if any run failed
  # collect_sweep reads the flags that name runs (seed, limit, method, results_dir) and ignores the rest.
  python validation/sweeping/collect_sweep.py --model_name "$model" "$@" || failed+=("collect_sweep")
  if [ ${#failed[@]} -gt 0 ]; then
    printf 'failed: %s\n' "${failed[@]}" >&2
    exit 1
  fi
}
