"""Folds and splits of a run's questions (docs/method.md §4): contiguous test folds, the seeded training and
validation draw of each fold's development questions, and the rows that go with a set of questions.
NumPy only: the option checks ask how many questions a split needs before torch is imported."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from iti.constants import SPLIT_RNGS
from iti.errors import UsageError

# The public script's CE and KL evaluations each keep this many OpenWebText samples and draw
# them all in random order from its global stream, between one fold's split and the next.
PUBLIC_OWT_SAMPLES = 100


def all_fold_splits(num_questions: int, num_fold: int, val_ratio: float, seed: int,
                    split_rng: str = "default") -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(train, val, test) question indices for every fold, from one generator seeded once: fold i's draw depends
    on the draws of folds before it, as in the public workflow, so a single fold is always taken from this list.

    `public`: the splits of the public validate_2fold.py, which seeds NumPy's global legacy generator once
    (np.random.seed) and draws from it, per fold: the training questions (a draw without replacement, i.e. the first
    entries of a permutation of the development questions; kept in drawn order, as its split files list them), then,
    evaluating the fold, twice (CE, then KL): one uniform number (the `datasets` shuffle without a seed takes one to
    make its own seed) and a permutation of the 100 OpenWebText samples. The public script always measures CE and
    KL, so these draws happen whatever this run measures."""
    if num_fold < 2:
        raise UsageError(f"num_fold must be at least 2 (got {num_fold}); use the default 2")
    if num_questions < num_fold:
        raise UsageError(f"{num_questions} questions cannot fill {num_fold} folds; use fewer folds or more questions")
    if not 0 < val_ratio < 1:
        raise UsageError(f"val_ratio must lie strictly between 0 and 1 (got {val_ratio}); the default is 0.2")
    fewest = num_questions - math.ceil(num_questions / num_fold)  # the fewest questions any fold develops on
    if int(fewest * (1 - val_ratio)) < 1:
        raise UsageError(f"{num_questions} questions in {num_fold} folds leave a fold {fewest} development "
                         f"question{'' if fewest == 1 else 's'}, none to train on at --val_ratio {val_ratio}: "
                         f"that takes at least {fewest_questions(num_fold, val_ratio)} questions; use more "
                         f"questions{_other_ratio(fewest)}")
    if split_rng not in SPLIT_RNGS:
        raise UsageError(f"unknown split generator {split_rng!r}; use one of {', '.join(SPLIT_RNGS)}")
    parts = np.array_split(np.arange(num_questions), num_fold)
    public = split_rng == "public"
    rng = np.random.RandomState(seed) if public else np.random.default_rng(seed)
    splits = []
    for fold in range(num_fold):
        development = np.concatenate([part for j, part in enumerate(parts) if j != fold])
        if not public:
            splits.append((*train_val_split(development, val_ratio, rng), parts[fold].copy()))
            continue
        train = development[rng.permutation(len(development))[:num_train(len(development), val_ratio)]]
        splits.append((train, development[~np.isin(development, train)], parts[fold].copy()))
        for _ in ("ce", "kl"):
            rng.random_sample()
            rng.permutation(PUBLIC_OWT_SAMPLES)
    return splits


def train_val_split(questions: np.ndarray, val_ratio: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training questions drawn without replacement (a share 1 - val_ratio, rounded down); the rest validate."""
    train = np.sort(rng.choice(questions, size=num_train(len(questions), val_ratio), replace=False))
    return train, np.setdiff1d(questions, train)


def num_train(num_questions: int, val_ratio: float) -> int:
    """The training share of `num_questions` questions, leaving at least one to validate."""
    num_train = int(num_questions * (1 - val_ratio))
    if num_train == num_questions:
        raise UsageError(f"--val_ratio {val_ratio} holds out none of {num_questions} questions; use a larger one, "
                         "e.g. 0.2")
    if num_train == 0:
        raise UsageError(f"--val_ratio {val_ratio} leaves none of {num_questions} questions to train on: that takes at "
                         f"least {_fewest_to_split(val_ratio)}; use more questions{_other_ratio(num_questions)}")
    return num_train


def held_for_selection(num_development: int, select_ratio: float, val_ratio: float) -> int:
    """How many of a fold's `num_development` questions are set aside to score the settings (iti.selection); a
    UsageError when too few are left on either side, or the rest do not split into training and validation."""
    held = int(round(num_development * select_ratio))
    if held == 0 or num_development - held < 2:
        raise UsageError(f"--select_ratio {select_ratio} sets aside {held} of the fold's {num_development} development "
                         "questions to score the settings; use more questions or another --select_ratio")
    num_train(num_development - held, val_ratio)
    return held


def fewest_questions(num_fold: int, val_ratio: float) -> int:
    """The fewest questions that `num_fold` folds split so that every fold has questions to train on and
    to validate on: each fold's development set (the other folds' parts) must split at `val_ratio`."""
    needed = max(num_fold, _fewest_to_split(val_ratio))
    while needed - math.ceil(needed / num_fold) < _fewest_to_split(val_ratio):
        needed += 1
    return needed


def _fewest_to_split(val_ratio: float) -> int:
    """The fewest questions that train_val_split splits at `val_ratio` (at least one on each side)."""
    needed = max(2, math.ceil(1 / (1 - val_ratio)))
    while int(needed * (1 - val_ratio)) < 1:
        needed += 1
    return needed


def _other_ratio(num_questions: int) -> str:
    """Advice naming the largest --val_ratio (two decimals) that leaves `num_questions` one to train on."""
    ratio = math.floor((1 - 1 / num_questions) * 100) / 100
    while ratio > 0 and int(num_questions * (1 - ratio)) < 1:
        ratio = round(ratio - 0.01, 2)
    return f" or a --val_ratio of at most {ratio:g}" if ratio > 0 else ""


def rows_of_questions(question_ids_per_row: np.ndarray, questions: np.ndarray | Sequence[int]) -> np.ndarray:
    """Indices of the rows whose question is in `questions` (all answer choices go with their question)."""
    return np.flatnonzero(np.isin(np.asarray(question_ids_per_row), np.asarray(questions)))
