"""validate_2fold: per fold, head shifts from the development questions, evaluation on the test questions.

    set_up: resolve the model and the data (local checks before anything loads a model), load the model and
            the features checked against it, name the run (iti.runs) from what was loaded
    per fold: write the split; choose (K, α) when several are given (iti.selection); fit the shifts
            (iti.fitting); evaluate them on the test questions (iti.evaluation); write the fold's files
    write: the record (iti.runs.RunRecord, built by `run_record` only) after every fold; once all are done, with
            means over folds, bootstrap intervals, per-category means and the final line

Features are read under the name of the model being run (`{model_prefix}{model_name}`, as get_activations
writes them). `--limit N` keeps the first N questions (MC order) for the folds and the first N questions of
the tuning set. Every file is written under a temporary name and renamed, so a killed run leaves earlier
folds whole, and a rerun of the same identity keeps them (those whose files still hold the bytes recorded; a
changed one is refused). One process at a time writes a run: a second of the same identity is refused.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd

from iti.ce_kl import CeKl, load_owt_texts
from iti.config import SELECT_METRIC_NAMES, ValidationConfig, selection_options
from iti.data import GenerationQuestion
from iti.errors import UsageError
from iti.evaluation import (JUDGED, EvalSpec, Evaluator, final_line, pooled_statistics, questions_frame,
                            read_fold_answers, summary_frame)
from iti.features import require_feature_sets
from iti.files import output_lock, plain, sha256_of, write_csv
from iti.fingerprint import model_fingerprint
from iti.fitting import Features, Split, fit_head_shifts, recipe_of
from iti.folds import all_fold_splits
from iti.judges import JudgePanel, check_judge_source
from iti.geometry import head_geometry
from iti.head_shifts import METADATA_FILE, TENSORS_FILE
from iti.identity import digest, short_digest
from iti.metrics import mean_over_folds, shown
from iti.models import input_device, load_model, resolve_model_source
from iti.provenance import run_provenance
from iti.records import record_json
from iti.report import report_table
from iti.run_inputs import evaluation_prompting, feature_sets, items_digest, load_items, load_run_features
from iti.runs import Bootstrap, FoldEntry, FoldFiles, Resolved, Run, RunRecord, Selection, earlier_run_path
from iti.selection import choose_setting, edge_note, score_settings, selection_split
from iti.statistics import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED

Log = Callable[[str], None]


@dataclass
class RunSetup:
    """Everything a fold needs, loaded and checked once per run, and what the record says of the run."""
    cfg: ValidationConfig
    run: Run
    items: list[GenerationQuestion]
    splits: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    features: Features | None
    evaluator: Evaluator
    resolved: Resolved
    notes: list[str]
    provenance: dict


def run_validation(cfg: ValidationConfig, progress: bool = True, log: Log = print) -> dict:
    """The whole validate_2fold run; returns the JSON record as written (metrics not measured are None), and
    its path as `json_path`."""
    began = time.time()
    setup = set_up(cfg, log)
    with output_lock(setup.run.summary_path, "validate_2fold run"):
        record = run_folds(setup, began, progress, log)
    return {**plain(record_json(record)), "json_path": str(setup.run.summary_path)}


def run_folds(setup: RunSetup, began: float, progress: bool, log: Log) -> RunRecord:
    """Every fold an earlier run of this identity did not leave, then the complete record; run by one process."""
    kept, kept_seconds = setup.run.finished_folds()
    for entry in kept.values():  # before anything is written, so that a bad one leaves the record as it was
        read_fold_answers(entry, setup.cfg.output_name)
    folds: list[FoldEntry] = []
    for fold, split in enumerate(setup.splits):
        if fold in kept:
            unverified = " (recorded before runs kept file digests: not verified)" if kept[fold].files.sha256 is None \
                else ""
            log(f"Fold {fold}: kept from {setup.run.summary_path} (same settings; delete that file to recompute)"
                f"{unverified}")
            folds.append(kept[fold])
            continue
        folds.append(run_fold(setup, fold, split, progress, log))
        # Rewritten only once it holds something new: a rerun that fails never downgrades a complete record.
        setup.run.write(run_record(setup, folds, kept_seconds + time.time() - began))
    # The time that computed the record's folds: a rerun that keeps them all adds nothing to it.
    computed = len(kept) < len(setup.splits)
    record = run_record(setup, folds, kept_seconds + (time.time() - began if computed else 0.0),
                        totals(setup, folds, log))
    setup.run.write(record)
    return record


def set_up(cfg: ValidationConfig, log: Log) -> RunSetup:
    """Local checks first, then the judges (which may ask the hub) and the documents, then the model."""
    # Resolve the model and the data, before anything loads a model.
    cfg.check()
    metrics = set(cfg.metrics)
    source = resolve_model_source(cfg.model_name, cfg.model_prefix, cfg.model_path,
                                  (cfg.seed, cfg.num_heads[0], cfg.alpha[0]) if not cfg.selects else None)
    dataset, read = load_items(cfg)
    splits = all_fold_splits(len(dataset.items), cfg.num_fold, cfg.val_ratio, cfg.seed, cfg.split_rng)
    wanted = list(feature_sets(cfg)) if max(cfg.num_heads) > 0 else []
    found = require_feature_sets(wanted) if wanted else []
    if cfg.resume and earlier_run_path(cfg, complete=False) is None:
        raise UsageError(f"--resume: no earlier run of these settings in {cfg.results_dir}; drop --resume to start it")
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

    # Name the run from what was loaded.
    data = items_digest(dataset)
    run = Run.resolve(cfg, {
        # The model as loaded (config, tokenizer, weight sample in its dtype): the same bits on any machine.
        "model_path": short_digest(fingerprint), "dtype": str(model.dtype),
        "dataset_path": data if cfg.custom else None, "tqa_path": None if cfg.custom else data,
        "owt_path": digest(owt_texts) if owt_texts is not None else owt_source,
        "features_dir": features.provenance.features if features is not None else None,
        **{field: judge_sources.get(kind, getattr(cfg, field)) for kind, _, field in JUDGED.values()},
    })

    # How the test questions are scored.
    prompting = evaluation_prompting(cfg, tokenizer, source)
    spec = EvalSpec(frozenset(metrics), cfg.output_name, cfg.batch_size, cfg.max_new_tokens, add_period=not cfg.custom)
    judges = JudgePanel(judge_sources, cfg.device, cfg.dtype, cfg.sequential_loading, cfg.batch_size) \
        if judge_sources else None
    ce_kl = CeKl(owt_texts, tokenizer, cfg.seed, cfg.batch_size, cfg.owt_samples) if metrics & {"ce", "kl"} else None
    resolved = Resolved(model_source=source, model_dtype=str(model.dtype), model_fingerprint=fingerprint,
                        judges=judge_sources,
                        owt_source=owt_source, questions=len(dataset.items), tqa_source=dataset.source,
                        tuning_dataset=cfg.tuning_dataset, prompt=prompting.prompt("{question}"), method=cfg.method,
                        intervenes=cfg.intervenes)
    provenance = run_provenance(dataclasses.asdict(cfg), features_read, source, str(input_device(model)))
    return RunSetup(cfg, run, dataset.items, splits, features, Evaluator(model, tokenizer, prompting, spec, judges, ce_kl),
                    resolved, notes, provenance)


def run_fold(setup: RunSetup, fold: int, questions: tuple[np.ndarray, ...], progress: bool, log: Log) -> FoldEntry:
    """One fold, as the module docstring says; returns the fold's entry of the record."""
    cfg, run, items = setup.cfg, setup.run, setup.items
    train, val, test = questions
    log(f"Running fold {fold}")
    split = Split(train, val, test, sigma=np.concatenate([train, val]) if cfg.sigma_questions == "dev" else None,
                  fold=fold)
    parts = {"train": train, "val": val, "test": test}
    selection = None
    if cfg.selects:
        selection, parts["select"] = select_setting(setup, split, log)
    k, alpha = (selection.chosen["K"], selection.chosen["alpha"]) if selection else cfg.settings[0]
    splits = {part: str(write_csv(run.split_path(fold, part), questions_frame([items[q] for q in ids])))
              for part, ids in parts.items()}
    shifts, reports = None, {}
    if setup.features is not None:
        shifts, report = fit_head_shifts(setup.features, split, recipe_of(cfg, k, alpha))
        for table, rows in (("heads", report.heads), ("layers", report.layers)):
            if table == "heads" or not rows.empty:
                path = run.fold_file(fold, "probe_report", f"_{table}.csv")
                reports[f"probe_report_{table}"] = str(write_csv(path, rows))
    if k == 0:
        shifts = None
    head_shifts = None
    if shifts is not None:
        head_shifts = str(shifts.save(run.fold_file(fold, "head_shifts_dump", "")))
        log(f"Heads intervened: {sorted(shifts.head_list())}")
    frame, results = setup.evaluator.evaluate(shifts, [items[q] for q in test], progress=progress)
    answers = str(write_csv(run.fold_file(fold, "answer_dump"), frame))
    summary = str(write_csv(run.fold_file(fold, "summary_dump"), summary_frame(cfg.output_name, fold, (k, alpha),
                                                                               results)))
    shift_files = [f"{head_shifts}/{name}" for name in (TENSORS_FILE, METADATA_FILE)] if head_shifts else []
    written = [*splits.values(), *shift_files, *reports.values(), answers, summary]
    files = FoldFiles(splits=splits, head_shifts=head_shifts, answers=answers, summary=summary, **reports,
                      sha256={path: sha256_of(path) for path in written})
    log(f"FOLD {fold}: " + ", ".join(f"{key}: {shown(value)}" for key, value in results.items()))
    if selection is not None:
        selection.chosen_test = results[selection.metric]
    return FoldEntry(fold=fold, train=train.tolist(), val=val.tolist(), test=test.tolist(), K=k, alpha=alpha,
                     selection=selection, heads=shifts.head_list() if shifts is not None else [], results=results,
                     files=files, probe_report=({"fold": fold, "K": k, "alpha": alpha, **shifts.provenance.probe_report}
                                                if shifts is not None else None))


def select_setting(setup: RunSetup, split: Split, log: Log) -> tuple[Selection, np.ndarray]:
    """Score every (K, α) on questions set aside from the fold's development questions, with shifts built from
    the others (iti.selection), and choose one; also returns the questions scored."""
    cfg = setup.cfg
    metric = SELECT_METRIC_NAMES[cfg.select_metric]
    scoring = setup.evaluator.spec.only(selection_options(cfg.select_metric) | ({"kl"} if cfg.max_kl is not None
                                                                                 else set()))
    inner, selecting = selection_split(split, cfg.select_ratio, cfg.val_ratio, cfg.seed)
    scored = [setup.items[q] for q in selecting]

    def score(shifts) -> dict[str, float]:
        results = setup.evaluator.evaluate(shifts, scored, scoring, progress=False)[1]
        return {metric: results[metric], "KL": results["KL"]}

    table = score_settings(setup.features, inner, cfg.settings, recipe_of(cfg, 1, 1.0), score) if setup.features \
        else [{"K": k, "alpha": a, **score(None)} for k, a in cfg.settings]
    for row in table:
        log(f"selection: K {row['K']}, alpha {row['alpha']:g}: {metric} {row[metric]:.4f}"
            + (f", KL {row['KL']:.4f}" if cfg.max_kl is not None else ""))
    chosen, note = choose_setting(table, metric, cfg.max_kl)
    edge = edge_note(chosen, cfg.settings)
    for message in (note, edge):
        if message:
            log(f"note: {message}")
    log(f"chosen on {len(scored)} set-aside questions: K {chosen['K']}, alpha {chosen['alpha']:g}")
    return Selection(scheme="three-way split of the development questions", metric=metric, max_kl=cfg.max_kl,
                     select_ratio=cfg.select_ratio, counts={"train": len(inner.train), "val": len(inner.val),
                                                            "select": len(selecting)},
                     table=table, chosen=chosen, note=note, edge_note=edge), selecting


def run_record(setup: RunSetup, folds: list[FoldEntry], seconds: float, done: dict[str, Any] | None = None) -> RunRecord:
    """The run's record, built here only: what set_up resolved, the folds so far and the time they took; `done`
    (the totals once every fold is done) completes it."""
    return RunRecord(config=dataclasses.asdict(setup.cfg), identity=setup.run.identity, name=setup.run.name,
                     resolved=setup.resolved, notes=setup.notes, folds=list(folds), complete=done is not None,
                     provenance=setup.provenance, seconds=seconds, **(done or {}))


def totals(setup: RunSetup, folds: list[FoldEntry], log: Log) -> dict[str, Any]:
    """What completes the record: means over folds, the probe report table, intervals and categories, the final line."""
    cfg = setup.cfg
    final = mean_over_folds([{key: np.nan if value is None else float(value) for key, value in f.results.items()}
                             for f in folds])
    reported = [f.probe_report for f in folds if f.probe_report]
    table = report_table(reported, cfg.alpha[0], cfg.num_heads[0]) if reported else None
    if table:
        log("Probe report:\n" + table)
    # From the answer files, so that folds kept from an earlier run count too.
    answers = pd.concat([read_fold_answers(f, cfg.output_name) for f in folds], ignore_index=True)
    bootstrap, categories = pooled_statistics(answers, cfg.output_name)
    if cfg.selects:
        line = final_line("/".join(f"{f.alpha:g}" for f in folds), "/".join(str(f.K) for f in folds), final)
    else:
        line = final_line(cfg.alpha[0], cfg.num_heads[0], final)
    return dict(final=final, final_line=line, probe_report_table=table, categories=categories,
                bootstrap=Bootstrap(intervals=bootstrap, level=BOOTSTRAP_LEVEL, resamples=BOOTSTRAP_RESAMPLES,
                                    seed=BOOTSTRAP_SEED, over="test questions, folds pooled"))
