"""Choosing K and α per fold on questions the shifts never saw (a three-way split of the development questions).

The fold's development questions are split three ways, seeded apart from the fold's own split: a share
`select_ratio` is set aside to score the settings; of the rest, a share 1 - val_ratio trains the probes
and the directions, and the others rank the heads. Every (K, α) is built from those and scored on the
set-aside questions, which took no part in the probes, the head ranking, the directions or (with
--sigma_questions dev) σ. The chosen setting is then rebuilt from all development questions with the
fold's own split, exactly as a run of that one setting builds it, and evaluated on the test questions.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from iti.errors import UsageError
from iti.fitting import Features, Recipe, Split, fit_probes
from iti.head_shifts import HeadShifts
from iti.folds import held_for_selection, train_val_split
from iti.metrics import BY_NAME, shown

# Seeds the set-aside draw apart from the fold's own split (with the run's seed), so that split, and the
# shifts rebuilt from it, are those of a single-setting run.
SELECTION_STREAM = 1


def selection_split(split: Split, select_ratio: float, val_ratio: float, seed: int) -> tuple[Split, np.ndarray]:
    """(the split that builds the shifts to be scored, the questions that score them) from a fold's split."""
    development = np.sort(np.concatenate([split.train, split.val]))
    rng = np.random.default_rng([seed, SELECTION_STREAM, split.fold or 0])
    held = held_for_selection(len(development), select_ratio, val_ratio)
    selecting = np.sort(rng.choice(development, size=held, replace=False))
    rest = np.setdiff1d(development, selecting)
    train, val = train_val_split(rest, val_ratio, rng)
    sigma = None if split.sigma is None else np.setdiff1d(split.sigma, selecting)
    return Split(train, val, sigma=sigma, fold=split.fold), selecting


def score_settings(features: Features, split: Split, settings: list[tuple[int, float]], recipe: Recipe,
                   score: Callable[[list[HeadShifts | None]], list[dict[str, float]]]) -> list[dict]:
    """Per (K, α): the shifts built from `split` (the probes fitted once: heads, directions and σ do not depend on
    K or α, which only picks the first K heads and scales) and their values, one table row each, in the given
    order. `score` gets every setting's shifts in one call (None for K = 0 or α = 0: the unshifted model), so
    they can be evaluated together."""
    # Without the residual streams: these shifts' probe reports need no best layer.
    features = dataclasses.replace(features, layer_acts=None)
    shifted = [k for k, alpha in settings if k > 0 and alpha != 0]
    fit = fit_probes(features, split, recipe) if shifted else None
    of_k = {k: fit.head_shifts(k, 1.0) for k in dict.fromkeys(shifted)}
    shifts = [of_k[k].scaled(alpha) if k > 0 and alpha != 0 else None for k, alpha in settings]
    return [{"K": k, "alpha": alpha, **values} for (k, alpha), values in zip(settings, score(shifts))]


def choose_setting(table: list[dict], metric: str, max_kl: float | None = None) -> tuple[dict, str | None]:
    """The row of `table` (one per (K, α) tried, each with `metric` and, under a budget, "KL") with the best
    `metric` (in its direction, iti.metrics) among those with KL ≤ `max_kl`; equal scores go to the weaker
    intervention (smaller α, then smaller K). With no row inside the budget, the row of smallest KL, and a note."""
    if not table:
        raise UsageError("no (K, alpha) setting to choose from; give --num_heads and --alpha values")
    within = table if max_kl is None else [row for row in table if row["KL"] <= max_kl]
    if not within:
        smallest = min(table, key=lambda row: (row["KL"], row["alpha"], row["K"]))
        return smallest, (f"no setting kept KL within --max_kl {max_kl:g}; took the smallest KL "
                          f"({smallest['KL']:.4g}: K {smallest['K']}, alpha {smallest['alpha']:g})")
    if any(math.isnan(row[metric]) for row in within):
        raise UsageError(f"--select_metric {metric} has no value on the selection questions; "
                         "add the metrics it needs to --metrics")
    sign = -1 if BY_NAME[metric].higher_is_better else 1
    return min(within, key=lambda row: (sign * row[metric], row["alpha"], row["K"])), None


def edge_note(chosen: dict, settings: list[tuple[int, float]]) -> str | None:
    """A note when the choice lies on the grid's outer edge (the largest K or α tried, or the smallest
    nonzero one), where a better setting may lie beyond the grid."""
    sides = []
    for key, values in (("K", sorted({k for k, _ in settings})), ("alpha", sorted({a for _, a in settings}))):
        if len(values) < 2:
            continue
        if chosen[key] == values[-1]:
            sides.append(f"{key} {chosen[key]:g} is the largest tried")
        elif chosen[key] == values[0] and values[0] > 0:
            sides.append(f"{key} {chosen[key]:g} is the smallest tried")
    return (f"the choice lies on the grid's edge ({'; '.join(sides)}): a better setting may lie beyond the grid"
            if sides else None)


def budget_text(max_kl: float | None) -> str:
    """Which budget a choice was made under, as the log and the final lines say it."""
    return f"under KL <= {max_kl:g} (--max_kl)" if max_kl is not None else "with no KL budget (no --max_kl)"


def table_line(row: dict, metric: str) -> str:
    """One setting of a selection table as the fold's log shows it: its score, its price, and whether it is on the
    front (iti.front)."""
    return (f"selection: K {row['K']}, alpha {row['alpha']:g}: {metric} {shown(row[metric])}, KL {shown(row['KL'])}, "
            f"CE {shown(row['CE'])}" + (" (front)" if row["front"] else ""))
