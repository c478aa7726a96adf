"""Collect the completed validate_2fold runs of a sweep into one table (CSV and markdown) and plot
True*Info, MC2, CE and KL against α, one line per K (metrics with no values are left out).

python validation/sweeping/collect_sweep.py --model_name llama2_chat_7B --use_center_of_mass [--by_category]

Reads `{results_dir}/results_dump/summary_dump/*.json`; the flags that name runs (model, prefix,
seed, limit, method) select them, so the flags of the sweep itself can be passed unchanged
(the others are ignored). Without --limit: the full runs, or if there are none, the runs of the one
--limit they all used. Runs that differ only by seed are one row: each metric's mean ± std over
the seeds. A row with a baseline (a run with α = 0 or K = 0, the same other settings and the same
seeds, hence the same folds) also gets the paired difference from it, Δ, with a 95% bootstrap
interval over questions (iti.statistics), from the per-question answer files: each question's
scores averaged over the seeds, folds pooled. CE and KL are not per-question and get no Δ.
Writes `{results_dir}/results_dump/sweep_dump/{model}_{method}[_limit_{N}].{csv,md,png}`;
`--by_category` adds `…_by_category.{csv,md}` and one plot per setting of the per-category
differences from the baseline (categories sorted by the difference).
"""
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from iti.cli import ArgumentParser, run_main  # noqa: E402
from iti.metrics import METRICS as METRIC_TABLE  # noqa: E402
from iti.metrics import PER_QUESTION_OR_DERIVED  # noqa: E402

METRICS = [metric.name for metric in METRIC_TABLE]
PAIRED = list(PER_QUESTION_OR_DERIVED)
PLOTTED = [("True*Info", "True*Info"), ("MC2", "MC2"), ("CE", "CE loss"), ("KL", "KL wrt original")]


def complete_runs(results_dir: Path, model: str, method: str, dataset_path: str | None = None):
    """(path, record) of each complete summary of one (K, α) of this model and method evaluated on
    `dataset_path`'s items (None: TruthfulQA), so runs on another dataset never enter the table; the
    record's config holds K and α as numbers. Runs that chose among several settings per fold are left
    out (their summaries hold each fold's choice), and so are records of versions before runs recorded
    their identity."""
    for path, record in readable_summaries(results_dir)[0]:
        config = dict(record.get("config", {}))
        if not (record.get("complete") and "identity" in record
                and f"{config.get('model_prefix', '')}{config.get('model_name')}" == model
                and record["resolved"]["method"] == method and config.get("dataset_path") == dataset_path):
            continue
        for name in ("num_heads", "alpha"):
            values = config.get(name)
            if isinstance(values, list):
                config[name] = values[0] if len(values) == 1 else None
        if config.get("num_heads") is not None and config.get("alpha") is not None:
            yield path, {**record, "config": config}


def readable_summaries(results_dir: Path) -> tuple[list[tuple[Path, dict]], list[str]]:
    """(path, record) of every summary JSON that reads as one, and for each file that does not (cut short,
    another program's), one line saying which and why: one bad file leaves the others in the table."""
    from iti.errors import UsageError
    from iti.summaries import read_summary

    readable, unreadable = [], []
    for path in sorted((results_dir / "results_dump" / "summary_dump").glob("*.json")):
        try:
            readable.append((path, read_summary(path)))
        except UsageError as err:
            unreadable.append(str(err))
    return readable, unreadable


def load_runs(results_dir: Path, model: str, method: str, seed: int | None, limit: int | None,
              dataset_path: str | None = None) -> list[dict]:
    """complete_runs of this limit (and seed, if given), each record with its path."""
    return [{**record, "path": path} for path, record in complete_runs(results_dir, model, method, dataset_path)
            if record["config"].get("limit") == limit and (seed is None or record["config"].get("seed") == seed)]


def default_limit(results_dir: Path, model: str, method: str, dataset_path: str | None = None) -> int | None:
    """Without --limit: the full runs if there are any, else the one --limit that all runs used."""
    from iti.errors import UsageError

    limits = {record["config"].get("limit") for _, record in complete_runs(results_dir, model, method, dataset_path)}
    if not limits or None in limits:
        return None
    if len(limits) > 1:
        raise UsageError(f"no full runs of {model} ({method} directions), but runs with --limit "
                         f"{', '.join(map(str, sorted(limits)))}: pass one of those")
    return limits.pop()


def repeats_key(record: dict, baseline: bool = False) -> str:
    """What runs that repeat each other share: their identity (iti.identity) but the seed; for pairing a
    baseline, also without every setting that acts only through the head shifts (an unshifted run ignores them)."""
    from iti.config import ValidationConfig
    from iti.identity import Role, without

    roles = (Role.SHIFTS,) if baseline else ()
    return json.dumps(without(record["identity"], ValidationConfig, roles, ("seed",)), sort_keys=True)


def is_baseline(config: dict) -> bool:
    return config["alpha"] == 0 or config["num_heads"] == 0


def seed_averaged_answers(runs: list[dict], tag: str):
    """Per question (index: the question text), each per-question score averaged over the runs (seeds),
    every run's folds pooled; `Category` kept. None if an answer file is missing."""
    import pandas as pd

    from iti.evaluation import answer_scores

    per_seed = []
    for run in runs:
        paths = [Path(fold["files"]["answers"]) for fold in run["folds"]]
        if not all(path.is_file() for path in paths):
            return None
        answers = pd.concat([pd.read_csv(path) for path in paths], ignore_index=True)
        scores = pd.DataFrame(answer_scores(answers, tag), index=answers["Question"])
        scores["Category"] = answers["Category"].to_numpy() if "Category" in answers else "(none)"
        per_seed.append(scores)
    merged = pd.concat(per_seed)
    return merged.groupby(level=0, sort=False).agg(
        {column: "first" if column == "Category" else "mean" for column in merged.columns})


def collect(results_dir: Path, model: str, method: str, seed: int | None, limit: int | None,
            dataset_path: str | None = None):
    """The table: one row per setting (seeds averaged), with its paired difference from its baseline."""
    return collect_with_pairs(results_dir, model, method, seed, limit, dataset_path)[0]


def collect_with_pairs(results_dir: Path, model: str, method: str, seed: int | None, limit: int | None,
                       dataset_path: str | None = None):
    """(table, pairs): the table and, per setting with a baseline, (row index, the setting's and the
    baseline's seed-averaged answers) for the per-category table."""
    import numpy as np
    import pandas as pd

    from iti.statistics import paired_differences

    groups: dict[tuple, list[dict]] = {}
    for run in load_runs(results_dir, model, method, seed, limit, dataset_path):
        groups.setdefault(repeats_key(run), []).append(run)
    baselines = {}
    for runs in sorted(groups.values(), key=lambda runs: runs[0]["config"]["num_heads"], reverse=True):
        if is_baseline(runs[0]["config"]):  # K = 0 wins over α = 0 with heads: it is the plainer run
            baselines[repeats_key(runs[0], baseline=True)] = runs

    rows, pairs = [], []
    for runs in groups.values():
        config = runs[0]["config"]
        finals = pd.DataFrame([{k: math.nan if v is None else v for k, v in r["final"].items()} for r in runs])
        row = {"model": model, "method": method, "limit": limit, "K": config["num_heads"], "alpha": config["alpha"],
               "seeds": " ".join(str(s) for s in sorted(r["config"]["seed"] for r in runs))}
        for key in METRICS:
            row[key] = finals[key].mean()
            row[f"{key} std"] = finals[key].std(ddof=1) if len(runs) > 1 else math.nan
        baseline = baselines.get(repeats_key(runs[0], baseline=True))
        if baseline is not None and not is_baseline(config):
            seeds = {r["config"]["seed"] for r in runs} & {r["config"]["seed"] for r in baseline}
            treated_answers = seed_averaged_answers([r for r in runs if r["config"]["seed"] in seeds], model)
            base_answers = seed_averaged_answers([r for r in baseline if r["config"]["seed"] in seeds], model)
            if seeds and treated_answers is not None and base_answers is not None:
                base_answers = base_answers.reindex(treated_answers.index)
                metrics = [c for c in treated_answers.columns if c != "Category"]
                differences = paired_differences({m: treated_answers[m].to_numpy() for m in metrics},
                                                 {m: base_answers[m].to_numpy() for m in metrics})
                row["paired seeds"] = " ".join(str(s) for s in sorted(seeds))
                for key, interval in differences.items():
                    row[f"Δ{key}"], row[f"Δ{key} low"], row[f"Δ{key} high"] = \
                        interval.value, interval.low, interval.high
                pairs.append((len(rows), treated_answers, base_answers))
        row["folds"] = len(runs[0]["folds"])
        row["json"] = "; ".join(str(r["path"]) for r in runs)
        rows.append(row)
    columns = ["model", "method", "limit", "K", "alpha", "seeds"]
    columns += [name for key in METRICS for name in (key, f"{key} std")]
    columns += ["paired seeds"] + [f"Δ{key}{end}" for key in PAIRED for end in ("", " low", " high")]
    table = pd.DataFrame(rows).reindex(columns=columns + ["folds", "json"])
    order = np.lexsort((table["alpha"].to_numpy(), table["K"].to_numpy()))
    positions = {old: new for new, old in enumerate(order)}
    return table.iloc[order].reset_index(drop=True), [(positions[i], t, b) for i, t, b in pairs]


def category_table(table, pairs, metric: str):
    """Per setting with a baseline and per category: questions, the metric's mean in the run and the
    baseline, and their difference; categories sorted by the difference (largest first)."""
    import pandas as pd

    from iti.metrics import with_products

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


def plot_categories(frame, metric: str, path_of) -> list[Path]:
    """One horizontal bar chart per setting: each category's difference from the baseline, sorted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for (k, alpha), group in frame.groupby(["K", "alpha"], sort=True):
        group = group.sort_values(f"Δ{metric}")
        fig, ax = plt.subplots(figsize=(6.5, 0.22 * len(group) + 1.4))
        values = group[f"Δ{metric}"].to_numpy()
        ax.barh(group["category"], values, color=["tab:green" if v >= 0 else "tab:red" for v in values])
        ax.axvline(0, color="gray", linewidth=0.8)
        ax.set_xlabel(f"{metric}: ITI minus baseline")
        ax.set_title(f"K={k}, α={alpha:g}: per category", fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        paths.append(save_figure(fig, path_of(k, alpha)))
    return paths


def markdown(table) -> str:
    """The table as people read it: mean ± std over seeds, Δ [95% interval]; empty metrics left out."""
    shown = {"K": table["K"].astype(str), "alpha": table["alpha"].map(lambda a: f"{a:g}"), "seeds": table["seeds"]}
    if "limit" in table and table["limit"].notna().any():
        shown["limit"] = table["limit"].map(lambda v: "" if _missing(v) else str(int(v)))
    for key in METRICS:
        if table[key].notna().any():
            shown[key] = [_mean_std(m, s) for m, s in zip(table[key], table[f"{key} std"])]
    for key in PAIRED:
        if table[f"Δ{key}"].notna().any():
            shown[f"Δ{key} [95%]"] = [_difference(v, lo, hi) for v, lo, hi in
                                      zip(table[f"Δ{key}"], table[f"Δ{key} low"], table[f"Δ{key} high"])]
    return _markdown_rows(list(shown), [list(cells) for cells in zip(*shown.values())])


def category_markdown(frame, metric: str) -> str:
    cells = [[str(r["K"]), f"{r['alpha']:g}", r["category"], str(r["questions"]), f"{r[metric]:.4f}",
              f"{r[f'{metric} baseline']:.4f}", f"{r[f'Δ{metric}']:+.4f}"] for _, r in frame.iterrows()]
    return _markdown_rows(["K", "alpha", "category", "questions", metric, "baseline", f"Δ{metric}"], cells)


def _markdown_rows(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _mean_std(mean: float, std: float) -> str:
    if _missing(mean):
        return ""
    return f"{mean:.4f}" if _missing(std) else f"{mean:.4f} ± {std:.4f}"


def _difference(value: float, low: float, high: float) -> str:
    return "" if _missing(value) else f"{value:+.4f} [{low:+.4f}, {high:+.4f}]"


def plot(table, path: Path) -> list[str]:
    """One panel per metric with values; each K's means over seeds against α (bars: std over seeds),
    starting from the baseline (α = 0 or K = 0, the same unshifted model for every K) at α = 0,
    also drawn as a dashed line. Returns the metrics plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, label) for key, label in PLOTTED if table[key].notna().any()]
    if not panels:
        return []
    baseline = table[(table["alpha"] == 0) | (table["K"] == 0)]
    shifted = table[(table["alpha"] != 0) & (table["K"] > 0)].sort_values("alpha")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        base = baseline[key].mean() if baseline[key].notna().any() else None
        for k, group in shifted.groupby("K"):
            alphas, values, spread = list(group["alpha"]), list(group[key]), list(group[f"{key} std"].fillna(0))
            if base is not None:
                alphas, values, spread = [0.0] + alphas, [base] + values, [0.0] + spread
            ax.errorbar(alphas, values, yerr=spread, marker="o", capsize=3, label=f"K={k}")
        if base is not None:
            ax.axhline(base, color="gray", linestyle="--", label="baseline")
        ax.set_xlabel("α")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return [key for key, _ in panels]


def save_figure(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    from iti.files import atomic_write

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)


def main() -> None:
    from iti.errors import UsageError
    from iti.files import write_text
    from iti.config import ValidationConfig

    parser = ArgumentParser(__doc__)
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_prefix", default="")
    parser.add_argument("--seed", type=int, default=None, help="only runs of this seed (default: every seed)")
    parser.add_argument("--limit", type=int, default=None,
                        help="runs made with this --limit (default: full runs, else the one --limit all runs used)")
    parser.add_argument("--use_center_of_mass", action="store_true")
    parser.add_argument("--use_random_dir", action="store_true")
    parser.add_argument("--dataset_path", default=None,
                        help="runs evaluated on this dataset file, as the sweep gave it (default: TruthfulQA runs)")
    parser.add_argument("--dataset_name", default=None, help="with --dataset_path: names the table's files")
    parser.add_argument("--results_dir", default=ValidationConfig().results_dir)
    parser.add_argument("--by_category", action="store_true",
                        help="also each category's difference from the baseline (table and one plot per setting)")
    parser.add_argument("--category_metric", default="MC2", choices=PER_QUESTION_OR_DERIVED,
                        help="the metric of the per-category table and plots")
    args, _ = parser.parse_known_args()

    method = ValidationConfig(use_center_of_mass=args.use_center_of_mass, use_random_dir=args.use_random_dir).method
    model = f"{args.model_prefix}{args.model_name}"
    results_dir = Path(args.results_dir)
    for problem in readable_summaries(results_dir)[1]:
        print(f"note: left out of the table: {problem}", file=sys.stderr)
    limit = args.limit if args.limit is not None else default_limit(results_dir, model, method, args.dataset_path)
    if limit != args.limit:
        print(f"no full runs of {model}: the runs made with --limit {limit}")
    table, pairs = collect_with_pairs(results_dir, model, method, args.seed, limit, args.dataset_path)
    if table.empty:
        raise UsageError(f"no completed runs of {model} ({method} directions, limit {limit}) under "
                         f"{results_dir / 'results_dump' / 'summary_dump'}")
    out_dir = results_dir / "results_dump" / "sweep_dump"
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = (args.dataset_name or Path(args.dataset_path).stem) if args.dataset_path else None
    stem = f"{model}_{method}" + (f"_{dataset}" if dataset else "") + (f"_limit_{limit}" if limit is not None else "")
    write_text(out_dir / f"{stem}.csv", table.to_csv(index=False))
    write_text(out_dir / f"{stem}.md", markdown(table))
    plotted = plot(table, out_dir / f"{stem}.png")
    print(markdown(table))
    print(f"{len(table)} settings -> {out_dir / stem}.csv, .md"
          + (f", .png ({', '.join(plotted)})" if plotted else " (no metric to plot)"))
    if args.by_category:
        categories = category_table(table, pairs, args.category_metric)
        if categories.empty:
            raise UsageError(f"no setting has a baseline run with {args.category_metric} answers to compare "
                             "categories against; run the same settings with --alpha 0 or --num_heads 0")
        write_text(out_dir / f"{stem}_by_category.csv", categories.to_csv(index=False))
        write_text(out_dir / f"{stem}_by_category.md", category_markdown(categories, args.category_metric))
        figures = plot_categories(categories, args.category_metric,
                                  lambda k, alpha: out_dir / f"{stem}_K{k}_alpha{alpha:g}_by_category.png")
        print(f"per category -> {out_dir / stem}_by_category.csv, .md and {len(figures)} plots")


if __name__ == "__main__":
    run_main(main)
