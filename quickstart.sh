#!/usr/bin/env bash
# The main job on the embedded default: the bundled SmolLM2-135M-Instruct, the first 40 TruthfulQA
# questions, CPU. Installs first; a few minutes end to end.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
PYTHON=${PYTHON:-python3}
MODEL=${MODEL:-smollm2_135M_instruct}
LIMIT=${LIMIT:-40}
"$PYTHON" get_activations/get_activations.py --model_name "$MODEL" --dataset_name tqa_mc2 --limit "$LIMIT" --device cpu
"$PYTHON" get_activations/get_activations.py --model_name "$MODEL" --dataset_name tqa_gen_end_q --limit "$LIMIT" --device cpu
