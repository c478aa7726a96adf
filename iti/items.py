"""An item of a contrastive dataset (docs/method.md §9): the record TruthfulQA's generation order is made of,
and every other dataset too; and the rule every loader applies to its items."""
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


def missing_part(question: str, correct: list, incorrect: list) -> str | None:
    """What an item lacks to be probed and scored (a question, a correct and an incorrect answer), or None:
    without both kinds of answer it gives no contrast and MC has nothing to compare."""
    if not question.strip():
        return "no question"
    if not correct:
        return "no correct answer"
    if not incorrect:
        return "no incorrect answer"
    return None


def refuse_repeats(questions: list[str], source: str, places: list[str], remedy: str) -> None:
    """UsageError at the first question (stripped) that repeats an earlier one, naming both `places`: two items
    of one question would be split apart into different folds."""
    seen: dict[str, int] = {}
    for index, question in enumerate(questions):
        earlier = seen.setdefault(question.strip(), index)
        if earlier != index:
            raise UsageError(f"{source} {places[index]}, question {question!r}: repeats {places[earlier]}; "
                             f"questions must be unique: {remedy}")


def check_limit(limit: int | None, num_questions: int) -> int:
    """How many of a dataset's first questions a run takes: all, or a `--limit` within range."""
    if num_questions == 0:
        raise UsageError("the dataset holds no questions; check the file (a header alone is not a dataset)")
    if limit is None:
        return num_questions
    if not 1 <= limit <= num_questions:
        raise UsageError(f"--limit {limit} is out of range: this set has {num_questions} questions (use 1..{num_questions})")
    return limit
