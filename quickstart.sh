#!/usr/bin/env bash
# The main job on the embedded default: the bundled SmolLM2-135M-Instruct, the first 40 TruthfulQA
# questions, CPU: activations, then 2-fold ITI validation (MC, CE, KL). Installs first.
set -euo pipefail
cd "$(dirname "$0")"
bash setup.sh
PYTHON=${PYTHON:-python3}
MODEL=${MODEL:-smollm2_135M_instruct}
LIMIT=${LIMIT:-40}
"$PYTHON" get_activations/get_activations.py --model_name "$MODEL" --dataset_name tqa_mc2 --limit "$LIMIT" --device cpu
"$PYTHON" get_activations/get_activations.py --model_name "$MODEL" --dataset_name tqa_gen_end_q --limit "$LIMIT" --device cpu
# No hub here: CE and KL read real prose that ships with Python instead of OpenWebText.
"$PYTHON" validation/write_local_text.py --output features/python_reference_text.txt
"$PYTHON" validation/validate_2fold.py --model_name "$MODEL" --num_heads 8 --alpha 5 --use_center_of_mass \
  --limit "$LIMIT" --metrics mc ce kl --owt_path features/python_reference_text.txt --device cpu
