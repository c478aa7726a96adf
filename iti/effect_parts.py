"""What moved the scores (docs/method.md §11, truth and length parts): within each question, each answer's change of
MC score under the shift, regressed on the answer's token count and its truth label.

Per answer, d = shifted − unshifted summed log-probability; d, the token count and the truth label (1 true, 0 false)
are each demeaned within their question (so a shift that moves every answer of a question alike counts for
nothing), and d is fitted by least squares on the two, no intercept. The coefficients are the length part (nats per
token) and the truth part (nats for a true answer beyond its length). Their 95% percentile intervals resample the
questions with replacement: the fit is linear in each question's sums of x xᵀ and x d (x = the two demeaned
regressors), so a resample weighs those sums by how often it drew each question, with no pass over the answers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from iti.evaluation import answer_list_columns
from iti.statistics import (BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, percentile_bounds,
                            question_draws)

# The regressors, in the order of the coefficients.
PARTS = ("length", "truth")


@dataclass(frozen=True)
class ScoredAnswers:
    """Every MC answer of some questions, one entry per answer."""
    question: np.ndarray   # the answer's question, any hashable id
    shifted: np.ndarray    # summed log-probability under the shift
    unshifted: np.ndarray  # ... and without it
    tokens: np.ndarray     # the answer's token count
    truth: np.ndarray      # 1 for a true answer, 0 for a false one


def answers_of_frame(frame: pd.DataFrame, tag: str) -> ScoredAnswers | None:
    """The answers of an answer frame (one row per question, per-answer JSON lists), or None where it lacks the
    unshifted scores or token counts in some row (a file written before they were recorded)."""
    shifted, unshifted, tokens = (answer_list_columns(tag, name) for name in ("lprob scores", "unshifted lprob scores",
                                                                              "tokens"))
    columns = [*shifted, *unshifted, *tokens]
    if any(column not in frame or frame[column].isna().any() for column in columns):
        return None
    lists = {column: [json.loads(cell) for cell in frame[column]] for column in columns}
    question, truth = [], []
    for row, (true, false) in enumerate(zip(lists[shifted[0]], lists[shifted[1]])):
        question += [row] * (len(true) + len(false))
        truth += [1.0] * len(true) + [0.0] * len(false)

    def joined(pair: tuple[str, str]) -> np.ndarray:
        return np.array([value for true, false in zip(lists[pair[0]], lists[pair[1]]) for value in (*true, *false)],
                        dtype=np.float64)

    return ScoredAnswers(np.array(question), joined(shifted), joined(unshifted), joined(tokens), np.array(truth))


def within_question(values: np.ndarray, question: np.ndarray) -> np.ndarray:
    """`values` less the mean of their question's values."""
    _, index = np.unique(question, return_inverse=True)
    means = np.bincount(index, weights=values) / np.bincount(index)
    return values - means[index]


def question_sums(answers: ScoredAnswers) -> tuple[np.ndarray, np.ndarray]:
    """Per question, Σ x xᵀ [questions, 2, 2] and Σ x d [questions, 2] over its answers (x = demeaned token count
    and truth label, d = demeaned change), in the order of np.unique of the question ids."""
    _, index = np.unique(answers.question, return_inverse=True)
    change = within_question(answers.shifted - answers.unshifted, answers.question)
    x = np.stack([within_question(answers.tokens.astype(np.float64), answers.question),
                  within_question(answers.truth.astype(np.float64), answers.question)], axis=1)
    count = int(index.max()) + 1
    xx = np.stack([np.bincount(index, weights=x[:, i] * x[:, j], minlength=count) for i in range(2) for j in range(2)],
                  axis=1).reshape(count, 2, 2)
    xd = np.stack([np.bincount(index, weights=x[:, i] * change, minlength=count) for i in range(2)], axis=1)
    return xx, xd


def least_squares(xx: np.ndarray, xd: np.ndarray) -> np.ndarray:
    """The coefficients from summed x xᵀ and x d ([..., 2, 2], [..., 2]): minimum-norm where x xᵀ is singular,
    as numpy's lstsq."""
    return (np.linalg.pinv(xx) @ xd[..., None])[..., 0]


def effect_parts(answers: ScoredAnswers, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                 level: float = BOOTSTRAP_LEVEL) -> dict:
    """The length and truth parts, each {"coef", "low", "high"} (its percentile interval over `resamples` draws
    of the questions), and how many questions and answers they are fitted on."""
    xx, xd = question_sums(answers)
    count = len(xx)
    draws = question_draws(count, resamples, seed)
    # How often each resample drew each question.
    weights = np.bincount((draws + count * np.arange(resamples)[:, None]).ravel(),
                          minlength=resamples * count).reshape(resamples, count).astype(np.float64)
    sampled = least_squares((weights @ xx.reshape(count, 4)).reshape(resamples, 2, 2), weights @ xd)
    point = least_squares(xx.sum(axis=0), xd.sum(axis=0))
    low, high = percentile_bounds(sampled, level)
    parts = {name: {"coef": float(point[i]), "low": float(low[i]), "high": float(high[i])}
             for i, name in enumerate(PARTS)}
    return {**parts, "questions": count, "answers": len(answers.question)}


def parts_of_frame(frame: pd.DataFrame, tag: str) -> dict | None:
    """effect_parts of an answer frame's answers; None where the frame lacks what they need."""
    answers = answers_of_frame(frame, tag)
    return effect_parts(answers) if answers is not None and len(answers.question) else None


def parts_line(parts: dict) -> str:
    """The parts in words, as the run's final lines print them."""
    truth, length = parts["truth"], parts["length"]
    return (f"truth part: {truth['coef']:+.3f} nats [{truth['low']:+.3f}, {truth['high']:+.3f}]; "
            f"length part: {length['coef']:+.4f} nats per token [{length['low']:+.4f}, {length['high']:+.4f}] "
            f"({parts['answers']} answers of {parts['questions']} questions)")
