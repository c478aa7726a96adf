#!/usr/bin/env bash
# Every dataset (TruthfulQA sets and the nq_open / trivia_qa transfer sets) for the given models.
# Usage: bash get_activations/sweep_activations.sh model_name [model_name ...]  (flags via EXTRA=...)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 model_name [model_name ...]" >&2; exit 2; }
for model in "$@"; do
  for dataset in $(python -m iti.registry datasets); do
    python get_activations/get_activations.py --model_name "$model" --dataset_name "$dataset" ${EXTRA:-}
  done
done
