"""Evaluating a model, shifted or not, on a list of questions (docs/method.md §6): MC1/MC2/MC3, generated answers
judged for True and Info, CE and KL; the answer frame (one row per question, every per-question score)
and the means. What to compute is an EvalSpec, not a run's whole configuration.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import pandas as pd

from iti.ce_kl import CeKl
from iti.data import GenerationQuestion
from iti.errors import UsageError
from iti.files import read_text
from iti.generation import generate_answers_per_setting
from iti.head_shifts import HeadShifts
from iti.intervention import ShiftedModel
from iti.judges import JudgePanel
from iti.mc import evaluate_mc_per_setting
from iti.metrics import BY_NAME, METRICS, PER_QUESTION, missing, shown, with_products
from iti.prompts import Prompting
from iti.statistics import intervals

if TYPE_CHECKING:
    from iti.runs import FoldEntry

# Per --metrics option scored by a judge: the judge kind, the answer files' column of its P(" yes"), and the
# option that names the judge model.
JUDGED = {"judge": ("truth", "GPT-judge", "judge_model"), "info": ("info", "GPT-info", "info_model")}
# What to do with a fold's answer file that cannot be read back: a run of the same settings remakes a missing one.
REMAKE_ANSWERS = "move it away and run validate_2fold with the same settings again: that fold is then recomputed"


@dataclass(frozen=True)
class EvalSpec:
    """What to compute (`metrics`: --metrics options), how answers are scored and named in the answer frame."""
    metrics: frozenset[str]
    tag: str                  # answer-frame column prefix: the model's output name
    batch_size: int = 16
    max_new_tokens: int = 50
    add_period: bool = True   # TruthfulQA's convention for its reference answers (docs/method.md §9)
    # MC answer frames also hold the unshifted model's scores of the same answers (the truth and length parts,
    # iti.effect_parts): scored beside the settings', sharing their prompt prefixes.
    unshifted_scores: bool = False

    def only(self, metrics) -> EvalSpec:
        """These metrics alone (and no unshifted scores beside them)."""
        return replace(self, metrics=frozenset(metrics), unshifted_scores=False)


@dataclass
class Evaluator:
    """One loaded model with its prompting, judges and CE/KL documents, evaluated under any head shifts."""
    model: object
    tokenizer: object
    prompting: Prompting
    spec: EvalSpec
    judges: JudgePanel | None = None
    ce_kl: CeKl | None = None

    def evaluate(self, shifts: HeadShifts | None, records: list[GenerationQuestion], spec: EvalSpec | None = None,
                 progress: bool = True) -> tuple[pd.DataFrame, dict[str, float]]:
        """(answer frame, means) of these questions; metrics not asked (or not computable) are NaN."""
        return self.evaluate_settings([shifts], records, spec, progress)[0]

    def evaluate_settings(self, settings: list[HeadShifts | None], records: list[GenerationQuestion],
                          spec: EvalSpec | None = None, progress: bool = True
                          ) -> list[tuple[pd.DataFrame, dict[str, float]]]:
        """`evaluate` of each setting on the same questions, in the order given, computed together: rows of every
        setting share batches, MC prefixes and the CE/KL reference, and each judge scores every setting's answers
        in one call (so loads once)."""
        return self.evaluate_groups([(settings, records)], spec, progress)[0]

    def evaluate_groups(self, groups: list[tuple[list[HeadShifts | None], list[GenerationQuestion]]],
                        spec: EvalSpec | None = None, progress: bool = True
                        ) -> list[list[tuple[pd.DataFrame, dict[str, float]]]]:
        """`evaluate_settings` of each (settings, questions) group (a sweep's folds), in order; each judge scores
        every group's answers in one call, so a judge loaded only while it scores loads once for them all."""
        spec = spec or self.spec
        tables = [SettingsTable.of(settings, records) for settings, records in groups]
        for table in (table for table in tables if table.distinct):
            for option, per_setting in self._passes(table, spec, progress):
                table.fill(option, per_setting, spec.tag)
        if self.judges is not None and spec.metrics & set(JUDGED):
            self._judge(tables, spec, progress)
        return [table.outcomes() for table in tables]

    def _passes(self, table: SettingsTable, spec: EvalSpec, progress: bool) -> Iterator[tuple[str, list[list]]]:
        """Per --metrics option asked but the judges', per distinct setting of `table` the outputs its metrics score
        (per question, or per document), in the answer files' column order; a pass adds its own columns to each
        setting's frame before its metrics' columns. Answers to be judged are generated into the frames."""
        tag, records, frames, shifted = spec.tag, table.records, table.frames, ShiftedModel(self.model, table.distinct)
        if "mc" in spec.metrics:
            settings = shifted.settings
            # The unshifted model's scores: those of an unshifted setting among these, or of one scored beside them.
            plain = next((i for i, setting in enumerate(settings) if setting is None), len(settings))
            scored = ShiftedModel(shifted.model, [*settings, None]) \
                if spec.unshifted_scores and plain == len(settings) else shifted
            per_setting = evaluate_mc_per_setting(scored, self.tokenizer, records, self.prompting,
                                                  batch_size=spec.batch_size, progress=progress,
                                                  add_period=spec.add_period)
            for frame, mc in zip(frames, per_setting):
                frame[f"{tag} lprob max"] = [max(r.true_scores) for r in mc]
                frame[f"{tag} lprob diff"] = [max(r.true_scores) - max(r.false_scores) for r in mc]
                _add_answer_lists(frame, tag, "lprob scores", [(r.true_scores, r.false_scores) for r in mc])
                _add_answer_lists(frame, tag, "tokens", [(r.true_tokens, r.false_tokens) for r in mc])
                if spec.unshifted_scores:
                    _add_answer_lists(frame, tag, "unshifted lprob scores",
                                      [(r.true_scores, r.false_scores) for r in per_setting[plain]])
            yield "mc", per_setting[:len(settings)]
        if self.ce_kl is not None:
            per_setting = self.ce_kl.per_setting(shifted, set(spec.metrics), progress)
            for option in per_setting[0]:
                yield option, [values[option] for values in per_setting]
        if self.judges is not None and spec.metrics & set(JUDGED):
            answers = generate_answers_per_setting(shifted, self.tokenizer, [r.question for r in records],
                                                   self.prompting, max_new_tokens=spec.max_new_tokens,
                                                   batch_size=spec.batch_size, progress=progress)
            for frame, setting_answers in zip(frames, answers):
                frame[tag] = setting_answers

    def _judge(self, tables: list[SettingsTable], spec: EvalSpec, progress: bool) -> None:
        """Every generated answer of every table, judged in one call per judge."""
        pairs = [(question, answer) for table in tables for frame in table.frames
                 for question, answer in zip(frame["Question"], frame[spec.tag])]
        scores = self.judges.score([question for question, _ in pairs], [answer for _, answer in pairs], self.model,
                                   progress=progress)
        for option, (kind, column, _) in JUDGED.items():
            if kind not in scores:
                continue
            start = 0
            for table in tables:
                per_setting = []
                for frame in table.frames:
                    per_setting.append(scores[kind][start:start + len(frame)])
                    frame[f"{spec.tag} {column}"] = per_setting[-1]
                    start += len(frame)
                table.fill(option, per_setting, spec.tag)


@dataclass
class SettingsTable:
    """Settings evaluated together on the same questions: each distinct effective setting's answer frame and
    means, and which of them each given setting is."""
    records: list[GenerationQuestion]
    distinct: list[HeadShifts | None]
    slots: list[int]
    frames: list[pd.DataFrame]
    results: list[dict[str, float]]

    @classmethod
    def of(cls, settings: list[HeadShifts | None], records: list[GenerationQuestion]) -> SettingsTable:
        # α = 0 adds nothing, so the plain model is that baseline (KL exactly 0). A setting given twice (the plain
        # model, above all) is computed once.
        effective = [None if shifts is None or shifts.alpha == 0 or shifts.k == 0 else shifts for shifts in settings]
        distinct = list({id(shifts): shifts for shifts in effective}.values())
        slots = [next(i for i, shifts in enumerate(distinct) if shifts is setting) for setting in effective]
        return cls(records, distinct, slots, [questions_frame(records) for _ in distinct],
                   [{metric.name: math.nan for metric in METRICS} for _ in distinct])

    def fill(self, option: str, per_setting: list[list], tag: str) -> None:
        """The means (and per-question columns) of the metrics of --metrics option `option` from each distinct
        setting's outputs."""
        for frame, setting_results, outputs in zip(self.frames, self.results, per_setting):
            for metric in (m for m in METRICS if m.option == option):
                if metric.per_question:
                    column = f"{tag} {metric.column}"
                    frame[column] = [metric.score(output) for output in outputs]
                    setting_results[metric.name] = float(frame[column].mean())
                else:
                    setting_results[metric.name] = metric.score(outputs)

    def outcomes(self) -> list[tuple[pd.DataFrame, dict[str, float]]]:
        """(answer frame, means) of each given setting, in the order given."""
        return [(self.frames[i].copy(), with_products(self.results[i])) for i in self.slots]


def answer_list_columns(tag: str, name: str) -> tuple[str, str]:
    """The answer frame's columns of a per-answer value (`name`: "lprob scores", "unshifted lprob scores",
    "tokens"): each row a JSON list of the true answers' values, and one of the false answers'."""
    return f"{tag} {name}-true", f"{tag} {name}-false"


def _add_answer_lists(frame: pd.DataFrame, tag: str, name: str, values: list[tuple[list, list]]) -> None:
    """Per question (true answers' values, false answers' values), as answer_list_columns."""
    for column, side in zip(answer_list_columns(tag, name), (0, 1)):
        frame[column] = [json.dumps(pair[side]) for pair in values]


def questions_frame(records: list[GenerationQuestion]) -> pd.DataFrame:
    """TruthfulQA.csv's columns for these questions (answers joined with "; ")."""
    return pd.DataFrame({
        "Category": [r.category for r in records],
        "Question": [r.question for r in records],
        "Best Answer": [r.best_answer for r in records],
        "Correct Answers": ["; ".join(r.correct_answers) for r in records],
        "Incorrect Answers": ["; ".join(r.incorrect_answers) for r in records],
    })


def score_columns(tag: str) -> dict[str, str]:
    """Per per-question metric, its column in the answer frame."""
    return {name: f"{tag} {BY_NAME[name].column}" for name in PER_QUESTION}


def answer_scores(frame: pd.DataFrame, tag: str) -> dict[str, np.ndarray]:
    """Per-question scores of an answer frame (one array per metric it has), in the frame's row order."""
    return {name: frame[column].to_numpy(dtype=np.float64) for name, column in score_columns(tag).items()
            if column in frame}


def read_fold_answers(fold: FoldEntry, tag: str) -> pd.DataFrame:
    """The answer file of a fold of a run record as validate_2fold wrote it (a number in each row of each measured
    metric's column, one row per test question, the bytes its digest records); any other file is a UsageError
    naming it, since intervals and categories over it would silently be over other questions, or none."""
    path = Path(fold.files.answers)
    fold.files.check(fold.files.answers, "answer file", REMAKE_ANSWERS)
    text = read_text(path, "answer file", REMAKE_ANSWERS)
    try:
        frame = pd.read_csv(io.StringIO(text))
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        raise UsageError(f"answer file {path} is not a whole CSV table ({str(err).strip().splitlines()[0]}); "
                         f"{REMAKE_ANSWERS}") from None
    measured = [column for name, column in score_columns(tag).items() if not missing(fold.results.get(name))]
    absent = [column for column in ("Category", "Question", *measured) if column not in frame]
    if absent:
        raise UsageError(f"answer file {path} lacks the column(s) {', '.join(absent)} of the fold's answers; "
                         f"{REMAKE_ANSWERS}")
    if len(frame) != len(fold.test):
        raise UsageError(f"answer file {path} holds {len(frame)} answers, but its fold has {len(fold.test)} test "
                         f"questions; {REMAKE_ANSWERS}")
    unscored = [column for column in measured if not pd.api.types.is_numeric_dtype(frame[column])
                or frame[column].isna().any()]
    if unscored:
        raise UsageError(f"answer file {path} lacks a score in some rows of {', '.join(unscored)}; {REMAKE_ANSWERS}")
    return frame


def summary_frame(tag: str, fold: int, setting: tuple[int, float], results: dict[str, float]) -> pd.DataFrame:
    """A fold's means in the public summary file's columns."""
    return pd.DataFrame([{"Model": tag, "alpha": setting[1], "K": setting[0], "fold": fold,
                          **{metric.column: results[metric.name] for metric in METRICS}}])


def final_line(alpha, num_heads, results: dict[str, float]) -> str:
    """The public workflow's summary line, numbers rounded to 4 decimals (the JSON keeps them whole), "—" for
    a metric not measured; with a choice per fold, alpha and heads list the folds' choices."""
    r = {key: shown(value) for key, value in results.items()}
    return (f"alpha: {alpha}, heads: {num_heads}, True*Info Score: {r['True*Info']}, True Score: {r['True']}, "
            f"Info Score: {r['Info']}, MC1 Score: {r['MC1']}, MC2 Score: {r['MC2']}, CE Loss: {r['CE']}, "
            f"KL wrt Original: {r['KL']}")


def pooled_statistics(answers: pd.DataFrame, tag: str) -> tuple[dict, dict]:
    """(per metric its 95% bootstrap interval over the test questions, per category each metric's
    mean) from the answers of every fold pooled."""
    scores = answer_scores(answers, tag)
    bootstrap = {name: interval.as_dict() for name, interval in intervals(scores).items()} if scores else {}
    categories = {}
    for category, group in answers.groupby("Category", sort=True):
        means = with_products({name: float(np.mean(values)) for name, values in answer_scores(group, tag).items()})
        categories[str(category)] = {"questions": len(group), **means}
    return bootstrap, categories
