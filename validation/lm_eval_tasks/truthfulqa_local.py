"""TruthfulQA for lm-evaluation-harness from the project's copy (TruthfulQA/, or --metadata '{"tqa_path": ...}'),
read by iti.data as every other script reads it, so no converted file is needed and the tasks run offline.

Two answer sets: `truthfulqa_local_*` are lm-eval's truthfulqa_mc1/mc2/gen on the benchmark's own MC targets
(data/mc_task.json) and generation fields, the numbers the harness reports; `truthfulqa_refs_*` score the answers
validate_2fold scores (the generation-order fields in MC order, with periods: docs/method.md §6), the best answer
first for MC1, so that lm-eval's MC1/MC2 of a question can be put beside ours. Prompts are lm-eval's own, rendered
from its truthfulqa task's YAML (the primer without an instruction, `--instruction_prompt none` here); the metric
code is its own too (the YAMLs name lm_eval.tasks.truthfulqa.utils).
"""
from __future__ import annotations

import sys
from functools import cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from iti.data import load_truthfulqa  # noqa: E402
from iti.mc import mc_references  # noqa: E402


def _targets(choices: list[str], labels: list[int]) -> dict:
    return {"choices": list(choices), "labels": [int(label) for label in labels]}


def _split(rows: list[dict]):
    import datasets

    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})


def multiple_choice(tqa_path: str | None = None, **_task_metadata):
    """The benchmark's MC targets, as the hub's `multiple_choice` config holds them."""
    return _split([{"question": q.question, "mc1_targets": _targets(q.mc1_choices, q.mc1_labels),
                    "mc2_targets": _targets(q.mc2_choices, q.mc2_labels)}
                   for q in load_truthfulqa(tqa_path).multiple_choice])


def generation(tqa_path: str | None = None, **_task_metadata):
    """The generation-order fields, as the hub's `generation` config holds them (lm-eval adds the periods)."""
    return _split([{"question": q.question, "category": q.category, "best_answer": q.best_answer,
                    "correct_answers": q.correct_answers, "incorrect_answers": q.incorrect_answers}
                   for q in load_truthfulqa(tqa_path).generation])


def validate_references(tqa_path: str | None = None, **_task_metadata):
    """validate_2fold's MC answers in MC order: mc1 = the best answer then the false ones, mc2 = true then false."""
    rows = []
    for record in load_truthfulqa(tqa_path).generation_in_mc_order():
        ref = mc_references(record)
        rows.append({"question": record.question,
                     "mc1_targets": _targets([ref.best, *ref.false], [1] + [0] * len(ref.false)),
                     "mc2_targets": _targets(ref.true + ref.false, [1] * len(ref.true) + [0] * len(ref.false))})
    return _split(rows)


@cache
def _lm_eval_template(task_file: str) -> str:
    """doc_to_text of one of lm-eval's own truthfulqa YAMLs."""
    import lm_eval.tasks
    from lm_eval.tasks._yaml_loader import load_yaml

    folder = Path(lm_eval.tasks.__file__).parent / "truthfulqa"
    return load_yaml(folder / task_file, resolve_func=False, recursive=False)["doc_to_text"]


def mc_prompt(doc: dict) -> str:
    from lm_eval.utils import apply_template

    return apply_template(_lm_eval_template("truthfulqa_mc1.yaml"), doc)


def gen_prompt(doc: dict) -> str:
    from lm_eval.utils import apply_template

    return apply_template(_lm_eval_template("truthfulqa_gen.yaml"), doc)
