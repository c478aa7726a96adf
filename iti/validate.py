"""validate_2fold: per fold, head shifts from the development questions, evaluation on the test questions.

    set_up: resolve the model and the data (local checks before anything loads a model), load the model and
            the features checked against it, name each run (iti.runs) from what was loaded
    per fold: choose (K, α) when several are given (iti.selection); train the probes once and build each run's
            shifts from them (iti.fitting); evaluate them on the test questions (iti.evaluation); write the split
            and each run's fold files. With judges loaded one at a time, every fold is evaluated first and then
            judged (one load per judge for all), before any fold is written.
    write: each run's record (iti.runs.RunRecord, built by `run_record` only) after each of its folds; once all are
            done, with means over folds, bootstrap intervals, per-category means and the final line (and a
            selection's trade-off figure beside it: each setting's score against its KL, iti.plots)

A process makes one run, or with --sweep one per (K, α) (ValidationConfig.cells): each of those is the run that K
and α make alone (its name, files, record and resume), all sharing the model, the features and each fold's probes.
Features are read under the name of the model being run (`{model_prefix}{model_name}`, as get_activations
writes them). `--limit N` keeps the first N questions (MC order) for the folds and the first N questions of
the tuning set. Every file is written under a temporary name and renamed, so a killed run leaves earlier
folds whole, and a rerun of the same identity keeps them (those whose files still hold the bytes recorded; a
changed one is refused). One process at a time writes a run: a second of the same identity is refused.
"""
from __future__ import annotations

import dataclasses
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from iti.ce_kl import CeKl, load_owt_texts
from iti.config import SELECT_METRIC_NAMES, ValidationConfig, selection_options
from iti.control import (chance_levels, chance_line, control_differences, control_selection, control_settings,
                         read_control_answers, with_control)
from iti.data import GenerationQuestion
from iti.effect_parts import parts_line, parts_of_frame
from iti.errors import UsageError
from iti.evaluation import (JUDGED, EvalSpec, Evaluator, final_line, pooled_statistics, questions_frame,
                            read_fold_answers, summary_frame)
from iti.features import require_feature_sets
from iti.files import output_lock, plain, sha256_of, write_csv
from iti.fingerprint import model_fingerprint
from iti.fitting import Features, ProbeFit, Split, fit_probes, recipe_of
from iti.folds import all_fold_splits
from iti.front import with_front
from iti.judges import JudgePanel, check_judge_source
from iti.geometry import head_geometry
from iti.head_shifts import METADATA_FILE, TENSORS_FILE, HeadShifts
from iti.identity import digest, short_digest
from iti.metrics import mean_over_folds, missing, shown
from iti.models import input_device, load_model, resolve_model_source
from iti.plots import tradeoff_figure
from iti.provenance import run_provenance
from iti.records import record_json
from iti.report import report_table
from iti.run_inputs import evaluation_prompting, feature_sets, items_digest, load_items, load_run_features
from iti.runs import (Bootstrap, FoldEntry, FoldFiles, Resolved, Run, RunRecord, Selection, earlier_run_path,
                      scored_tables)
from iti.selection import budget_text, choose_setting, edge_note, score_settings, selection_split, table_line
from iti.statistics import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

Log = Callable[[str], None]


@dataclass
class Cell:
    """One run of the process: its options (one setting, or a selection's several), identity and files, what its
    record says of the run, and its folds so far (kept from an earlier run of its identity, or computed now)."""
    cfg: ValidationConfig
    run: Run
    resolved: Resolved
    provenance: dict
    kept: dict[int, FoldEntry] = field(default_factory=dict)
    folds: list[FoldEntry] = field(default_factory=list)
    seconds: float = 0.0  # the kept folds' time, and its share of this process's time (share_time)

    @property
    def reads_features(self) -> bool:
        return max(self.cfg.num_heads) > 0

    @property
    def label(self) -> str:
        return f"K {self.cfg.num_heads[0]}, alpha {self.cfg.alpha[0]:g}"


@dataclass
class RunSetup:
    """Everything a fold needs, loaded and checked once per process, and the runs it makes."""
    cfg: ValidationConfig
    cells: list[Cell]
    items: list[GenerationQuestion]
    splits: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    features: Features | None
    evaluator: Evaluator
    notes: list[str]
    clock: float  # the time up to which this process's time is shared out among its runs


@dataclass(frozen=True)
class Fold:
    """What a fold's runs share: its index, its questions by part (each part's split file), and its probes."""
    index: int
    parts: dict[str, np.ndarray]
    splits: dict[str, str]
    fit: ProbeFit | None
    selection: Selection | None


def run_validation(cfg: ValidationConfig, progress: bool = True, log: Log = print) -> dict:
    """The whole validate_2fold run; returns the JSON record as written (metrics not measured are None), and
    its path as `json_path`. A --sweep of several settings is several runs: run_sweep."""
    if len(cfg.cells) > 1:
        raise UsageError(f"--sweep over {len(cfg.cells)} settings makes one run each: call run_sweep, which returns "
                         "every run's record")
    return run_sweep(cfg, progress, log)[0]


def run_sweep(cfg: ValidationConfig, progress: bool = True, log: Log = print) -> list[dict]:
    """Every run of `cfg` (cfg.cells), as run_validation returns one: set up once, then fold by fold."""
    setup = set_up(cfg, log)
    with ExitStack() as locks:
        for cell in setup.cells:
            locks.enter_context(output_lock(cell.run.summary_path, "validate_2fold run"))
        keep_finished_folds(setup)
        plans = (plan_fold(setup, fold, questions, progress, log) for fold, questions in enumerate(setup.splits))
        # A judge loaded only while it scores (--sequential_loading) loads once for every fold's answers; otherwise
        # each fold is written once evaluated, so that a killed run keeps it.
        if setup.evaluator.judges is not None and setup.evaluator.judges.sequential:
            evaluate_folds(setup, [plan for plan in plans if plan], progress, log)
        else:
            for plan in plans:
                if plan:
                    evaluate_folds(setup, [plan], progress, log)
        # The time that computed each record's folds: a rerun that keeps them all adds nothing to it.
        share_time(setup, [cell for cell in setup.cells if len(cell.kept) < len(setup.splits)])
        records = [run_record(setup, cell, totals(cell, setup.items, log)) for cell in setup.cells]
        for cell, record in zip(setup.cells, records):
            cell.run.write(record)
    return [{**plain(record_json(record)), "json_path": str(cell.run.summary_path)}
            for cell, record in zip(setup.cells, records)]


def set_up(cfg: ValidationConfig, log: Log) -> RunSetup:
    """Local checks first, then the judges (which may ask the hub) and the documents, then the model."""
    began = time.time()
    # Resolve the model and the data, before anything loads a model.
    cfg.check()
    metrics, cells = set(cfg.metrics), cfg.cells
    source = one_model_source(cells)
    dataset, read = load_items(cfg)
    splits = all_fold_splits(len(dataset.items), cfg.num_fold, cfg.val_ratio, cfg.seed, cfg.split_rng)
    wanted = list(feature_sets(cfg)) if max(cfg.num_heads) > 0 else []
    found = require_feature_sets(wanted) if wanted else []
    for cell in cells:
        if cfg.resume and earlier_run_path(cell, complete=False) is None:
            named = f" (K {cell.num_heads[0]}, alpha {cell.alpha[0]:g})" if len(cells) > 1 else ""
            raise UsageError(f"--resume: no earlier run of these settings{named} in {cfg.results_dir}; drop --resume "
                             "to start it")
    judge_sources = {kind: check_judge_source(getattr(cfg, field), f"--{field}")
                     for option, (kind, _, field) in JUDGED.items() if option in metrics}
    notes, owt_texts, owt_source = [], None, None
    if metrics & {"ce", "kl"}:
        owt_texts, owt_source = load_owt_texts(cfg.owt_path)
        if owt_texts is None:
            if cfg.max_kl is not None and cfg.selects:
                raise UsageError(f"--max_kl needs OpenWebText texts to measure KL, but {owt_source}; "
                                 "give --owt_path (validation/write_local_text.py writes a stand-in)")
            notes.append(f"CE and KL left empty: {owt_source}")
            log(f"note: {notes[-1]}")

    # The model, and the features checked against it.
    model, tokenizer = load_model(source, cfg.device, cfg.dtype, cfg.trust_remote_code)
    geometry, fingerprint = head_geometry(model.config), model_fingerprint(model, tokenizer)
    geometry.check_num_heads(max(cfg.num_heads))
    features, features_read = (load_run_features(cfg, read, len(dataset.items), wanted, found, geometry, tokenizer,
                                                 fingerprint, source) if wanted else (None, {}))

    # Name each run from what was loaded; a run of no heads reads no features, as when it runs alone.
    data = items_digest(dataset)
    identity = {
        # The model as loaded (config, tokenizer, weight sample in its dtype): the same bits on any machine.
        "model_path": short_digest(fingerprint), "dtype": str(model.dtype),
        "dataset_path": data if cfg.custom else None, "tqa_path": None if cfg.custom else data,
        "owt_path": digest(owt_texts) if owt_texts is not None else owt_source,
        **{field: judge_sources.get(kind, getattr(cfg, field)) for kind, _, field in JUDGED.values()},
    }
    prompting = evaluation_prompting(cfg, tokenizer, source)
    resolved = Resolved(model_source=source, model_dtype=str(model.dtype), model_fingerprint=fingerprint,
                        judges=judge_sources,
                        owt_source=owt_source, questions=len(dataset.items), tqa_source=dataset.source,
                        tuning_dataset=cfg.tuning_dataset, prompt=prompting.prompt("{question}"), method=cfg.method,
                        intervenes=cfg.intervenes)
    device = str(input_device(model))

    def cell_of(cell_cfg: ValidationConfig) -> Cell:
        reads = max(cell_cfg.num_heads) > 0
        return Cell(cell_cfg, Run.resolve(cell_cfg, {**identity, "features_dir": features.provenance.features
                                                     if reads else None}),
                    dataclasses.replace(resolved, intervenes=cell_cfg.intervenes),
                    run_provenance(dataclasses.asdict(cell_cfg), features_read if reads else {}, source, device))

    # How the test questions are scored.
    spec = EvalSpec(frozenset(metrics), cfg.output_name, cfg.batch_size, cfg.max_new_tokens, add_period=not cfg.custom,
                    unshifted_scores=True)
    judges = JudgePanel(judge_sources, cfg.device, cfg.dtype, cfg.sequential_loading, cfg.batch_size) \
        if judge_sources else None
    ce_kl = CeKl(owt_texts, tokenizer, cfg.seed, cfg.batch_size, cfg.owt_samples) if metrics & {"ce", "kl"} else None
    return RunSetup(cfg, [cell_of(cell) for cell in cells], dataset.items, splits, features,
                    Evaluator(model, tokenizer, prompting, spec, judges, ce_kl), notes, began)


def one_model_source(cells: list[ValidationConfig]) -> str:
    """The model every run evaluates (a `local_` name means the bake of each run's seed, K and α; a selection's,
    the only one there is): a sweep loads one."""
    sources = list(dict.fromkeys(resolve_model_source(cfg.model_name, cfg.model_prefix, cfg.model_path,
                                                      (cfg.seed, cfg.num_heads[0], cfg.alpha[0])
                                                      if not cfg.selects else None) for cfg in cells))
    if len(sources) > 1:
        raise UsageError(f"--sweep evaluates one loaded model, but its settings name {len(sources)} ({sources[0]}, "
                         f"{sources[1]}, ...); run each setting without --sweep, or give --model_path")
    return sources[0]


def keep_finished_folds(setup: RunSetup) -> None:
    """Each run's folds that an earlier run of its identity left, and that run's time; all are read back before
    anything is written, so that a bad one leaves every record as it was."""
    for cell in setup.cells:
        cell.kept, cell.seconds = cell.run.finished_folds()
        for entry in cell.kept.values():
            read_fold_answers(entry, cell.cfg.output_name)
            if entry.control is not None:
                read_control_answers(entry, cell.cfg.output_name)


@dataclass
class FoldPlan:
    """A fold's runs that lack it, with what they share and each one's setting and shifts, ready to evaluate."""
    cells: list[Cell]
    fold: Fold
    settings: list[tuple[int, float]]
    shifts: list[HeadShifts | None]
    control: Selection | None         # with --control: the control's own choice, in a selection run
    controlled: list[tuple[int, float]]  # with --control: each run's control setting
    controls: list[HeadShifts | None]    # and its shifts along random directions


def plan_fold(setup: RunSetup, fold: int, questions: tuple[np.ndarray, ...], progress: bool,
              log: Log) -> FoldPlan | None:
    """The runs that lack this fold (None if no run does), its choice of setting when several are given, and the
    probes trained once for them all."""
    cfg = setup.cfg
    cells = []
    for cell in setup.cells:
        if fold in cell.kept:
            unverified = " (recorded before runs kept file digests: not verified)" \
                if cell.kept[fold].files.sha256 is None else ""
            log(f"Fold {fold}: kept from {cell.run.summary_path} (same settings; delete that file to recompute)"
                f"{unverified}")
            cell.folds.append(cell.kept[fold])
        else:
            cells.append(cell)
    if not cells:
        return None
    train, val, test = questions
    log(f"Running fold {fold}")
    split = Split(train, val, test, sigma=np.concatenate([train, val]) if cfg.sigma_questions == "dev" else None,
                  fold=fold)
    parts = {"train": train, "val": val, "test": test}
    selection = control = None
    if cfg.selects:
        selection, parts["select"], control = select_setting(setup, split, progress, log)
    settings = [(selection.chosen["K"], selection.chosen["alpha"]) if selection else cell.cfg.settings[0]
                for cell in cells]
    # --control: each run's control setting (its own choice, or the run's one setting), evaluated with ITI's.
    controlled = [(control.chosen["K"], control.chosen["alpha"]) if control else setting for setting in settings] \
        if cfg.control != "none" else []
    # The probes, the head ranking, the directions and σ do not depend on K or α: one fit serves every run.
    fit = fit_probes(setup.features, split, recipe_of(cfg, *settings[0])) \
        if any(cell.reads_features for cell in cells) else None
    of_k = {k: fit.head_shifts(k, 1.0) for k in dict.fromkeys(k for k, _ in settings + controlled if k > 0)}
    shifts = [of_k[k].scaled(alpha) if k > 0 else None for k, alpha in settings]
    controls = control_settings([of_k[k].scaled(alpha) if k > 0 else None for k, alpha in controlled],
                                setup.features, split, cfg.seed)
    return FoldPlan(cells, Fold(fold, parts, {}, fit, selection), settings, shifts, control, controlled, controls)


def evaluate_folds(setup: RunSetup, plans: list[FoldPlan], progress: bool, log: Log) -> None:
    """Each planned fold's settings (and their controls) on its test questions, evaluated together
    (Evaluator.evaluate_groups: the judges score every fold's answers in one call), then each run's files of each
    fold written."""
    items = setup.items
    outcomes = setup.evaluator.evaluate_groups([(plan.shifts + plan.controls,
                                                 [items[q] for q in plan.fold.parts["test"]]) for plan in plans],
                                               progress=progress)
    for plan, evaluated in zip(plans, outcomes):
        share_time(setup, plan.cells)
        splits = {part: str(write_csv(plan.cells[0].run.split_path(plan.fold.index, part),
                                      questions_frame([items[q] for q in ids])))
                  for part, ids in plan.fold.parts.items()}
        shared = dataclasses.replace(plan.fold, splits=splits)
        ours, controls = evaluated[:len(plan.shifts)], evaluated[len(plan.shifts):]
        for i, (cell, setting, cell_shifts, outcome) in enumerate(zip(plan.cells, plan.settings, plan.shifts, ours)):
            entry = write_fold(setup, cell, shared, setting, cell_shifts, outcome, log)
            if plan.controlled:
                entry = with_control(entry, cell.run, plan.control, plan.controlled[i], plan.controls[i], controls[i],
                                     log)
            cell.folds.append(entry)
            cell.run.write(run_record(setup, cell))


def evaluate_each(evaluator: Evaluator, settings: list[HeadShifts | None], records: list[GenerationQuestion],
                  progress: bool, spec: EvalSpec | None = None) -> list[tuple[pd.DataFrame, dict[str, float]]]:
    """Evaluator.evaluate_settings of these settings, each unshifted one (none, or α = 0) being the model as it is:
    evaluated once for them all."""
    keys = [None if shifts is None or shifts.alpha == 0 else i for i, shifts in enumerate(settings)]
    distinct = list(dict.fromkeys(keys))
    evaluated = evaluator.evaluate_settings([None if key is None else settings[key] for key in distinct], records,
                                            spec, progress)
    by_key = dict(zip(distinct, evaluated))
    return [by_key[key] for key in keys]


def share_time(setup: RunSetup, cells: list[Cell]) -> None:
    """The time since the last share, in equal parts to the runs that it computed."""
    now = time.time()
    for cell in cells:
        cell.seconds += (now - setup.clock) / len(cells)
    setup.clock = now


def write_fold(setup: RunSetup, cell: Cell, fold: Fold, setting: tuple[int, float], shifts: HeadShifts | None,
               evaluated: tuple[pd.DataFrame, dict[str, float]], log: Log) -> FoldEntry:
    """One run's files of a fold (its probe report, shifts, answers and summary) for its setting (K, α) and what
    evaluating it gave (answer frame, means), as that run alone writes them; returns its entry of the record."""
    run, index, (k, alpha), (frame, results) = cell.run, fold.index, setting, evaluated
    reports = {}
    if cell.reads_features:
        for table, rows in (("heads", fold.fit.report.heads), ("layers", fold.fit.report.layers)):
            if table == "heads" or not rows.empty:
                reports[f"probe_report_{table}"] = str(write_csv(run.fold_file(index, "probe_report", f"_{table}.csv"),
                                                                 rows))
    head_shifts = None
    if shifts is not None:
        head_shifts = str(shifts.save(run.fold_file(index, "head_shifts_dump", "")))
        log(f"Heads intervened: {sorted(shifts.head_list())}")
    answers = str(write_csv(run.fold_file(index, "answer_dump"), frame))
    summary = str(write_csv(run.fold_file(index, "summary_dump"), summary_frame(cell.cfg.output_name, index,
                                                                                (k, alpha), results)))
    shift_files = [f"{head_shifts}/{name}" for name in (TENSORS_FILE, METADATA_FILE)] if head_shifts else []
    written = [*fold.splits.values(), *shift_files, *reports.values(), answers, summary]
    files = FoldFiles(splits=dict(fold.splits), head_shifts=head_shifts, answers=answers, summary=summary, **reports,
                      sha256={path: sha256_of(path) for path in written})
    named = f" ({cell.label})" if len(setup.cells) > 1 else ""
    log(f"FOLD {index}{named}: " + ", ".join(f"{key}: {shown(value)}" for key, value in results.items()))
    if fold.selection is not None:
        fold.selection.chosen_test = results[fold.selection.metric]
    train, val, test = (fold.parts[part] for part in ("train", "val", "test"))
    return FoldEntry(fold=index, train=train.tolist(), val=val.tolist(), test=test.tolist(), K=k, alpha=alpha,
                     selection=fold.selection, heads=shifts.head_list() if shifts is not None else [],
                     results=dict(results), files=files,
                     probe_report=({"fold": index, "K": k, "alpha": alpha, **shifts.provenance.probe_report}
                                   if shifts is not None else None))


def select_setting(setup: RunSetup, split: Split, progress: bool,
                   log: Log) -> tuple[Selection, np.ndarray, Selection | None]:
    """Score every (K, α) on questions set aside from the fold's development questions, with shifts built from
    the others (iti.selection), and choose one; also returns the questions scored, and with --control the
    control's own choice (its settings scored in the same pass)."""
    cfg = setup.cfg
    metric = SELECT_METRIC_NAMES[cfg.select_metric]
    # Every setting's price beside its score, whenever the run measures CE or KL (spec §11).
    scoring = setup.evaluator.spec.only(selection_options(cfg.select_metric) | ({"ce", "kl"} & set(cfg.metrics)))
    inner, selecting = selection_split(split, cfg.select_ratio, cfg.val_ratio, cfg.seed)
    scored = [setup.items[q] for q in selecting]
    counts = {"train": len(inner.train), "val": len(inner.val), "select": len(selecting)}

    control_rows = []

    def score(settings: list[HeadShifts | None]) -> list[dict[str, float]]:
        controls = control_settings(settings, setup.features, inner, cfg.seed) if cfg.control != "none" else []
        rows = [{metric: results[metric], "KL": results["KL"], "CE": results["CE"]}
                for _, results in evaluate_each(setup.evaluator, settings + controls, scored, progress, scoring)]
        control_rows.extend(rows[len(settings):])
        return rows[:len(settings)]

    earlier = scored_tables(setup.cells[0].run, split.fold or 0)
    if earlier is not None and earlier[1].counts == counts:
        source, read, read_control = earlier
        scored_in, table, control_rows = str(source), read.table, read_control.table if read_control else []
        log(f"every setting's scores on these {len(selecting)} set-aside questions: read from {scored_in} (a run "
            "that differs from this one only in --max_kl)")
    else:
        scored_in = None
        table = score_settings(setup.features, inner, cfg.settings, recipe_of(cfg, 1, 1.0), score) \
            if setup.features else [{"K": k, "alpha": a, **values}
                                    for (k, a), values in zip(cfg.settings, score([None] * len(cfg.settings)))]
    table = with_front(table, metric)
    for row in table:
        log(table_line(row, metric))
    chosen, note = choose_setting(table, metric, cfg.max_kl)
    edge = edge_note(chosen, cfg.settings)
    for message in (note, edge):
        if message:
            log(f"note: {message}")
    log(f"chosen on {len(scored)} set-aside questions {budget_text(cfg.max_kl)}: K {chosen['K']}, "
        f"alpha {chosen['alpha']:g}")
    selection = Selection(scheme="three-way split of the development questions", metric=metric, max_kl=cfg.max_kl,
                          select_ratio=cfg.select_ratio, counts=counts, table=table, chosen=chosen, note=note,
                          edge_note=edge, scored_in=scored_in)
    control = control_selection(selection, [{"K": row["K"], "alpha": row["alpha"], **values} for row, values
                                            in zip(table, control_rows)], cfg.settings, log) if control_rows else None
    return selection, selecting, control


def run_record(setup: RunSetup, cell: Cell, done: dict[str, Any] | None = None) -> RunRecord:
    """A run's record, built here only: what set_up resolved, its folds so far and the time they took; `done` (the
    totals once every fold is done) completes it."""
    return RunRecord(config=dataclasses.asdict(cell.cfg), identity=cell.run.identity, name=cell.run.name,
                     resolved=cell.resolved, notes=setup.notes, folds=list(cell.folds), complete=done is not None,
                     provenance=cell.provenance, seconds=cell.seconds, **(done or {}))


def totals(cell: Cell, items: list[GenerationQuestion], log: Log) -> dict[str, Any]:
    """What completes a record: means over folds, the probe report table, intervals and categories, the final line;
    the chance levels of its questions (`items`: the run's) and with --control, ITI − control."""
    cfg, folds = cell.cfg, cell.folds
    final = mean_over_folds([{key: np.nan if value is None else float(value) for key, value in f.results.items()}
                             for f in folds])
    reported = [f.probe_report for f in folds if f.probe_report]
    table = report_table(reported, cfg.alpha[0], cfg.num_heads[0]) if reported else None
    if table:
        log("Probe report:\n" + table)
    # From the answer files, so that folds kept from an earlier run count too.
    answers = pd.concat([read_fold_answers(f, cfg.output_name) for f in folds], ignore_index=True)
    bootstrap, categories = pooled_statistics(answers, cfg.output_name)
    figure = None
    parts = parts_of_frame(answers, cfg.output_name) if any(f.K and f.alpha for f in folds) else None
    if parts:
        log(parts_line(parts))
    chance = chance_levels([items[q] for f in folds for q in f.test], not cfg.custom) if "mc" in cfg.metrics else None
    if chance:
        log(chance_line(chance))
    control = control_differences(answers, folds, cfg.output_name, log) if cfg.control != "none" else None
    if cfg.selects:
        line = final_line("/".join(f"{f.alpha:g}" for f in folds), "/".join(str(f.K) for f in folds), final)
        log(f"chosen {budget_text(cfg.max_kl)}: " + "; ".join(f"fold {f.fold}: K {f.K}, alpha {f.alpha:g}"
                                                               for f in folds))
        figure = write_tradeoff_figure(cell, log)
    else:
        line = final_line(cfg.alpha[0], cfg.num_heads[0], final)
    return dict(final=final, final_line=line, probe_report_table=table, categories=categories, tradeoff_figure=figure,
                effect_parts=parts, chance=chance, control=control,
                bootstrap=Bootstrap(intervals=bootstrap, level=BOOTSTRAP_LEVEL, resamples=BOOTSTRAP_RESAMPLES,
                                    seed=BOOTSTRAP_SEED, over="test questions, folds pooled"))


def write_tradeoff_figure(cell: Cell, log: Log) -> str | None:
    """A selection run's folds, each setting's score against its KL (iti.plots.tradeoff_figure), beside its record;
    None, and a note, when no setting's KL was measured."""
    folds = [{"fold": f.fold, "iti": f.selection.table, "chosen": f.selection.chosen,
              "control": f.control.selection.table if f.control and f.control.selection else None,
              "control_chosen": f.control.selection.chosen if f.control and f.control.selection else None}
             for f in cell.folds]
    if all(missing(row.get("KL")) for fold in folds for row in fold["iti"]):
        log("note: no trade-off figure: no setting's KL was measured (give kl in --metrics and --owt_path)")
        return None
    record = cell.run.summary_path
    path = tradeoff_figure(record.with_name(f"{record.stem}_tradeoff.png"), cell.folds[0].selection.metric, folds,
                           cell.cfg.max_kl)
    log(f"trade-off figure: {path}")
    return str(path)
