"""An item of a contrastive dataset (docs/method.md §9): the record TruthfulQA's generation order is made of,
and every other dataset too."""
from __future__ import annotations

from dataclasses import dataclass

from iti.errors import UsageError


@dataclass
class GenerationQuestion:
    question: str
    category: str
    best_answer: str
    correct_answers: list[str]
    incorrect_answers: list[str]


def check_limit(limit: int | None, num_questions: int) -> int:
    """How many of a dataset's first questions a run takes: all, or a `--limit` within range."""
    if num_questions == 0:
        raise UsageError("the dataset holds no questions; check the file (a header alone is not a dataset)")
    if limit is None:
        return num_questions
    if not 1 <= limit <= num_questions:
        raise UsageError(f"--limit {limit} is out of range: this set has {num_questions} questions (use 1..{num_questions})")
    return limit
