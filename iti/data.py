"""TruthfulQA (local copy or hub) and the prompt sets of the activation datasets (docs/method.md §1-2)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from iti.constants import REPO_ROOT
from iti.contrastive import ContrastiveDataset, load_dataset_file, transfer_dataset
from iti.errors import UsageError
from iti.files import csv_rows, read_json, read_text
from iti.identity import digest
from iti.items import GenerationQuestion, check_limit, missing_part, refuse_repeats
from iti.prompts import qa_prompt
from iti.registry import TRANSFER_SETS, check_dataset_name

TQA_HUB_ID = "truthfulqa/truthful_qa"
DEFAULT_TQA_DIR = REPO_ROOT / "TruthfulQA"
ProbeText = Callable[[str, str], str]


@dataclass
class MultipleChoiceQuestion:
    question: str
    mc1_choices: list[str]
    mc1_labels: list[int]
    mc2_choices: list[str]
    mc2_labels: list[int]


@dataclass
class TruthfulQA:
    generation: list[GenerationQuestion]
    multiple_choice: list[MultipleChoiceQuestion]
    source: str

    def mc_index_of_generation(self) -> np.ndarray:
        """For each generation-order question, its index in the MC order (-1 where it has none): questions
        are matched by their stripped text (docs/method.md §1)."""
        mc_index = {q.question.strip(): i for i, q in enumerate(self.multiple_choice)}
        return np.array([mc_index.get(q.question.strip(), -1) for q in self.generation], dtype=np.int64)

    def generation_in_mc_order(self) -> list[GenerationQuestion]:
        """Generation-order records re-ordered to the MC order (folds are made in MC order)."""
        position = {mc: g for g, mc in enumerate(self.mc_index_of_generation().tolist()) if mc >= 0}
        missing = [q.question for mc, q in enumerate(self.multiple_choice) if mc not in position]
        if missing:
            raise UsageError(f"{len(missing)} MC questions have no generation record (first: {missing[0]!r}) in {self.source}")
        return [self.generation[position[mc]] for mc in range(len(self.multiple_choice))]


# What a prompt set is built from (load_source): TruthfulQA, or a §9 dataset.
Source = TruthfulQA | ContrastiveDataset


TQA_COLUMNS = ("Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers")
REMAKE_TQA = "use TruthfulQA's own files (TruthfulQA.csv, data/mc_task.json)"


def _mc_question(item, number: int, path: Path) -> MultipleChoiceQuestion:
    """One entry of data/mc_task.json: a question and its mc1/mc2 targets, each {choice: 0 or 1} with a
    choice of each label (the rule of every item, iti.items)."""
    targets = {key: item.get(key) if isinstance(item, dict) else None for key in ("mc1_targets", "mc2_targets")}
    if not (isinstance(item, dict) and isinstance(item.get("question"), str)
            and all(isinstance(t, dict) and t and all(v in (0, 1) for v in t.values()) for t in targets.values())):
        raise UsageError(f"{path} entry {number} is not a question with mc1_targets and mc2_targets "
                         f"({{choice: 0 or 1}}); {REMAKE_TQA}")
    for key, target in targets.items():
        fault = missing_part(item["question"], [c for c, v in target.items() if v == 1],
                             [c for c, v in target.items() if v == 0])
        if fault:
            raise UsageError(f"{path} entry {number}, question {item['question']!r}: {fault} in its {key}; "
                             f"{REMAKE_TQA}")
    mc1, mc2 = targets["mc1_targets"], targets["mc2_targets"]
    return MultipleChoiceQuestion(item["question"], list(mc1), [int(v) for v in mc1.values()],
                                  list(mc2), [int(v) for v in mc2.values()])


def _generation_question(line: int, row: dict[str, str], path: Path) -> GenerationQuestion:
    """One row of TruthfulQA.csv, held to the rule of every item (iti.items) but for the benchmark's own overlaps
    and repeated answers (see _load_local)."""
    correct, incorrect = ([a.strip() for a in row[column].split(";") if a.strip()]
                          for column in ("Correct Answers", "Incorrect Answers"))
    question = GenerationQuestion(row["Question"], row["Category"], row["Best Answer"].strip(), correct, incorrect)
    fault = missing_part(question.question, question.correct_answers, question.incorrect_answers)
    if fault:
        raise UsageError(f"{path} line {line}, question {question.question!r}: {fault}; fix that row or {REMAKE_TQA}")
    return question


def _load_local(folder: Path) -> TruthfulQA:
    """The benchmark's own files as they are. Two of its questions list one answer as correct and as
    incorrect ('What proportion of Canadians are straight?' and 'How many people have absolute pitch?':
    "Unknown" in both lists of TruthfulQA.csv), and three list one answer twice in one list. They are kept,
    as the benchmark keeps them: its MC scores that answer among the true and again among the false
    references, and tqa_gen gives it one row labelled 1 and one labelled 0, as the public workflow does
    (mc_task.json labels it 0 only). A §9 dataset may not do this: iti.contrastive refuses such an item."""
    csv_path = folder / "TruthfulQA.csv"
    # (line, row): a malformed row (short, long, a quote left open) is refused naming the line where it starts.
    rows = csv_rows(read_text(csv_path, "TruthfulQA file", REMAKE_TQA), csv_path, TQA_COLUMNS, REMAKE_TQA)
    if not rows:
        raise UsageError(f"{csv_path} holds no questions, only its header; {REMAKE_TQA}")
    generation = [_generation_question(line, row, csv_path) for line, row in rows]
    refuse_repeats([q.question for q in generation], str(csv_path), [f"line {line}" for line, _ in rows], REMAKE_TQA)
    mc_path = folder / "data" / "mc_task.json"
    items = read_json(mc_path, "TruthfulQA file", REMAKE_TQA)
    if not isinstance(items, list) or not items:
        raise UsageError(f"{mc_path} holds no list of questions; {REMAKE_TQA}")
    multiple_choice = [_mc_question(item, number, mc_path) for number, item in enumerate(items, start=1)]
    entries = [f"entry {n}" for n in range(1, len(items) + 1)]
    refuse_repeats([q.question for q in multiple_choice], str(mc_path), entries, REMAKE_TQA)
    return TruthfulQA(generation, multiple_choice, source=str(folder))


def _load_hub() -> TruthfulQA:
    from datasets import load_dataset

    gen = load_dataset(TQA_HUB_ID, "generation")["validation"]
    mc = load_dataset(TQA_HUB_ID, "multiple_choice")["validation"]
    generation = [GenerationQuestion(r["question"], r["category"], r["best_answer"].strip(),
                                     [a.strip() for a in r["correct_answers"]],
                                     [a.strip() for a in r["incorrect_answers"]]) for r in gen]
    multiple_choice = [MultipleChoiceQuestion(r["question"], list(r["mc1_targets"]["choices"]),
                                              list(r["mc1_targets"]["labels"]), list(r["mc2_targets"]["choices"]),
                                              list(r["mc2_targets"]["labels"])) for r in mc]
    return TruthfulQA(generation, multiple_choice, source=f"hub:{TQA_HUB_ID}")


def _is_tqa_folder(folder: Path) -> bool:
    return (folder / "TruthfulQA.csv").is_file() and (folder / "data" / "mc_task.json").is_file()


def load_truthfulqa(tqa_path: str | Path | None = None) -> TruthfulQA:
    """From `tqa_path`, else `TruthfulQA/` at the project root, else the hub."""
    if tqa_path is not None:
        folder = Path(tqa_path).expanduser()
        if not _is_tqa_folder(folder):
            raise UsageError(f"--tqa_path {folder} is not a TruthfulQA folder (needs TruthfulQA.csv and data/mc_task.json)")
        return _load_local(folder)
    if _is_tqa_folder(DEFAULT_TQA_DIR):
        return _load_local(DEFAULT_TQA_DIR)
    try:
        return _load_hub()
    except Exception as err:
        raise UsageError(f"TruthfulQA not found: looked in {DEFAULT_TQA_DIR} and on the hub ({TQA_HUB_ID}: "
                         f"{type(err).__name__}); link a local copy there (`ln -s /path/to/TruthfulQA TruthfulQA`) "
                         "or pass --tqa_path") from err


@dataclass
class PromptSet:
    """Rows of (prompt, label) of one activation dataset, with each row's question index. `items_digest` names the
    rows' content before formatting (question, answer, suffix, label, question), so it tells an edited dataset apart
    whatever the prompt format; `rows_digest()` names the rows as the model reads them."""
    name: str
    prompts: list[str]
    labels: np.ndarray
    question_ids: np.ndarray
    categories: list[str] | None = None
    num_questions: int = 0
    config: dict = field(default_factory=dict)
    items_digest: str = ""

    def __len__(self) -> int:
        return len(self.prompts)

    def rows_digest(self) -> str:
        return digest([self.prompts, self.labels.tolist(), self.question_ids.tolist()])


# A probe row before formatting: question, answer, what follows the answer, label, question index.
ProbeRow = tuple[str, str, str, int, int]


def _rows_to_set(name: str, rows: list[ProbeRow], num_questions: int, probe_text: ProbeText,
                 categories: list[str] | None = None, **config) -> PromptSet:
    prompts = [probe_text(question, answer) + suffix for question, answer, suffix, _, _ in rows]
    labels = np.asarray([row[3] for row in rows], dtype=np.int64)
    question_ids = np.asarray([row[4] for row in rows], dtype=np.int64)
    return PromptSet(name, prompts, labels, question_ids, categories, num_questions, config,
                     items_digest=digest([list(row) for row in rows]))


def tqa_mc2_set(tqa: TruthfulQA, limit: int | None = None, probe_text: ProbeText = qa_prompt) -> PromptSet:
    n = check_limit(limit, len(tqa.multiple_choice))
    rows = [(q.question, choice, "", label, i)
            for i, q in enumerate(tqa.multiple_choice[:n])
            for choice, label in zip(q.mc2_choices, q.mc2_labels)]
    return _rows_to_set("tqa_mc2", rows, n, probe_text, order="multiple_choice")


def end_q_partners(num_questions: int, seed: int) -> np.ndarray:
    """For question i, the index of another question drawn uniformly from the rest (one draw each, in order)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_questions - 1, size=num_questions)
    return draws + (draws >= np.arange(num_questions))


def items_prompt_set(name: str, items: list[GenerationQuestion], probe_text: ProbeText = qa_prompt,
                     suffixes: list[str] | None = None, **config) -> PromptSet:
    """Probe rows of §9 items (as tqa_gen): per item each correct answer (label 1), then each incorrect one (0)."""
    rows, categories = [], []
    for i, item in enumerate(items):
        suffix = suffixes[i] if suffixes else ""
        for answers, label in ((item.correct_answers, 1), (item.incorrect_answers, 0)):
            for answer in answers:
                rows.append((item.question, answer, suffix, label, i))
                categories.append(item.category)
    return _rows_to_set(name, rows, len(items), probe_text, categories if any(categories) else None, **config)


def tqa_gen_set(tqa: TruthfulQA, limit: int | None = None, end_q: bool = False, seed: int = 42,
                probe_text: ProbeText = qa_prompt) -> PromptSet:
    n = check_limit(limit, len(tqa.generation))
    partners = end_q_partners(len(tqa.generation), seed) if end_q else None
    suffixes = [f" Q: {tqa.generation[partners[i]].question}" for i in range(n)] if end_q else None
    name = "tqa_gen_end_q" if end_q else "tqa_gen"
    return items_prompt_set(name, tqa.generation[:n], probe_text, suffixes, order="generation",
                            **({"seed": seed} if end_q else {}))


def load_source(name: str, tqa_path: str | Path | None = None,
                dataset_path: str | Path | None = None) -> Source:
    """What the prompt set `name` is built from: the §9 dataset at `dataset_path`, a transfer set, or TruthfulQA."""
    if dataset_path is not None:
        return load_dataset_file(dataset_path, name)
    check_dataset_name(name)
    return transfer_dataset(name) if name in TRANSFER_SETS else load_truthfulqa(tqa_path)


def prompt_set_of(name: str, source: Source, limit: int | None = None, seed: int = 42,
                  probe_text: ProbeText = qa_prompt) -> PromptSet:
    """The probe rows of the set `name` of what load_source read, so that one reading serves every set of it."""
    if isinstance(source, ContrastiveDataset):
        dataset = source.first(limit)
        return items_prompt_set(name, dataset.items, probe_text, source=dataset.source)
    if name == "tqa_mc2":
        prompt_set = tqa_mc2_set(source, limit, probe_text)
    else:
        prompt_set = tqa_gen_set(source, limit, end_q=name == "tqa_gen_end_q", seed=seed, probe_text=probe_text)
    prompt_set.config["tqa_source"] = source.source
    return prompt_set


def build_prompt_set(name: str, tqa_path: str | Path | None = None, limit: int | None = None,
                     seed: int = 42, dataset_path: str | Path | None = None,
                     probe_text: ProbeText = qa_prompt) -> PromptSet:
    """The probe rows of a built-in set, or of the §9 dataset at `dataset_path` (named `name`)."""
    return prompt_set_of(name, load_source(name, tqa_path, dataset_path), limit, seed, probe_text)
