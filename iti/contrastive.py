"""Any contrastive dataset (docs/method.md §9): items of a question with correct and incorrect answers.

An item is a `GenerationQuestion` (question, category, best answer, correct and incorrect answers), the same record
TruthfulQA's generation order is made of, so every stage that takes TruthfulQA takes any such dataset. Files: JSONL
(one item per line, the §9 keys), CSV in TruthfulQA.csv's columns, a hub dataset (`hub:owner/name` or
`hub:owner/name:split`) with the JSONL keys. Records laid out as pairs (`question` + `answer_matching_behavior` /
`answer_not_matching_behavior`, or `prompt` + `positive` / `negative`) and nq_open / trivia_qa records (`question`,
`answer` list, `false_answer`) map to one correct and one incorrect answer. Items keep file order, questions unique.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from iti.items import GenerationQuestion, check_limit, missing_part, refuse_repeats
from iti.registry import TRANSFER_SETS
from iti.errors import UsageError
from iti.files import csv_rows, read_jsonl, read_text, why_not_a_file

HUB_PREFIX = "hub:"
FILE_SUFFIXES = (".jsonl", ".csv")
TQA_CSV_COLUMNS = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers")
UNKNOWN_CATEGORY = ""
SHAPE_OF_AN_ITEM = "every item needs a question, at least one correct and one incorrect answer (see docs/method.md §9)"
# The record layouts: the keys that mark one, then its keys of the question, the correct and the incorrect answers.
LAYOUTS = ((("correct_answers", "incorrect_answers"), "question", "correct_answers", "incorrect_answers"),
           (("answer_matching_behavior", "answer_not_matching_behavior"), "question", "answer_matching_behavior",
            "answer_not_matching_behavior"),
           (("positive", "negative"), "prompt", "positive", "negative"),
           (("false_answer",), "question", "answer", "false_answer"))


class DatasetError(ValueError):
    """A record that is not a §9 item; the loader adds where it was and raises UsageError."""

    def __init__(self, problem: str, remedy: str = SHAPE_OF_AN_ITEM):
        super().__init__(problem)
        self.remedy = remedy


@dataclass
class ContrastiveDataset:
    """Items in file order; `source` says where they came from (a path, `hub:...` or TruthfulQA's folder)."""

    name: str
    items: list[GenerationQuestion]
    source: str

    def __len__(self) -> int:
        return len(self.items)

    def first(self, limit: int | None) -> ContrastiveDataset:
        """The first `limit` items (all when None); folds and features of a `--limit` run use these."""
        n = check_limit(limit, len(self.items))
        return ContrastiveDataset(self.name, self.items[:n], self.source)


def _answers(value, key: str) -> list[str]:
    """A list of answers, or one answer string (pair-style records, nq_open's single answer)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) for a in value):
        raise DatasetError(f"`{key}` must be a string or a list of strings")
    return [a.strip() for a in value if a.strip()]


def item_from_record(record: dict) -> GenerationQuestion:
    """One §9 item from any of the accepted record layouts (see the module docstring)."""
    if not isinstance(record, dict):
        raise DatasetError("a record must be a JSON object")
    layout = next((layout for layout in LAYOUTS if any(key in record for key in layout[0])), None)
    if layout is None:
        raise DatasetError("no answers: expected `correct_answers` + `incorrect_answers`, "
                           "`answer_matching_behavior` + `answer_not_matching_behavior`, `positive` + `negative`, "
                           "or `answer` + `false_answer`")
    _, question_key, correct_key, incorrect_key = layout
    question = record.get(question_key)
    if not isinstance(question, str) or not question.strip():
        raise DatasetError(f"`{question_key}` is missing or empty")
    question = question.strip()
    correct = _answers(record.get(correct_key), correct_key)
    correct = correct[:1] if correct_key == "answer" else correct  # nq_open / trivia_qa: the first answer only
    incorrect = _answers(record.get(incorrect_key), incorrect_key)
    fault = missing_part(question, correct, incorrect)
    if fault:
        raise DatasetError(fault)
    best = record.get("best_answer")
    best = best.strip() if isinstance(best, str) and best.strip() else correct[0]
    if best not in correct:
        correct = [best, *correct]
    both = next((answer for answer in correct if answer in incorrect), None)
    if both is not None:
        # Its probe rows would be labelled 1 and 0, and MC would count it on both sides.
        raise DatasetError(f"question {question!r} lists the answer {both!r} as correct and as incorrect",
                           "keep each answer in one list")
    for kind, answers in (("correct", correct), ("incorrect", incorrect)):
        twice = next((answer for answer in answers if answers.count(answer) > 1), None)
        if twice is not None:
            # Its probe row would be read twice, and MC would count it twice.
            raise DatasetError(f"question {question!r} lists the {kind} answer {twice!r} twice", "list each answer once")
    category = record.get("category")
    return GenerationQuestion(question, category if isinstance(category, str) else UNKNOWN_CATEGORY,
                              best, correct, incorrect)


def dataset_from_records(name: str, records: Iterable[dict], source: str,
                         where: Callable[[int], str] = lambda i: f"record {i + 1}") -> ContrastiveDataset:
    """Items from records in order; any bad record or a repeated question is a UsageError naming it."""
    items: list[GenerationQuestion] = []
    for index, record in enumerate(records):
        try:
            items.append(item_from_record(record))
        except DatasetError as err:
            raise UsageError(f"{source}, {where(index)}: {err}; {err.remedy}") from None
    refuse_repeats([item.question for item in items], f"{source},", [where(i) for i in range(len(items))],
                   "merge their answers into one item")
    if not items:
        raise UsageError(f"{source} holds no items; give a JSONL or CSV file with at least one item per fold")
    return ContrastiveDataset(name, items, source)


def _tqa_csv_records(path: Path) -> list[tuple[int, dict]]:
    """(line, record) of each row: TruthfulQA.csv's columns (Category optional), answers joined with "; ",
    mapped to the JSONL keys."""
    rows = csv_rows(read_text(path, "--dataset_path"), path, TQA_CSV_COLUMNS, "write the items as JSONL")
    return [(line, {"question": row["Question"], "best_answer": row["Best Answer"],
                    "correct_answers": row["Correct Answers"].split(";"),
                    "incorrect_answers": row["Incorrect Answers"].split(";"),
                    "category": row.get("Category") or UNKNOWN_CATEGORY}) for line, row in rows]


def load_hub_records(hub_id: str, split: str):
    """The rows of a hub dataset split (tests replace this with a local stand-in)."""
    from datasets import load_dataset

    return load_dataset(hub_id, split=split)


def _hub_dataset(name: str, hub_id: str, split: str, source: str, failure: Callable[[str], str]) -> ContrastiveDataset:
    """The rows of a hub dataset split as items; `failure` of the error's type when they cannot be loaded."""
    try:
        rows = load_hub_records(hub_id, split)
    except Exception as err:
        raise UsageError(failure(type(err).__name__)) from err
    return dataset_from_records(name, (dict(row) for row in rows), source, lambda i: f"row {i}")


def load_dataset_file(path: str | Path, name: str) -> ContrastiveDataset:
    """A §9 dataset from a JSONL or CSV file, or from the hub with `hub:owner/name[:split]`."""
    text = str(path)
    if text.startswith(HUB_PREFIX):
        hub_id, _, split = text[len(HUB_PREFIX):].partition(":")
        split = split or "train"
        return _hub_dataset(name, hub_id, split, f"{HUB_PREFIX}{hub_id}:{split}",
                            lambda error: f"cannot load the hub dataset {hub_id} (split {split}): {error}; check the "
                            "id and split (hub:owner/name:split) or download it and give the JSONL file")
    file = Path(text).expanduser()
    if not file.is_file():
        raise UsageError(f"--dataset_path {text} {why_not_a_file(file)}; give a .jsonl or .csv file (or "
                         "hub:owner/name)")
    if file.suffix.lower() not in FILE_SUFFIXES:
        raise UsageError(f"--dataset_path {text} is neither JSONL nor CSV; give a .jsonl file (one item per line) or "
                         "a .csv with TruthfulQA.csv's columns")
    numbered = _tqa_csv_records(file) if file.suffix.lower() == ".csv" else read_jsonl(file, "--dataset_path")
    return dataset_from_records(name, [record for _, record in numbered], str(file),
                                lambda i: f"line {numbered[i][0]}")


def transfer_dataset(name: str) -> ContrastiveDataset:
    """nq_open / trivia_qa with a false answer per question (the paper's transfer sets)."""
    hub_id = TRANSFER_SETS[name]
    return _hub_dataset(name, hub_id, "validation", f"{HUB_PREFIX}{hub_id}",
                        lambda error: f"cannot load {name} from the hub ({hub_id}): {error}")
