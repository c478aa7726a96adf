"""Completed validate_2fold runs as one table: runs that differ only by seed make one row, and a row with a
baseline (an unshifted run that agrees with it on everything but the settings that act through the head shifts,
and shares its seeds, hence its folds) gets the paired difference from it, when the two pair (iti.pairing: the
same model as loaded, data, questions and folds); a row without one says why. Which runs belong together is read
from their identities (iti.identity); validation/sweeping/collect_sweep.py says what the table holds.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from iti.config import CollectConfig, ValidationConfig
from iti.errors import UsageError
from iti.evaluation import answer_scores, read_fold_answers
from iti.identity import TABLE_NAME, Role, declared, digest, named_values, readable_name, short_digest, without
from iti.metrics import METRICS, PER_QUESTION_OR_DERIVED, missing, shown, with_products
from iti.pairing import why_unpaired
from iti.runs import RunFile, RunRecord, read_run
from iti.statistics import Interval, paired_differences

METRIC_NAMES = [metric.name for metric in METRICS]
# What a baseline row's `unpaired` says: it is what the others pair with.
UNSHIFTED = "unshifted: a baseline"


def finished_runs(results_dir: Path) -> tuple[list[RunFile], list[str]]:
    """Every complete run under `results_dir` (records of versions before runs recorded their identity are left
    out), and for each summary JSON that is no run record (cut short, another program's), one line saying which
    and why: one bad file leaves the others in the table."""
    finished, unreadable = [], []
    for path in sorted((results_dir / "results_dump" / "summary_dump").glob("*.json")):
        try:
            finished.append(RunFile(path, read_run(path)))
        except UsageError as err:
            unreadable.append(str(err))
    return [run for run in finished if run.record.complete and run.record.identity is not None], unreadable


def selected_runs(cfg: CollectConfig, finished: list[RunFile]) -> list[RunFile]:
    """The runs these flags name (model, prefix, method, dataset, seed when given, limit). Without --limit: the
    full runs, or the runs of the one --limit they all used."""
    runs = [run for run in finished if _named_by(cfg, run.record.config)]
    limit = cfg.limit
    if limit is None:
        limits = {run.record.config.get("limit") for run in runs}
        if limits and None not in limits:
            if len(limits) > 1:
                raise UsageError(f"no full runs of {cfg.output_name} ({cfg.method} directions), but runs with --limit "
                                 f"{', '.join(map(str, sorted(limits)))}: pass one of those")
            limit = limits.pop()
    return [run for run in runs if run.record.config.get("limit") == limit]


def table_stem(cfg: CollectConfig, runs: list[RunFile]) -> str:
    """`{model}_{method}[_{dataset}][_limit_{N}][_seed_{S}]_{hash}`: the flags that selected the runs, then a hash
    of the runs themselves, so tables of other selections or other runs never share a file."""
    named = readable_name({**named_values(cfg), "limit": runs[0].record.config.get("limit")}, TABLE_NAME)
    return f"{named}_{short_digest(sorted(digest(run.record.identity) for run in runs))}"


def category_tag(metric: str) -> str:
    """`_by_category_{metric}` in file names, the metric as a plain name (True*Info -> True_Info)."""
    return "_by_category_" + re.sub(r"[^\w.+-]", "_", metric)


def _named_by(cfg: CollectConfig, config: dict[str, Any]) -> bool:
    method = ValidationConfig(use_center_of_mass=config.get("use_center_of_mass", False),
                              use_random_dir=config.get("use_random_dir", False)).method
    return (f"{config.get('model_prefix', '')}{config.get('model_name')}" == cfg.output_name
            and method == cfg.method and (config.get("dataset_path") is None) == (cfg.dataset_path is None)
            and (cfg.dataset_path is None or config.get("dataset_name") == cfg.dataset_name)
            and (cfg.seed is None or config.get("seed") == cfg.seed))


def repeats_key(run: RunRecord, baseline: bool = False) -> str:
    """What runs that repeat each other share: their identity but the seed; for pairing a baseline, also
    without every setting that acts only through the head shifts (an unshifted run ignores them)."""
    return json.dumps(_shared_settings(run, baseline), sort_keys=True)


def _shared_settings(run: RunRecord, baseline: bool) -> dict[str, Any]:
    return without(run.identity, ValidationConfig, (Role.SHIFTS,) if baseline else (), ("seed",))


def absent_answer_files(runs: list[RunRecord]) -> list[Path]:
    """The answer files these runs' folds list that are not there (deleted, or left on another machine)."""
    return [Path(fold.files.answers) for run in runs for fold in run.folds if not Path(fold.files.answers).is_file()]


def seed_averaged_answers(runs: list[RunRecord], tag: str) -> pd.DataFrame | None:
    """Per question (index: its text), each score averaged over the runs (seeds), folds pooled, `Category` kept;
    None if an answer file is missing."""
    if absent_answer_files(runs) or not all(run.folds for run in runs):
        return None
    per_seed = []
    for run in runs:
        answers = pd.concat([read_fold_answers(fold, tag) for fold in run.folds], ignore_index=True)
        scores = pd.DataFrame(answer_scores(answers, tag), index=answers["Question"])
        scores["Category"] = answers["Category"].to_numpy()
        per_seed.append(scores)
    merged = pd.concat(per_seed)
    return merged.groupby(level=0, sort=False).agg(
        {column: "first" if column == "Category" else "mean" for column in merged.columns})


def grid_text(values: list | float) -> str:
    """K or α of a run, `8/16` for a grid it chose from per fold (one number in records of older versions)."""
    return "/".join(f"{v:g}" for v in (values if isinstance(values, list) else [values]))


def _differing_settings(groups: list[list[RunFile]]) -> list[str]:
    """Per group, the settings (not K, α, seed) in which the groups of the table differ: as given, but those that
    change every number (the model, its dtype, the data) as resolved, so runs of two models never look alike."""
    settings = [without({**declared(runs[0].record.config, ValidationConfig),
                         **without(runs[0].record.identity, ValidationConfig, (Role.SHIFTS,))},
                        ValidationConfig, names=("num_heads", "alpha", "seed")) for runs in groups]
    varying = sorted({name for values in settings for name in values
                      if len({json.dumps(other.get(name)) for other in settings}) > 1})
    return [", ".join(f"{name}={json.dumps(values.get(name))}" for name in varying) for values in settings]


@dataclass(frozen=True)
class Paired:
    """A setting's paired differences from its baseline: the seeds both have, per metric the Interval, and the
    two seed-averaged answer frames (index: the question)."""
    seeds: list[int]
    differences: dict[str, Interval]
    treated: pd.DataFrame
    base: pd.DataFrame


def answer_tag(record: RunRecord) -> str:
    """The model as the run's answer files name their score columns (`{tag} MC2`)."""
    return f"{record.config.get('model_prefix') or ''}{record.config['model_name']}"


def pair_with_baseline(runs: list[RunRecord], baseline: list[RunRecord]) -> Paired | str:
    """The paired differences of `runs` (one setting's seeds) from `baseline` (unshifted runs) on the seeds both
    have, each question's scores averaged over those seeds, folds pooled; or why there are none (iti.pairing)."""
    reason = why_no_difference(runs, baseline)
    if reason is not None:
        return reason
    seeds = {r.config["seed"] for r in runs} & {r.config["seed"] for r in baseline}
    treated = seed_averaged_answers([r for r in runs if r.config["seed"] in seeds], answer_tag(runs[0]))
    base = seed_averaged_answers([r for r in baseline if r.config["seed"] in seeds], answer_tag(baseline[0]))
    base = base.reindex(treated.index)
    metrics = [c for c in treated.columns if c != "Category" and c in base.columns]
    if not metrics:
        return "the two runs share no per-question score (CE and KL have none)"
    differences = paired_differences({m: treated[m].to_numpy() for m in metrics},
                                     {m: base[m].to_numpy() for m in metrics})
    return Paired(sorted(seeds), differences, treated, base)


def why_no_difference(runs: list[RunRecord], baseline: list[RunRecord]) -> str | None:
    """Why `runs` get no paired difference from `baseline`: a run and the baseline's run of its seed do not pair,
    no seed is shared, or an answer file is missing; None when there is one."""
    if not baseline:
        return "no baseline run (--num_heads 0 with the same other settings) to pair with"
    by_seed = {r.config["seed"]: r for r in baseline}
    shared = [r for r in runs if r.config["seed"] in by_seed]
    for run in shared or runs[:1]:
        reason = why_unpaired(run, by_seed.get(run.config["seed"], baseline[0]))
        if reason is not None:
            return reason
    if not shared:
        return (f"no baseline run of seed {' '.join(str(r.config['seed']) for r in runs)} (the baseline's: "
                f"{' '.join(map(str, sorted(by_seed)))})")
    paired = shared + [by_seed[r.config["seed"]] for r in shared]
    absent = absent_answer_files(paired)
    if absent:
        return f"the answer file {absent[0]} is missing; run validate_2fold with that run's settings again to remake it"
    if not all(r.folds for r in paired):
        return "the records list no folds, hence no answers per question"
    return None


def collect_table(runs: list[RunFile]) -> tuple[pd.DataFrame, list[tuple[int, Paired]]]:
    """(table, pairs): one row per setting (seeds averaged) with its paired difference from its baseline or why it
    has none (`unpaired`), and per row with one, (row index, its Paired) for the per-category table."""
    groups: dict[str, list[RunFile]] = {}
    for run in runs:
        groups.setdefault(repeats_key(run.record), []).append(run)
    # Per pairing key, the plainest unshifted group: K = 0 wins over α = 0 with heads.
    unshifted = sorted(([m.record for m in members] for members in groups.values()
                        if not members[0].record.resolved.intervenes),
                       key=lambda records: max(records[0].config["num_heads"]), reverse=True)
    baselines = {repeats_key(records[0], baseline=True): records for records in unshifted}
    ordered = sorted(groups.values(), key=lambda members: (len(members[0].record.config["num_heads"]) > 1,
                                                           members[0].record.config["num_heads"],
                                                           members[0].record.config["alpha"]))
    rows, pairs = [], []
    for members, settings in zip(ordered, _differing_settings(ordered)):
        records = [m.record for m in members]
        config = records[0].config
        finals = pd.DataFrame([{k: math.nan if v is None else v for k, v in r.final.items()} for r in records])
        row = {"K": grid_text(config["num_heads"]), "alpha": grid_text(config["alpha"]),
               "chosen": "; ".join(" ".join(f"{f.K}/{f.alpha:g}" for f in r.folds) for r in records)
               if len(config["num_heads"]) * len(config["alpha"]) > 1 else "",
               "settings": settings, "seeds": " ".join(str(r.config["seed"]) for r in records),
               "limit": config.get("limit"), "folds": len(records[0].folds),
               "json": "; ".join(str(m.path) for m in members)}
        for key in METRIC_NAMES:  # the std of one seed is NaN
            row[key], row[f"{key} std"] = finals[key].mean(), finals[key].std(ddof=1)
        if not records[0].resolved.intervenes:
            row["unpaired"] = UNSHIFTED
        else:
            baseline = baselines.get(repeats_key(records[0], baseline=True))
            paired = pair_with_baseline(records, baseline) if baseline else _no_baseline(records, unshifted)
            if isinstance(paired, str):
                row["unpaired"] = paired
            else:
                row["paired seeds"] = " ".join(map(str, paired.seeds))
                for key, interval in paired.differences.items():
                    row[f"Δ{key}"], row[f"Δ{key} low"], row[f"Δ{key} high"] = (interval.value, interval.low,
                                                                                interval.high)
                pairs.append((len(rows), paired))
        rows.append(row)
    columns = ["K", "alpha", "chosen", "settings", "seeds", "limit"]
    columns += [name for key in METRIC_NAMES for name in (key, f"{key} std")]
    columns += ["paired seeds"] + [f"Δ{key}{end}" for key in PER_QUESTION_OR_DERIVED for end in ("", " low", " high")]
    return pd.DataFrame(rows).reindex(columns=columns + ["unpaired", "folds", "json"]), pairs


def _no_baseline(records: list[RunRecord], unshifted: list[list[RunRecord]]) -> str:
    """Why a setting has no baseline among the table's runs: how the nearest unshifted runs differ from it."""
    if not unshifted:
        return "no unshifted run among these; run the same settings with --num_heads 0 to pair with"
    mine = _shared_settings(records[0], baseline=True)

    def differing(baseline: list[RunRecord]) -> list[str]:
        theirs = _shared_settings(baseline[0], baseline=True)
        return [name for name in sorted(mine.keys() | theirs.keys()) if mine.get(name) != theirs.get(name)]

    nearest = min(unshifted, key=lambda baseline: len(differing(baseline)))
    of_seed = {r.config["seed"]: r for r in nearest}.get(records[0].config["seed"], nearest[0])
    theirs = _shared_settings(nearest[0], baseline=True)
    return why_unpaired(records[0], of_seed) or "the nearest unshifted run differs in " + ", ".join(
        f"{name} ({json.dumps(mine.get(name))} against {json.dumps(theirs.get(name))})" for name in differing(nearest))


def unpaired_notes(table: pd.DataFrame) -> list[str]:
    """Per row that changes the model but has no paired difference: why, and what to do."""
    return [f"note: K {row['K']}, α {row['alpha']}: no paired difference, {row['unpaired']}"
            for _, row in table.iterrows() if isinstance(row["unpaired"], str) and row["unpaired"] != UNSHIFTED]


def category_table(table: pd.DataFrame, pairs: list[tuple[int, Paired]], metric: str) -> pd.DataFrame:
    """Per row with a baseline and per category: questions, the metric's mean in the run and the baseline,
    and their difference; categories sorted by the difference (largest first)."""
    rows = []
    for index, paired in pairs:
        treated, baseline = paired.treated, paired.base
        for category, questions in treated.groupby("Category", sort=False).groups.items():
            run = with_products(treated.loc[questions].drop(columns="Category").mean().to_dict())
            base = with_products(baseline.loc[questions].drop(columns="Category").mean().to_dict())
            if metric not in run:
                continue
            rows.append({"K": table.at[index, "K"], "alpha": table.at[index, "alpha"], "category": category,
                         "questions": len(questions), metric: run[metric], f"{metric} baseline": base[metric],
                         f"Δ{metric}": run[metric] - base[metric]})
    frame = pd.DataFrame(rows, columns=["K", "alpha", "category", "questions", metric, f"{metric} baseline",
                                        f"Δ{metric}"])
    return frame.sort_values(["K", "alpha", f"Δ{metric}"], ascending=[True, True, False], ignore_index=True)


def markdown(table: pd.DataFrame) -> str:
    """The table as people read it: mean ± std over seeds, Δ [95% interval]; metrics never measured are left
    out, a value a row lacks is "—"."""
    columns = {"K": table["K"], "alpha": table["alpha"]}
    for column in ("chosen", "settings", "limit"):
        if table[column].map(lambda v: not missing(v) and v != "").any():
            columns[column] = table[column].map(lambda v: "—" if missing(v) or v == "" else str(v))
    columns["seeds"] = table["seeds"]
    for key in METRIC_NAMES:
        if table[key].notna().any():
            columns[key] = [mean_std(m, s) for m, s in zip(table[key], table[f"{key} std"])]
    for key in PER_QUESTION_OR_DERIVED:
        if table[f"Δ{key}"].notna().any():
            columns[f"Δ{key} [95%]"] = [difference(v, lo, hi) for v, lo, hi in
                                        zip(table[f"Δ{key}"], table[f"Δ{key} low"], table[f"Δ{key} high"])]
    if table["unpaired"].map(lambda v: isinstance(v, str) and v != UNSHIFTED).any():
        columns["no Δ because"] = table["unpaired"].map(lambda v: "—" if missing(v) else v)
    return markdown_rows(list(columns), [list(cells) for cells in zip(*columns.values())])


def category_markdown(frame: pd.DataFrame, metric: str) -> str:
    cells = [[str(r["K"]), str(r["alpha"]), r["category"], str(r["questions"]), f"{r[metric]:.4f}",
              f"{r[f'{metric} baseline']:.4f}", f"{r[f'Δ{metric}']:+.4f}"] for _, r in frame.iterrows()]
    return markdown_rows(["K", "alpha", "category", "questions", metric, "baseline", f"Δ{metric}"], cells)


def markdown_rows(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def mean_std(mean: float, std: float) -> str:
    return shown(mean) if missing(mean) or missing(std) else f"{mean:.4f} ± {std:.4f}"


def difference(value: float, low: float, high: float) -> str:
    return "—" if missing(value) else f"{value:+.4f} [{low:+.4f}, {high:+.4f}]"
