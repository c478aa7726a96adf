"""What ITI's gain is measured against (docs/method.md §11): the random-direction control, and the chance levels of
a question set.

The control (`--control random_direction`) asks how much of the gain any shift of the same size at the same heads
gives. Beside each (K, α) that ITI tries it shifts the same K ranked heads by the same α, each head along a unit
direction drawn without the labels, by σ measured along that direction exactly as ITI's σ is measured (the same
tuning rows, iti.fitting.sigma_rows; iti.directions.projection_stds). It is scored with ITI in the same passes, on
the same questions, chooses under the same rule and budget, and its choice is evaluated on the same test questions.

Seeds: fold i's directions are one standard-normal vector of the head dimension per head of the model, drawn in
(layer, head) order from numpy's `default_rng([seed, CONTROL_STREAM, i])` and normalised. That stream is apart from
the folds' split and --use_random_dir's (`default_rng(seed)`) and the selection split's (iti.selection), so a head's
direction depends on the run's seed, the fold and the head alone: not on the labels, not on K, and the same in the
selection as on the test questions.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pandas as pd

from iti.data import GenerationQuestion
from iti.directions import projection_stds, unit
from iti.evaluation import answer_scores, read_fold_answers
from iti.files import sha256_of, write_csv
from iti.front import with_front
from iti.fitting import Features, Split, sigma_rows
from iti.head_shifts import HeadShifts
from iti.mc import mc_references
from iti.metrics import shown
from iti.runs import ControlFold, FoldEntry, Run, Selection
from iti.selection import choose_setting, edge_note, table_line
from iti.statistics import paired_differences

RANDOM_DIRECTION = "random_direction"
# Seeds the control's directions apart from every other draw of the run's seed (iti.selection's stream is 1).
CONTROL_STREAM = 2

Log = Callable[[str], None]


def random_unit_directions(num_layers: int, num_heads: int, head_dim: int, seed: int, fold: int) -> np.ndarray:
    """[layers, heads, d]: every head's control direction in fold `fold` of a run seeded `seed`."""
    rng = np.random.default_rng([seed, CONTROL_STREAM, fold])
    return unit(rng.standard_normal((num_layers, num_heads, head_dim)))


def control_shifts(shifts: HeadShifts, features: Features, split: Split, seed: int) -> HeadShifts:
    """The control of ITI's `shifts` built on `split`: its heads and α, each head's random direction, and σ along it
    from the tuning rows that set ITI's σ on that split."""
    directions = random_unit_directions(shifts.num_layers, shifts.num_heads, shifts.head_dim, seed,
                                        split.fold or 0)[shifts.layers, shifts.heads]
    sigmas = projection_stds(sigma_rows(features, split), shifts.head_list(), directions, features.num_heads)
    return dataclasses.replace(shifts, directions=directions, sigmas=sigmas,
                               provenance=dataclasses.replace(shifts.provenance, method=RANDOM_DIRECTION))


def control_settings(settings: list[HeadShifts | None], features: Features | None, split: Split,
                     seed: int) -> list[HeadShifts | None]:
    """The control of each of ITI's settings (None, the unshifted model, stays so); σ measured once per set of
    heads, the α of each setting applied to it."""
    built: dict[tuple, HeadShifts] = {}
    controls = []
    for shifts in settings:
        if shifts is None:
            controls.append(None)
            continue
        heads = tuple(shifts.head_list())
        if heads not in built:
            built[heads] = control_shifts(shifts, features, split, seed)
        controls.append(built[heads].scaled(shifts.alpha))
    return controls


def control_selection(selection: Selection, table: list[dict], settings: list[tuple[int, float]],
                      log: Log) -> Selection:
    """The control's own choice among its rows `table` (one per setting, in ITI's order), by ITI's rule and budget."""
    table = with_front(table, selection.metric)
    chosen, note = choose_setting(table, selection.metric, selection.max_kl)
    edge = edge_note(chosen, settings)
    for row in table:
        log(f"control {table_line(row, selection.metric)}")
    log(f"control chosen: K {chosen['K']}, alpha {chosen['alpha']:g}" + "".join(f"; note: {message}"
                                                                           for message in (note, edge) if message))
    return dataclasses.replace(selection, table=table, chosen=chosen, note=note, edge_note=edge, chosen_test=None)


def with_control(entry: FoldEntry, run: Run, selection: Selection | None, setting: tuple[int, float],
                 shifts: HeadShifts | None, evaluated: tuple[pd.DataFrame, dict[str, float]], log: Log) -> FoldEntry:
    """A fold's entry with its control: the control's answer file written (and its digest recorded with the fold's
    other files), its choice's test score, its setting, heads and means."""
    (k, alpha), (frame, results) = setting, evaluated
    answers = str(write_csv(run.fold_file(entry.fold, "answer_dump", f"_{RANDOM_DIRECTION}.csv"), frame))
    if selection is not None:
        selection.chosen_test = results[selection.metric]
    log(f"FOLD {entry.fold} control (K {k}, alpha {alpha:g}): "
        + ", ".join(f"{key}: {shown(value)}" for key, value in results.items()))
    files = dataclasses.replace(entry.files, control_answers=answers,
                                sha256={**(entry.files.sha256 or {}), answers: sha256_of(answers)})
    control = ControlFold(method=RANDOM_DIRECTION, selection=selection, K=k, alpha=alpha,
                          heads=shifts.head_list() if shifts is not None else [], results=dict(results))
    return dataclasses.replace(entry, files=files, control=control)


def read_control_answers(entry: FoldEntry, tag: str) -> pd.DataFrame:
    """The control's answer file of a fold, checked as the fold's own answer file is (read_fold_answers)."""
    as_answers = dataclasses.replace(entry.files, answers=entry.files.control_answers)
    return read_fold_answers(dataclasses.replace(entry, files=as_answers, results=entry.control.results), tag)


def control_differences(answers: pd.DataFrame, folds: list[FoldEntry], tag: str,
                        log: Log) -> dict[str, dict[str, float]]:
    """Per metric both scored per question, ITI − control over the test questions (`answers`: ITI's, folds pooled
    in order) with its paired bootstrap interval; one line each (none for a run of CE and KL alone)."""
    control = pd.concat([read_control_answers(fold, tag) for fold in folds], ignore_index=True)
    iti_scores, control_scores = answer_scores(answers, tag), answer_scores(control, tag)
    differences = paired_differences(iti_scores, control_scores) if iti_scores else {}
    for name, interval in differences.items():
        log(f"ITI − control: {name} {interval.value:+.4f} [{interval.low:+.4f}, {interval.high:+.4f}]")
    return {name: interval.as_dict() for name, interval in differences.items()}


def chance_levels(records: list[GenerationQuestion], add_period: bool = True) -> dict[str, float]:
    """MC1, MC2 and MC3 of a scorer that finds every answer equally likely, over these questions, their answers as
    MC scores them: MC1 picks the best answer among it and the false ones (1 / (1 + #false)); MC2 is the true share
    of the answers; MC3, the mean over true answers of the chance that one ranks above every false answer, under a
    uniformly random order of all answers, is 1 / (1 + #false) too (only the order of it and the false ones counts)."""
    references = [mc_references(record, add_period) for record in records]
    above_the_false = float(np.mean([1 / (1 + len(ref.false)) for ref in references]))
    return {"MC1": above_the_false,
            "MC2": float(np.mean([len(ref.true) / (len(ref.true) + len(ref.false)) for ref in references])),
            "MC3": above_the_false}


def chance_line(chance: dict[str, float]) -> str:
    return "chance (every answer equally likely): " + ", ".join(f"{name} {value:.4f}" for name, value in chance.items())
