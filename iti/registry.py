"""What is known by name: the models (the public workflow's names, then current families; values are hub ids)
and the built-in datasets. Standard library only, so `--check_args` can tell an unknown name before torch is
imported; `python -m iti.registry datasets [--probing | --validation]` lists dataset names for the shell scripts."""
from __future__ import annotations

import sys

from iti.constants import BUNDLED_MODEL, LOCAL_PREFIX
from iti.errors import UsageError

HF_NAMES: dict[str, str] = {
    "llama_7B": "huggyllama/llama-7b",
    "alpaca_7B": "circulus/alpaca-7b",
    "vicuna_7B": "AlekseyKorshuk/vicuna-7b",
    "llama2_chat_7B": "meta-llama/Llama-2-7b-chat-hf",
    "llama2_chat_13B": "meta-llama/Llama-2-13b-chat-hf",
    "llama2_chat_70B": "meta-llama/Llama-2-70b-chat-hf",
    "llama3_8B": "meta-llama/Meta-Llama-3-8B",
    "llama3_8B_instruct": "meta-llama/Meta-Llama-3-8B-Instruct",
    "llama3_70B": "meta-llama/Meta-Llama-3-70B",
    "llama3_70B_instruct": "meta-llama/Meta-Llama-3-70B-Instruct",
    "honest_llama_7B": "jujipotle/honest_llama_7B",
    "honest_llama2_chat_7B": "jujipotle/honest_llama2_chat_7B",
    "honest_llama2_chat_13B": "jujipotle/honest_llama2_chat_13B",
    "honest_llama2_chat_70B": "jujipotle/honest_llama2_chat_70B",
    "honest_llama3_8B_instruct": "jujipotle/honest_llama3_8B_instruct",
    "honest_llama3_70B_instruct": "jujipotle/honest_llama3_70B_instruct",
    "llama3.1_8B": "meta-llama/Llama-3.1-8B",
    "llama3.1_8B_instruct": "meta-llama/Llama-3.1-8B-Instruct",
    "llama3.1_70B_instruct": "meta-llama/Llama-3.1-70B-Instruct",
    "llama3.2_1B": "meta-llama/Llama-3.2-1B",
    "llama3.2_1B_instruct": "meta-llama/Llama-3.2-1B-Instruct",
    "llama3.2_3B": "meta-llama/Llama-3.2-3B",
    "llama3.2_3B_instruct": "meta-llama/Llama-3.2-3B-Instruct",
    "mistral_7B_instruct": "mistralai/Mistral-7B-Instruct-v0.3",
    "qwen2.5_0.5B_instruct": "Qwen/Qwen2.5-0.5B-Instruct",
    "qwen2.5_1.5B_instruct": "Qwen/Qwen2.5-1.5B-Instruct",
    "qwen2.5_3B_instruct": "Qwen/Qwen2.5-3B-Instruct",
    "qwen2.5_7B_instruct": "Qwen/Qwen2.5-7B-Instruct",
    "gemma2_2B_it": "google/gemma-2-2b-it",
    "gemma2_9B_it": "google/gemma-2-9b-it",
    BUNDLED_MODEL: "HuggingFaceTB/SmolLM2-135M-Instruct",
}


def known_model_names() -> list[str]:
    """Registry names, and `local_` + each base model's name for the models edit_weight bakes."""
    base = [name for name in HF_NAMES if not name.startswith("honest_")]
    return list(HF_NAMES) + [LOCAL_PREFIX + name for name in base]


def is_known_model(name: str) -> bool:
    return name in HF_NAMES or (name.startswith(LOCAL_PREFIX) and name[len(LOCAL_PREFIX):] in HF_NAMES)


def check_model_name(name: str) -> None:
    if not is_known_model(name):
        raise UsageError(f"unknown model name {name!r}; known names: {', '.join(known_model_names())}; "
                         "or give --model_path (hub id, local folder or .gguf file)")


# The datasets known by name (docs/method.md §2): TruthfulQA's prompt sets, whose rows can train probes on its folds
# (tqa_mc2: each question with each of its mc2 choices; tqa_gen: with each correct, then each incorrect answer;
# tqa_gen_end_q: tqa_gen followed by another question, which sets σ), and transfer sets on the hub (a false answer
# per question of Natural Questions and TriviaQA).
PROBING_DATASETS = ("tqa_mc2", "tqa_gen", "tqa_gen_end_q")
TRANSFER_SETS = {"nq_open": "OamPatel/iti_nq_open_val", "trivia_qa": "OamPatel/iti_trivia_qa_val"}
DATASET_NAMES = (*PROBING_DATASETS, *TRANSFER_SETS)
# What validate_2fold reads by default: the set that trains the probes, and the one that sets σ.
VALIDATION_DATASETS = ("tqa_mc2", "tqa_gen_end_q")


def check_dataset_name(name: str) -> None:
    if name not in DATASET_NAMES:
        raise UsageError(f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}")


if __name__ == "__main__":
    if sys.argv[1:2] != ["datasets"] or not set(sys.argv[2:]) <= {"--probing", "--validation"}:
        sys.exit("usage: python -m iti.registry datasets [--probing | --validation]")
    chosen = {"--probing": PROBING_DATASETS, "--validation": VALIDATION_DATASETS}
    print(" ".join(next((chosen[flag] for flag in sys.argv[2:]), DATASET_NAMES)))
