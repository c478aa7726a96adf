#!/usr/bin/env bash
# Activations for the usual models and both TruthfulQA prompt sets ITI needs.
# Usage: bash get_activations/get_activations.sh [model_name ...]  (extra flags via EXTRA="--device 0")
set -euo pipefail
cd "$(dirname "$0")/.."
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(llama_7B alpaca_7B vicuna_7B llama2_chat_7B llama2_chat_13B llama3_8B_instruct)
for model in "${models[@]}"; do
  for dataset in $(python -m iti.registry datasets --validation); do
    python get_activations/get_activations.py --model_name "$model" --dataset_name "$dataset" ${EXTRA:-}
  done
done
