"""Paths, defaults and choice lists that every module needs: a leaf that imports nothing of ours, so any
module may import it without a cycle (the CLI reads it before torch is imported)."""
from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FEATURES_DIR = REPO_ROOT / "features"
RESULTS_DIR = REPO_ROOT / "validation"
PLOTS_DIR = RESULTS_DIR / "results_dump" / "plots"
EDITED_MODELS_DIR = RESULTS_DIR / "results_dump" / "edited_models_dump"

BUNDLED_MODEL = "smollm2_135M_instruct"
# The prefix of the models edit_weight bakes, as --model_prefix names them.
LOCAL_PREFIX = "local_"
DEFAULT_TRUTH_JUDGE = "allenai/truthfulqa-truth-judge-llama2-7B"
DEFAULT_INFO_JUDGE = "allenai/truthfulqa-info-judge-llama2-7B"

PROMPT_FORMATS = ("raw", "chat")
HEAD_METRICS = ("accuracy", "auc")
PROBE_BACKENDS = ("torch", "sklearn")
DTYPES = ("auto", "float32", "float16", "bfloat16")
# Generators of the folds' train/validation draws (iti.folds.all_fold_splits).
SPLIT_RNGS = ("default", "public")
SIGMA_QUESTIONS = ("all", "dev")
OWT_SAMPLES = 100  # documents for CE and KL (docs/method.md §6)
