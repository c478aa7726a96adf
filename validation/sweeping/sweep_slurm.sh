#!/usr/bin/env bash
# validate_2fold over models × α × K × seeds as one SLURM job array (one task per run), then a small
# job that lists the runs still missing and writes each model's table (collect_sweep.py).
# Usage: bash validation/sweeping/sweep_slurm.sh MODEL_NAME [MODEL_NAME ...] [validate_2fold flags ...]
#   ALPHAS="0 5 10 15 20" KS="16 32 48 64" SEEDS="1 2 3" PARTITION=gpu GPUS_PER_TASK=1 MAX_PARALLEL=8 \
#     bash validation/sweeping/sweep_slurm.sh llama2_chat_7B --use_center_of_mass
# Every α × K pair is one task (α = 0 too, unlike sweep_alpha_k.sh: see the README). Runs whose summary
# is already complete are not submitted again, so re-running the command resubmits only what is missing.
# Resources (unset: the cluster's default): PARTITION, ACCOUNT, QOS, CPUS_PER_TASK, MEM, TIME,
# GPUS_PER_TASK, MAX_PARALLEL (tasks at once, sbatch --array=...%N), SBATCH_ARGS (any other options).
# Chaining: features the runs need and do not find are extracted first, by a get_activations array the
# validation array waits for (afterok): one command submits both. AFTER=JOBID instead waits for jobs
# submitted earlier (get_activations/sweep_slurm.sh prints its id) and extracts nothing itself.
# Logs: validation/sweeping/logs/iti_validate_{job}_{task}.log (LOG_DIR to change), one per task.
# Bad input (no sbatch, an empty grid, a flag validate_2fold refuses, a partition sbatch refuses):
# one line on stderr, exit 2, nothing submitted.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" -m iti.sweep slurm "$@"
