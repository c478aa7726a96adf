"""Uncertainty of per-question means: a seeded percentile bootstrap over questions, and paired differences
between two runs scored on the same questions (folds pooled: each question is in exactly one test fold).

A resample draws the questions with replacement and recomputes every metric from the same draw, so True*Info (the
product of mean True and mean Info) keeps its correlations; paired differences score run and baseline on one
draw, so the question-to-question spread that both share cancels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from iti.errors import UsageError
from iti.metrics import with_products

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def verdict(self) -> str:
        """Whether the difference this interval bounds is beyond the spread of the questions, in words."""
        return ("the interval excludes 0: a difference beyond the spread of questions" if self.excludes_zero()
                else "no significant difference")


def resampled_means(scores: Mapping[str, np.ndarray], resamples: int = BOOTSTRAP_RESAMPLES,
                    seed: int = BOOTSTRAP_SEED) -> dict[str, np.ndarray]:
    """Per metric, its mean in each of `resamples` draws of the questions with replacement. Every metric uses the
    same draws, and two calls with the same seed and number of questions draw the same questions: that is what
    pairs a run with its baseline."""
    draws = question_draws(_num_questions(scores), resamples, seed)
    return {name: np.asarray(values, dtype=np.float64)[draws].mean(axis=1) for name, values in scores.items()}


def question_draws(num_questions: int, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """[resamples, num_questions]: the questions each bootstrap draw takes, with replacement."""
    return np.random.default_rng(seed).integers(0, num_questions, size=(resamples, num_questions))


def percentile_bounds(samples: np.ndarray, level: float = BOOTSTRAP_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The lower and upper percentile bounds of the central `level` of `samples` (over its first axis)."""
    tail = (1 - level) / 2
    low, high = np.quantile(samples, [tail, 1 - tail], axis=0)
    return low, high


def intervals(scores: Mapping[str, np.ndarray], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
              level: float = BOOTSTRAP_LEVEL) -> dict[str, Interval]:
    """Per metric (per-question scores, and the derived products), its value and bootstrap interval."""
    point, samples = _estimates(scores, resamples, seed)
    return {name: _interval(point[name], samples[name], level) for name in point}


def paired_differences(treated: Mapping[str, np.ndarray], baseline: Mapping[str, np.ndarray],
                       resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       level: float = BOOTSTRAP_LEVEL) -> dict[str, Interval]:
    """Per metric both runs have, treated minus baseline and its paired bootstrap interval; row i of every array
    is the same question in both runs (align them before calling)."""
    shared = [name for name in treated if name in baseline]
    if _num_questions(treated) != _num_questions(baseline):
        raise UsageError(f"paired runs must score the same questions: {_num_questions(treated)} against "
                         f"{_num_questions(baseline)}; compare runs with the same seed, folds and --limit")
    point_t, samples_t = _estimates({name: treated[name] for name in shared}, resamples, seed)
    point_b, samples_b = _estimates({name: baseline[name] for name in shared}, resamples, seed)
    return {name: _interval(point_t[name] - point_b[name], samples_t[name] - samples_b[name], level)
            for name in point_t}


def _estimates(scores: Mapping[str, np.ndarray], resamples: int, seed: int) -> tuple[dict, dict]:
    """Per metric and product: its mean over the questions, and its means over the resampled draws."""
    return (with_products({name: float(np.mean(values)) for name, values in scores.items()}),
            with_products(resampled_means(scores, resamples, seed)))


def _interval(value: float, samples: np.ndarray, level: float) -> Interval:
    low, high = percentile_bounds(samples, level)
    return Interval(float(value), float(low), float(high))


def _num_questions(scores: Mapping[str, np.ndarray]) -> int:
    lengths = {len(values) for values in scores.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise UsageError(f"per-question scores must be non-empty and of one length, got lengths {sorted(lengths)}")
    return lengths.pop()
