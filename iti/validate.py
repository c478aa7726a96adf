"""validate_2fold: per fold, head shifts from the development questions, evaluation on the test questions.

Features are read under the name of the model being run (`{model_prefix}{model_name}`, as
get_activations writes them). `--limit N` keeps the first N questions (MC order) for the folds and
the first N questions of the tuning set (its own order, as get_activations --limit N extracts them).

Layout under `results_dir` (the public workflow's, with `_limit_{N}` added to names of runs on the
first N questions so they never overwrite full runs):
- `splits/fold_{i}_{train|val|test}_seed_{seed}.csv`: each fold's questions (TruthfulQA columns);
- `results_dump/head_shifts_dump/{name}_fold_{i}{method}/`: the fold's HeadShifts;
- `results_dump/answer_dump/{name}_fold_{i}{method}.csv`: one row per test question, the model's
  answer and every per-question score, columns `{model} MC1`, `{model} GPT-judge acc`, …;
- `results_dump/summary_dump/{name}_fold_{i}{method}.csv`: the fold's means;
- `results_dump/summary_dump/{name}{method}.json`: the full config, each fold's heads and results,
  and the means over folds (rewritten after every fold, `complete` once all are done), then each
  metric's 95% bootstrap interval over the test questions (folds pooled), its mean per category,
  and the provenance (iti.provenance: commit, versions, device, feature hashes, model, config),
where name = `{model}_seed_{seed}_top_{K}_heads_alpha_{α}` and method = `_com`, `_random` or nothing.
Every file is written under a temporary name and renamed, so a killed run leaves earlier folds whole.

Several K or α (`--num_heads 8 16 --alpha 0 5 15`): per fold, the probes are trained once on the
training questions; every setting is scored on the fold's validation questions (by --select_metric,
within --max_kl) and only the chosen one is evaluated on the test questions. Each fold's choice and
its validation table go to the JSON. Choosing reads no test question: the probes, directions and
validation scores use development questions only, and so does σ with --sigma_questions dev (with
`all`, the public default, σ spreads over every tuning row, test questions' unlabelled rows included).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from iti.activations import (FeatureSet, feature_files, find_feature_set, load_features, read_meta,
                             require_feature_sets)
from iti.config import (
    HASHED_SETTINGS,
    PROBING_DATASETS,
    SELECT_METRIC_NAMES,
    SPLIT_SETTINGS,
    HeadShiftOptions,
    ValidationConfig,
    selection_options,
    settings_hash,
)
from iti.ce_kl import CeKl, load_owt_texts
from iti.contrastive import ContrastiveDataset, dataset_record, load_dataset_file, truthfulqa_dataset
from iti.data import GenerationQuestion, TruthfulQA, load_truthfulqa
from iti.errors import UsageError
from iti.generation import generate_answers
from iti.head_shifts import HeadShifts
from iti.intervention import ShiftedModel
from iti.files import plain, write_csv, write_json
from iti.judges import ACCURACY_THRESHOLD, JudgePanel, check_judge_source
from iti.mc import evaluate_mc
from iti.metrics import METRICS as METRIC_TABLE
from iti.metrics import mean_over_folds, with_products
from iti.models import head_geometry, input_device, load_model, resolve_device, resolve_model_source
from iti.probes import ProbeResult, all_fold_splits, rows_of_questions, train_probes
from iti.prompts import Prompting, prompting_for
from iti.report import ProbeReport, layer_probe_table, probe_report, report_table
from iti.provenance import run_provenance
from iti.selection import check_features, choose_setting, head_shifts_from_probes
from iti.statistics import BOOTSTRAP_LEVEL, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, intervals, metric_values

# Result keys of a fold, and their column names in the public workflow's summary files.
SUMMARY_COLUMNS = {metric.name: metric.column for metric in METRIC_TABLE}


def run_name(cfg: ValidationConfig, fold: int | None = None) -> str:
    """`{model}[_{dataset}]_seed_{seed}_top_{K}_heads_alpha_{α}[_limit_{N}][_{hash}][_fold_{i}][_com|_random]`.

    α is written with `:g` (15 → "15", 2.5 → "2.5"): the public int(α) made sweeps over
    fractional α overwrite each other. The hash stands for the other settings that change the
    numbers (HASHED_SETTINGS) where they differ from the defaults; the JSON summary spells them out.
    """
    heads = "-".join(str(k) for k in cfg.num_heads)
    alphas = "-".join(f"{alpha:g}" for alpha in cfg.alpha)
    name = f"{cfg.output_name}{dataset_tag(cfg)}_seed_{cfg.seed}_top_{heads}_heads_alpha_{alphas}"
    if cfg.limit is not None:
        name += f"_limit_{cfg.limit}"
    name += settings_hash(cfg, HASHED_SETTINGS)
    if fold is not None:
        name += f"_fold_{fold}"
    return name + {"center_of_mass": "_com", "random": "_random", "probe": ""}[cfg.method]


def summary_path(cfg: ValidationConfig) -> Path:
    """The run's summary JSON; `complete: true` in it marks a finished run (sweeps skip those)."""
    return Path(cfg.results_dir) / "results_dump" / "summary_dump" / f"{run_name(cfg)}.json"


def dataset_tag(cfg: ValidationConfig) -> str:
    """`_{dataset_name}` in the names of a --dataset_path run's files, so it never overwrites a TruthfulQA
    run; TruthfulQA runs keep the public names."""
    return f"_{cfg.dataset_name}" if cfg.custom else ""


def questions_frame(records: list[GenerationQuestion]) -> pd.DataFrame:
    """TruthfulQA.csv's columns for these questions (answers joined with "; ")."""
    return pd.DataFrame({
        "Category": [r.category for r in records],
        "Question": [r.question for r in records],
        "Best Answer": [r.best_answer for r in records],
        "Correct Answers": ["; ".join(r.correct_answers) for r in records],
        "Incorrect Answers": ["; ".join(r.incorrect_answers) for r in records],
    })


# ----------------------------------------------------------------------------- items and prompts

def load_items(cfg: ValidationConfig) -> tuple[ContrastiveDataset, TruthfulQA | None]:
    """The run's items, first `--limit` of them: a §9 file in file order, else TruthfulQA in MC order."""
    if cfg.custom:
        return load_dataset_file(cfg.dataset_path, cfg.dataset_name).first(cfg.limit), None
    tqa = load_truthfulqa(cfg.tqa_path)
    return truthfulqa_dataset(tqa).first(cfg.limit), tqa


def evaluation_prompting(cfg: ValidationConfig, tokenizer, model_label: str) -> Prompting:
    """TruthfulQA: instruction (default `default`) and the QA primer (spec §6). A §9 dataset: the bare
    question unless an instruction is asked for, which brings the primer with it (spec §9)."""
    instruction = cfg.instruction_prompt or ("none" if cfg.custom else "default")
    primer = not cfg.custom or cfg.instruction_prompt is not None
    return prompting_for(cfg.prompt_format, tokenizer, model_label, instruction_prompt=instruction, primer=primer)


# ----------------------------------------------------------------------------- features

@dataclass
class ProbingFeatures:
    acts: np.ndarray
    labels: np.ndarray
    question_ids: np.ndarray  # per row: the item, in the folds' order (TruthfulQA: multiple-choice order)
    tuning_acts: np.ndarray
    layer_acts: np.ndarray | None  # the probing set's residual streams, for the best-layer probe
    tuning_question_ids: np.ndarray  # per tuning row, in multiple-choice order (-1: not a TruthfulQA question)
    files: list[Path]  # every file read, for the provenance's content hashes


def mc_order_ids(question_ids: np.ndarray, dataset: str, tqa: TruthfulQA) -> np.ndarray:
    """Question ids of a TruthfulQA feature set in the multiple-choice order the folds use (the
    generation sets index questions in generation order); -1 for rows of no TruthfulQA question."""
    if dataset == "tqa_mc2":
        return question_ids
    mc_index = {q.question.strip(): i for i, q in enumerate(tqa.multiple_choice)}
    to_mc = np.array([mc_index.get(q.question.strip(), -1) for q in tqa.generation])
    inside = (question_ids >= 0) & (question_ids < len(to_mc))
    return np.where(inside, to_mc[np.clip(question_ids, 0, len(to_mc) - 1)], -1)


def feature_sets(cfg: ValidationConfig) -> tuple[FeatureSet, FeatureSet]:
    """(probing set, tuning set), both extracted from the model being run. With --limit, the
    `_limit_{N}` sets, else the first N questions of the full sets; but a generation-order probing set
    must be the full one, since its first N questions are not the first N of the (MC-order) folds; so
    must the tuning set for --sigma_questions dev, which takes the rows of MC-order questions."""
    probe_limit = cfg.limit if cfg.dataset_name == "tqa_mc2" or cfg.custom else None
    tuning_limit = cfg.limit if cfg.sigma_questions == "all" else None
    common = dict(features_dir=Path(cfg.features_dir), model_name=cfg.output_name, model_path=cfg.model_path)
    return (FeatureSet(dataset=cfg.dataset_name, limit=probe_limit, **common),
            FeatureSet(dataset=cfg.tuning_dataset, limit=tuning_limit, **common))


def check_feature_record(cfg: HeadShiftOptions, wanted: FeatureSet) -> None:
    """Features made with another prompt format, or from another file under the same name, are refused."""
    found = find_feature_set(wanted)
    path = found.path("meta") if found is not None else None
    if path is None or not path.is_file():
        return
    meta = read_meta(found)
    made_with = meta.get("prompt_format", "raw")
    if made_with != cfg.prompt_format:
        raise UsageError(f"{path.name}: these features were extracted with --prompt_format {made_with}, this run "
                         f"asks for {cfg.prompt_format}; re-extract them or pass --prompt_format {made_with}")
    made_from = meta.get("dataset_path")
    if cfg.custom and wanted.dataset == cfg.dataset_name and made_from is not None and \
            made_from != dataset_record(cfg.dataset_path):
        raise UsageError(f"{path.name}: the features named {wanted.dataset} were made from {made_from}, not "
                         f"{cfg.dataset_path}; re-extract them or give another --dataset_name")


def load_probing_features(cfg: ValidationConfig, tqa: TruthfulQA | None, num_questions: int) -> ProbingFeatures:
    """The probing set (rows indexed by item in fold order: TruthfulQA's MC order, a §9 file's order), its
    residual streams when they were extracted, and the tuning set."""
    probing, tuning = feature_sets(cfg)
    require_feature_sets([probing, tuning])
    for wanted in (probing, tuning):
        check_feature_record(cfg, wanted)
    acts, labels, question_ids = load_features(probing.features_dir, probing.model_name, probing.dataset,
                                               limit=probing.limit, model_path=cfg.model_path)
    if tqa is not None:
        question_ids = mc_order_ids(question_ids, cfg.dataset_name, tqa)
    covered = np.unique(question_ids[(question_ids >= 0) & (question_ids < num_questions)])
    if len(covered) < num_questions:
        raise UsageError(
            f"the {cfg.dataset_name} features of {cfg.output_name} in {probing.features_dir} cover {len(covered)} of the "
            f"{num_questions} questions this run uses; extract them for all questions with "
            f"`{dataclasses.replace(probing, limit=None).command()}`")
    tuning_acts, _, tuning_question_ids = load_features(tuning.features_dir, tuning.model_name, tuning.dataset,
                                                        limit=tuning.limit, model_path=cfg.model_path)
    if tqa is not None and cfg.tuning_dataset in PROBING_DATASETS:
        tuning_question_ids = mc_order_ids(tuning_question_ids, cfg.tuning_dataset, tqa)
    elif tqa is not None:
        tuning_question_ids = np.full(len(tuning_question_ids), -1)
    files = [path for wanted in (probing, tuning)
             for path in feature_files(wanted.features_dir, wanted.model_name, wanted.dataset, limit=wanted.limit)]
    layer_acts = None
    if find_feature_set(probing, "layer_wise") is not None:
        layer_acts, _, _ = load_features(probing.features_dir, probing.model_name, probing.dataset, "layer_wise",
                                         limit=probing.limit, model_path=cfg.model_path)
    return ProbingFeatures(acts, labels, question_ids, tuning_acts, layer_acts, tuning_question_ids, files)


def check_feature_geometry(features: ProbingFeatures, geometry, cfg: ValidationConfig) -> None:
    expected = (geometry.num_layers, geometry.width)
    for dataset, acts in ((cfg.dataset_name, features.acts), (cfg.tuning_dataset, features.tuning_acts)):
        if acts.ndim != 3 or acts.shape[1:] != expected:
            raise UsageError(
                f"the {dataset} features of {cfg.output_name} in {cfg.features_dir} have per-row shape "
                f"{acts.shape[1:]} but the model has {geometry.num_layers} layers x {geometry.width} (heads x head_dim): "
                f"they come from another model; re-extract them with this model")
    total = geometry.num_layers * geometry.num_heads
    if max(cfg.num_heads) > total:
        raise UsageError(f"--num_heads {max(cfg.num_heads)} exceeds the model's {total} attention heads")


# ----------------------------------------------------------------------------- one fold

def evaluate_fold(shifted: ShiftedModel, tokenizer, records: list[GenerationQuestion], cfg: ValidationConfig,
                  judges: JudgePanel | None, ce_kl: CeKl | None, progress: bool = True,
                  prompting: Prompting | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """(answer frame, means) of the given questions; metrics not asked (or not computable) are NaN.

    Answers get TruthfulQA's closing period only on TruthfulQA (spec §9)."""
    prompting = prompting or evaluation_prompting(cfg, tokenizer, cfg.output_name)
    tag = cfg.output_name
    metrics = set(cfg.metrics)
    frame = questions_frame(records)
    results = {key: math.nan for key in SUMMARY_COLUMNS}
    if "mc" in metrics:
        mc = evaluate_mc(shifted, tokenizer, records, prompting, batch_size=cfg.batch_size, progress=progress,
                         add_period=not cfg.custom)
        frame[f"{tag} lprob max"] = [max(r.true_scores) for r in mc]
        frame[f"{tag} lprob diff"] = [max(r.true_scores) - max(r.false_scores) for r in mc]
        frame[f"{tag} lprob scores-true"] = [json.dumps(r.true_scores) for r in mc]
        frame[f"{tag} lprob scores-false"] = [json.dumps(r.false_scores) for r in mc]
        for key in ("MC1", "MC2", "MC3"):
            frame[f"{tag} {key}"] = [getattr(r, key.lower()) for r in mc]
            results[key] = float(frame[f"{tag} {key}"].mean())
    if ce_kl is not None:
        results.update({key.upper(): value for key, value in ce_kl.metrics(shifted, metrics, progress).items()})
    if judges is not None:
        questions = [r.question for r in records]
        frame[tag] = generate_answers(shifted, tokenizer, questions, prompting,
                                      max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size, progress=progress)
        scores = judges.score(questions, frame[tag].tolist(), shifted.model, progress=progress)
        for kind, key, column in (("truth", "True", "GPT-judge"), ("info", "Info", "GPT-info")):
            if kind in scores:
                frame[f"{tag} {column}"] = scores[kind]
                frame[f"{tag} {column} acc"] = (scores[kind] >= ACCURACY_THRESHOLD).astype(float)
                results[key] = float(frame[f"{tag} {column} acc"].mean())
    return frame, with_products(results)


# Metrics scored per question (each a column of the answer files); the rest are run-level.
PER_QUESTION_METRICS = ("MC1", "MC2", "MC3", "True", "Info")


def answer_scores(frame: pd.DataFrame, tag: str) -> dict[str, np.ndarray]:
    """Per-question scores of an answer file (one array per metric it has), in the frame's row order."""
    columns = {key: f"{tag} {SUMMARY_COLUMNS[key]}" for key in PER_QUESTION_METRICS}
    return {key: frame[column].to_numpy(dtype=np.float64) for key, column in columns.items() if column in frame}


def summary_frame(cfg: ValidationConfig, fold: int, setting: tuple[int, float], results: dict[str, float]) -> pd.DataFrame:
    row = {"Model": cfg.output_name, "alpha": setting[1], "K": setting[0], "fold": fold}
    row.update({column: results[key] for key, column in SUMMARY_COLUMNS.items()})
    return pd.DataFrame([row])


def final_line(alpha, num_heads, results: dict[str, float]) -> str:
    """The public workflow's summary line, numbers rounded to 4 decimals (the JSON keeps them whole);
    with a choice per fold, alpha and heads list the folds' choices."""
    r = {key: f"{value:.4f}" for key, value in results.items()}
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
        means = metric_values({name: float(np.mean(values)) for name, values in answer_scores(group, tag).items()})
        categories[str(category)] = {"questions": len(group), **means}
    return bootstrap, categories


# ----------------------------------------------------------------------------- the run

def run_validation(cfg: ValidationConfig, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """The whole validate_2fold run; returns what the JSON file holds (config, folds, final means)."""
    began = time.time()
    cfg.check()
    metrics = set(cfg.metrics)
    # Local checks first (model name, questions, features), then the judges, which may ask the hub.
    source = resolve_model_source(cfg.model_name, cfg.model_prefix, cfg.model_path,
                                  (cfg.seed, cfg.num_heads[0], cfg.alpha[0]) if not cfg.selects else None)
    dataset, tqa = load_items(cfg)
    records = dataset.items
    num_questions = len(records)
    splits = all_fold_splits(num_questions, cfg.num_fold, cfg.val_ratio, cfg.seed, cfg.split_rng)
    features = load_probing_features(cfg, tqa, num_questions) if max(cfg.num_heads) > 0 else None
    json_path = summary_path(cfg)
    finished = finished_folds(cfg, json_path)

    notes: list[str] = []
    judge_sources = {}
    if "judge" in metrics:
        judge_sources["truth"] = check_judge_source(cfg.judge_model, "--judge_model")
    if "info" in metrics:
        judge_sources["info"] = check_judge_source(cfg.info_model, "--info_model")
    owt_texts, owt_source = (None, None)
    if metrics & {"ce", "kl"}:
        owt_texts, owt_source = load_owt_texts(cfg.owt_path)
        if owt_texts is None:
            if cfg.max_kl is not None and cfg.selects:
                raise UsageError(f"--max_kl needs OpenWebText texts to measure KL, but {owt_source}; "
                                 "give --owt_path (validation/write_local_text.py writes a stand-in)")
            notes.append(f"CE and KL left empty: {owt_source}")
            log(f"note: {notes[-1]}")

    model, tokenizer = load_model(source, cfg.device, cfg.dtype, cfg.trust_remote_code)
    geometry = head_geometry(model.config)
    prompting = evaluation_prompting(cfg, tokenizer, source)
    if features is not None:
        check_feature_geometry(features, geometry, cfg)
    judges = JudgePanel(judge_sources, cfg.device, cfg.dtype, cfg.sequential_loading, cfg.batch_size) \
        if judge_sources else None
    ce_kl = CeKl(owt_texts, tokenizer, cfg.seed, cfg.batch_size, cfg.owt_samples) if metrics & {"ce", "kl"} else None

    results_dir = Path(cfg.results_dir)
    dump = results_dir / "results_dump"
    limit_tag = (f"_limit_{cfg.limit}" if cfg.limit is not None else "") + settings_hash(cfg, SPLIT_SETTINGS)
    record = {
        "config": dataclasses.asdict(cfg),
        "resolved": {"model_source": source, "model_dtype": str(model.dtype), "judges": judge_sources,
                     "owt_source": owt_source, "questions": num_questions, "tqa_source": dataset.source,
                     "tuning_dataset": cfg.tuning_dataset, "prompt": prompting.prompt("{question}"),
                     "method": cfg.method, "intervenes": cfg.intervenes},
        "notes": notes, "folds": [], "final": None, "final_line": None, "complete": False,
        "provenance": run_provenance(dataclasses.asdict(cfg), features.files if features else [], source,
                                     str(input_device(model))),
    }
    fold_results = []
    for fold, (train, val, test) in enumerate(splits):
        if fold in finished:
            log(f"Fold {fold}: kept from {json_path} (same settings; delete that file to recompute)")
            record["folds"].append(finished[fold])
            fold_results.append(_results_from_json(finished[fold]["results"]))
            continue
        log(f"Running fold {fold}")
        split_files = {}
        for part, questions in (("train", train), ("val", val), ("test", test)):
            path = results_dir / "splits" / f"fold_{fold}_{part}{dataset_tag(cfg)}_seed_{cfg.seed}{limit_tag}.csv"
            split_files[part] = str(write_csv(path, questions_frame([records[q] for q in questions])))
        name = run_name(cfg, fold)
        shifts_by_k, report, report_files = {}, None, {}
        if features is not None:
            rows = [rows_of_questions(features.question_ids, part) for part in (train, val, test)]
            probes = train_probes(features.acts, features.labels, rows[0], rows[1], geometry.num_heads,
                                  backend=cfg.probe_backend, device=_probe_device(cfg), seed=cfg.seed)
            report = fold_probe_report(cfg, features, probes, geometry.num_heads, *rows)
            shifts_by_k = _fold_head_shifts(cfg, features, geometry, train, val, fold, source, probes)
            report_files = write_probe_report(report, dump / "probe_report" / name)
        selection = None
        if cfg.selects:
            selection = select_setting(cfg, model, tokenizer, shifts_by_k, [records[q] for q in val], judges,
                                       ce_kl, prompting, log)
            setting = (selection["chosen"]["K"], selection["chosen"]["alpha"])
        else:
            setting = cfg.settings[0]
        shifts, shifts_dir = (shifts_by_k[setting[0]].scaled(setting[1]), None) if setting[0] > 0 else (None, None)
        if shifts is not None:
            shifts.provenance["probe_report"] = {"fold": fold, "K": setting[0], "alpha": setting[1],
                                                 **report.summary(shifts.head_list())}
            shifts_dir = str(shifts.save(dump / "head_shifts_dump" / name))
            log(f"Heads intervened: {sorted(shifts.head_list())}")
        frame, results = evaluate_fold(shifted_model(model, shifts), tokenizer, [records[q] for q in test], cfg, judges,
                                       ce_kl, progress, prompting)
        answer_path = write_csv(dump / "answer_dump" / f"{name}.csv", frame)
        fold_summary = write_csv(dump / "summary_dump" / f"{name}.csv", summary_frame(cfg, fold, setting, results))
        log(f"FOLD {fold}: " + ", ".join(f"{k}: {v:.4f}" for k, v in results.items()))
        fold_results.append(results)
        record["folds"].append({
            "fold": fold, "train": train.tolist(), "val": val.tolist(), "test": test.tolist(),
            "K": setting[0], "alpha": setting[1], "selection": selection,
            "heads": shifts.head_list() if shifts is not None else [], "results": results,
            "files": {"splits": split_files, "answers": str(answer_path), "summary": str(fold_summary),
                      "head_shifts": shifts_dir, **report_files},
            "probe_report": shifts.provenance["probe_report"] if shifts is not None else None,
        })
        record["seconds"] = time.time() - began
        write_json(json_path, record)
    final = mean_over_folds(fold_results)
    reported = [f["probe_report"] for f in record["folds"] if f.get("probe_report")]
    if reported:
        record["probe_report_table"] = report_table(reported, cfg.alpha[0], cfg.num_heads[0])
        log("Probe report:\n" + record["probe_report_table"])
    # From the answer files, so that folds kept from an earlier run count too.
    answers = pd.concat([pd.read_csv(f["files"]["answers"]) for f in record["folds"]], ignore_index=True)
    bootstrap, categories = pooled_statistics(answers, cfg.output_name)
    if cfg.selects:
        line = final_line("/".join(f"{f['alpha']:g}" for f in record["folds"]),
                          "/".join(str(f["K"]) for f in record["folds"]), final)
    else:
        line = final_line(cfg.alpha[0], cfg.num_heads[0], final)
    record.update(final=final, final_line=line, complete=True, seconds=time.time() - began,
                  bootstrap={"intervals": bootstrap, "level": BOOTSTRAP_LEVEL, "resamples": BOOTSTRAP_RESAMPLES,
                             "seed": BOOTSTRAP_SEED, "over": "test questions, folds pooled"},
                  categories=categories)
    write_json(json_path, record)
    record["json_path"] = str(json_path)
    return record


# Settings that change how a fold is computed, not what: --resume keeps folds made with others.
EXECUTION_SETTINGS = ("batch_size", "device", "sequential_loading", "resume")


def finished_folds(cfg: ValidationConfig, json_path: Path) -> dict[int, dict]:
    """The folds a killed or finished run of the same settings completed (its files all present), by index.

    Without --resume only a run of identical settings counts, and anything else starts afresh; with
    --resume the execution settings may differ, and a missing or different run is an error.
    """
    previous = _read_json(json_path)
    if previous is None:
        if cfg.resume:
            raise UsageError(f"--resume: no earlier run of these settings at {json_path}; drop --resume to start it")
        return {}
    current = plain(dataclasses.asdict(cfg))
    recorded = previous.get("config", {})
    differing = sorted(k for k in set(current) | set(recorded) if current.get(k) != recorded.get(k))
    if differing:
        changed_results = [k for k in differing if k not in EXECUTION_SETTINGS]
        if not cfg.resume:
            return {}
        if changed_results:
            raise UsageError(f"--resume: the run in {json_path} used other settings ({', '.join(changed_results)}); "
                             "drop --resume to recompute it with these")
    return {entry["fold"]: entry for entry in previous.get("folds", []) if _fold_files_present(entry)}


def _read_json(path: Path) -> dict | None:
    """The summary a run of these settings wrote; None when there is none or the file is not one."""
    from iti.summaries import read_summary

    try:
        return read_summary(path)
    except UsageError:
        return None


def _fold_files_present(entry: dict) -> bool:
    files = entry.get("files", {})
    paths = [files.get("answers"), files.get("summary"), *files.get("splits", {}).values()]
    shifts = files.get("head_shifts")
    return all(p and Path(p).is_file() for p in paths) and (shifts is None or Path(shifts).is_dir())


def _results_from_json(results: dict) -> dict[str, float]:
    """A fold's results as written (NaN saved as null) back to numbers."""
    return {key: math.nan if value is None else float(value) for key, value in results.items()}


def fold_probe_report(cfg: ValidationConfig, features: ProbingFeatures, probes: ProbeResult, num_heads: int,
                      train_rows: np.ndarray, val_rows: np.ndarray, test_rows: np.ndarray) -> ProbeReport:
    """The fold's probe report (spec §9): head probes on validation and test rows, the best residual-stream layer."""
    layers = None
    if features.layer_acts is not None:
        layers = layer_probe_table(features.layer_acts, features.labels, train_rows, val_rows, test_rows,
                                   cfg.probe_backend, cfg.seed, _probe_device(cfg))
    return probe_report(features.acts, features.labels, features.question_ids, probes, num_heads,
                        train_rows, val_rows, test_rows, layers)


def write_probe_report(report: ProbeReport, stem: Path) -> dict[str, str]:
    """`{stem}_heads.csv` (every head) and `{stem}_layers.csv` (every layer's residual-stream probe)."""
    files = {"probe_report_heads": str(write_csv(stem.with_name(stem.name + "_heads.csv"), report.heads))}
    if not report.layers.empty:
        files["probe_report_layers"] = str(write_csv(stem.with_name(stem.name + "_layers.csv"), report.layers))
    return files


def _fold_head_shifts(cfg: ValidationConfig, features: ProbingFeatures, geometry, train: np.ndarray,
                      val: np.ndarray, fold: int, source: str, probes: ProbeResult) -> dict[int, HeadShifts]:
    """Per K > 0 tried, its head shifts (at the first α; scaled per setting), from the probes trained on
    the fold's training questions: heads and directions from the development (train + val) questions
    only; σ from the tuning set's rows of every question (--sigma_questions all, as the public
    workflow) or of the development questions only (dev)."""
    tuning = features.tuning_acts
    if cfg.sigma_questions == "dev":
        tuning = np.asarray(tuning[rows_of_questions(features.tuning_question_ids, np.concatenate([train, val]))])
    if len(tuning) == 0:
        raise UsageError(f"the {cfg.tuning_dataset} features hold no row to set σ from for fold {fold} "
                         f"(--sigma_questions {cfg.sigma_questions}, --limit {cfg.limit}); extract them for every "
                         "question")
    check_features(features.acts, tuning, geometry.num_heads, geometry.head_dim, cfg.method)
    provenance = {"model_name": cfg.output_name, "model_source": source, "dataset_name": cfg.dataset_name,
                  "dataset_path": cfg.dataset_path, "prompt_format": cfg.prompt_format,
                  "activations_dataset": cfg.tuning_dataset, "sigma_questions": cfg.sigma_questions, "fold": fold,
                  "num_fold": cfg.num_fold, "val_ratio": cfg.val_ratio, "limit": cfg.limit,
                  "features_dir": str(cfg.features_dir)}
    train_rows = rows_of_questions(features.question_ids, train)
    val_rows = rows_of_questions(features.question_ids, val)
    return {k: head_shifts_from_probes(probes, features.acts, features.labels, train_rows, val_rows, tuning,
                                       geometry.num_heads, geometry.head_dim, k, cfg.alpha[0], cfg.method,
                                       cfg.use_random_dir, cfg.probe_backend, cfg.seed, provenance)
            for k in sorted(set(cfg.num_heads)) if k > 0}


def shifted_model(model, shifts: HeadShifts | None) -> ShiftedModel:
    """The model with these shifts; α = 0 adds nothing, so the plain model is that baseline (KL exactly 0)."""
    return ShiftedModel(model, shifts if shifts is not None and shifts.alpha != 0 else None)


def select_setting(cfg: ValidationConfig, model, tokenizer, shifts_by_k: dict[int, HeadShifts],
                   val_records: list[GenerationQuestion], judges: JudgePanel | None, ce_kl: CeKl | None,
                   prompting: Prompting, log: Callable[[str], None]) -> dict:
    """Score every (K, α) on the fold's validation questions (and KL on OpenWebText under --max_kl) and
    choose one (iti.selection.choose_setting). Returns the metric, the table and the choice."""
    metric = SELECT_METRIC_NAMES[cfg.select_metric]
    needed = selection_options(cfg.select_metric) | ({"kl"} if cfg.max_kl is not None else set())
    scoring = dataclasses.replace(cfg, metrics=tuple(sorted(needed)))
    table = []
    for k, alpha in cfg.settings:
        shifts = shifts_by_k[k].scaled(alpha) if k > 0 else None
        _, results = evaluate_fold(shifted_model(model, shifts), tokenizer, val_records, scoring,
                                   judges if needed & {"judge", "info"} else None, ce_kl, False, prompting)
        table.append({"K": k, "alpha": alpha, metric: results[metric], "KL": results["KL"]})
        log(f"validation: K {k}, alpha {alpha:g}: {metric} {results[metric]:.4f}"
            + (f", KL {results['KL']:.4f}" if cfg.max_kl is not None else ""))
    chosen, note = choose_setting(table, metric, cfg.max_kl)
    if note:
        log(f"note: {note}")
    log(f"chosen on {len(val_records)} validation questions: K {chosen['K']}, alpha {chosen['alpha']:g}")
    return {"metric": metric, "max_kl": cfg.max_kl, "questions": len(val_records), "table": table,
            "chosen": chosen, "note": note}


def _probe_device(cfg: ValidationConfig) -> str:
    """The torch probes run on the evaluated model's GPU when it has one (they are small next to it)."""
    device = resolve_device(cfg.device)
    return "cuda" if device == "auto" else device
