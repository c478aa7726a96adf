#!/usr/bin/env bash
# get_activations over models × datasets as one SLURM job array (one task per model and dataset),
# for the feature sets not extracted yet.
# Usage: bash get_activations/sweep_slurm.sh MODEL_NAME [MODEL_NAME ...] [get_activations flags ...]
#   DATASETS="tqa_mc2 tqa_gen_end_q" PARTITION=gpu GPUS_PER_TASK=1 bash get_activations/sweep_slurm.sh llama2_chat_7B
# DATASETS defaults to the two validate_2fold reads. The output names the job id to wait for:
#   AFTER=JOBID bash validation/sweeping/sweep_slurm.sh ...
# (validation/sweeping/sweep_slurm.sh alone also submits the extraction it needs, when AFTER is unset.)
# Resources and logs as in validation/sweeping/sweep_slurm.sh (logs: iti_activations_{job}_{task}.log).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" -m iti.sweep slurm_activations "$@"
