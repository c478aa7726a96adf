"""Completed validate_2fold runs as one table: runs that differ only by seed make one row, and a row with a
baseline (an unshifted run that agrees with it on everything but the settings that act through the head shifts,
and shares its seeds, hence its folds) gets the paired difference from it. Which runs belong together is read
from their identities (iti.identity); validation/sweeping/collect_sweep.py says what the table holds.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from iti.config import CollectConfig, ValidationConfig
from iti.errors import UsageError
from iti.evaluation import answer_scores, read_fold_answers
from iti.identity import TABLE_NAME, Role, declared, digest, named_values, readable_name, short_digest, without
from iti.metrics import METRICS, PER_QUESTION_OR_DERIVED, missing, shown, with_products
from iti.runs import RunFile, RunRecord, read_run
from iti.statistics import paired_differences

METRIC_NAMES = [metric.name for metric in METRICS]


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
    roles = (Role.SHIFTS,) if baseline else ()
    return json.dumps(without(run.identity, ValidationConfig, roles, ("seed",)), sort_keys=True)


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
    """Per group, the declared settings (not K, α, seed) in which the groups of the table differ."""
    settings = [without(declared(runs[0].record.config, ValidationConfig), ValidationConfig,
                        names=("num_heads", "alpha", "seed")) for runs in groups]
    varying = sorted({name for values in settings for name in values
                      if len({json.dumps(other.get(name)) for other in settings}) > 1})
    return [", ".join(f"{name}={json.dumps(values[name])}" for name in varying) for values in settings]


def pair_with_baseline(runs: list[RunRecord], baseline: list[RunRecord], tag: str):
    """(seeds shared, per metric the paired Interval, the two seed-averaged answer frames), or None."""
    seeds = {r.config["seed"] for r in runs} & {r.config["seed"] for r in baseline}
    if not seeds:
        return None
    treated = seed_averaged_answers([r for r in runs if r.config["seed"] in seeds], tag)
    base = seed_averaged_answers([r for r in baseline if r.config["seed"] in seeds], tag)
    if treated is None or base is None:
        return None
    base = base.reindex(treated.index)
    metrics = [c for c in treated.columns if c != "Category"]
    differences = paired_differences({m: treated[m].to_numpy() for m in metrics},
                                     {m: base[m].to_numpy() for m in metrics})
    return sorted(seeds), differences, treated, base


def collect_table(runs: list[RunFile], tag: str) -> tuple[pd.DataFrame, list]:
    """(table, pairs): one row per setting (seeds averaged) with its paired difference from its baseline, and per
    row with one, (row index, the row's and the baseline's seed-averaged answers) for the per-category table."""
    groups: dict[str, list[RunFile]] = {}
    for run in runs:
        groups.setdefault(repeats_key(run.record), []).append(run)
    # Per pairing key, the plainest unshifted group: K = 0 wins over α = 0 with heads.
    unshifted = sorted((members for members in groups.values() if not members[0].record.resolved.intervenes),
                       key=lambda members: max(members[0].record.config["num_heads"]), reverse=True)
    baselines = {repeats_key(members[0].record, baseline=True): [m.record for m in members] for members in unshifted}
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
        baseline = baselines.get(repeats_key(records[0], baseline=True)) if records[0].resolved.intervenes else None
        paired = pair_with_baseline(records, baseline, tag) if baseline else None
        if baseline and paired is None:
            row["Δ missing"] = next(map(str, absent_answer_files(records + baseline)), math.nan)
        elif paired is not None:
            seeds, differences, treated, base = paired
            row["paired seeds"] = " ".join(map(str, seeds))
            for key, interval in differences.items():
                row[f"Δ{key}"], row[f"Δ{key} low"], row[f"Δ{key} high"] = interval.value, interval.low, interval.high
            pairs.append((len(rows), treated, base))
        rows.append(row)
    columns = ["K", "alpha", "chosen", "settings", "seeds", "limit"]
    columns += [name for key in METRIC_NAMES for name in (key, f"{key} std")]
    columns += ["paired seeds"] + [f"Δ{key}{end}" for key in PER_QUESTION_OR_DERIVED for end in ("", " low", " high")]
    return pd.DataFrame(rows).reindex(columns=columns + ["Δ missing", "folds", "json"]), pairs


def missing_answer_notes(table: pd.DataFrame) -> list[str]:
    """Per row whose Δ is empty because an answer file of it or its baseline is gone: which file, and what to do."""
    return [f"note: K {row['K']}, α {row['alpha']}: {no_pair_reason(row['Δ missing'])}"
            for _, row in table.iterrows() if isinstance(row["Δ missing"], str)]


def no_pair_reason(absent: Path | str) -> str:
    return (f"no paired difference, the answer file {absent} is missing; run validate_2fold with that run's settings "
            "again to remake it")


def category_table(table: pd.DataFrame, pairs: list, metric: str) -> pd.DataFrame:
    """Per row with a baseline and per category: questions, the metric's mean in the run and the baseline,
    and their difference; categories sorted by the difference (largest first)."""
    rows = []
    for index, treated, baseline in pairs:
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
