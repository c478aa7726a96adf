"""Collect the completed validate_2fold runs of a sweep into one table (CSV and markdown) and plot
True*Info, MC2, CE and KL against α, one line per K (metrics with no values are left out).

python validation/sweeping/collect_sweep.py --model_name llama2_chat_7B --use_center_of_mass

Reads `{results_dir}/results_dump/summary_dump/*.json`; the flags that name runs (model, prefix,
seed, limit, method) select them, so the flags of the sweep itself can be passed unchanged
(the others are ignored). Without --limit: the full runs, or if there are none, the runs of the one
--limit they all used. Runs of several seeds are averaged in the plot, listed one by one in
the table. Writes `{results_dir}/results_dump/sweep_dump/{model}_{method}[_limit_{N}].{csv,md,png}`.
"""
import json
import math
import os
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from iti.cli import ArgumentParser, run_main  # noqa: E402

COLUMNS = ["model", "method", "seed", "limit", "K", "alpha", "True*Info", "True", "Info", "MC1", "MC2", "MC3",
           "CE", "KL", "folds", "json"]
PLOTTED = [("True*Info", "True*Info"), ("MC2", "MC2"), ("CE", "CE loss"), ("KL", "KL wrt original")]


def complete_runs(results_dir: Path, model: str, method: str):
    """(path, record) of each complete summary of this model and method."""
    for path in sorted((results_dir / "results_dump" / "summary_dump").glob("*.json")):
        record = json.loads(path.read_text())
        config = record.get("config", {})
        if record.get("complete") and f"{config.get('model_prefix', '')}{config.get('model_name')}" == model \
                and record["resolved"]["method"] == method:
            yield path, record


def collect(results_dir: Path, model: str, method: str, seed: int | None, limit: int | None):
    import pandas as pd

    rows = []
    for path, record in complete_runs(results_dir, model, method):
        config = record["config"]
        if config.get("limit") != limit or (seed is not None and config.get("seed") != seed):
            continue
        final = {key: math.nan if value is None else value for key, value in record["final"].items()}
        rows.append({"model": model, "method": method, "seed": config["seed"], "limit": limit,
                     "K": config["num_heads"], "alpha": config["alpha"], **{k: final[k] for k in COLUMNS[6:14]},
                     "folds": len(record["folds"]), "json": str(path)})
    return pd.DataFrame(rows, columns=COLUMNS).sort_values(["K", "alpha", "seed"], ignore_index=True)


def default_limit(results_dir: Path, model: str, method: str) -> int | None:
    """Without --limit: the full runs if there are any, else the one --limit that all runs used."""
    from iti.errors import UsageError

    limits = {record["config"].get("limit") for _, record in complete_runs(results_dir, model, method)}
    if not limits or None in limits:
        return None
    if len(limits) > 1:
        raise UsageError(f"no full runs of {model} ({method} directions), but runs with --limit "
                         f"{', '.join(map(str, sorted(limits)))}: pass one of those")
    return limits.pop()


def markdown(table) -> str:
    shown = table.drop(columns=["json"])
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for _, row in shown.iterrows():
        cells = [_cell(name, value) for name, value in row.items()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(name: str, value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ""
    if name == "alpha":
        return f"{value:g}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def plot(table, path: Path) -> list[str]:
    """One panel per metric with values; each K's means over seeds against α, starting from the
    baseline (α = 0 or K = 0, the same unshifted model for every K) at α = 0, also drawn as a
    dashed line. Returns the metrics plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(key, label) for key, label in PLOTTED if table[key].notna().any()]
    if not panels:
        return []
    baseline = table[(table["alpha"] == 0) | (table["K"] == 0)]
    shifted = table[(table["alpha"] != 0) & (table["K"] > 0)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        base = baseline[key].mean() if baseline[key].notna().any() else None
        for k, group in shifted.groupby("K"):
            means = group.groupby("alpha")[key].mean()
            alphas, values = list(means.index), list(means.values)
            if base is not None:
                alphas, values = [0.0] + alphas, [base] + values
            ax.plot(alphas, values, marker="o", label=f"K={k}")
        if base is not None:
            ax.axhline(base, color="gray", linestyle="--", label="baseline")
        ax.set_xlabel("α")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return [key for key, _ in panels]


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main() -> None:
    from iti.errors import UsageError
    from iti.config import ValidationConfig

    parser = ArgumentParser(__doc__)
    parser.add_argument("--model_name", required=True)
    parser.add_argument("--model_prefix", default="")
    parser.add_argument("--seed", type=int, default=None, help="only runs of this seed (default: every seed)")
    parser.add_argument("--limit", type=int, default=None,
                        help="runs made with this --limit (default: full runs, else the one --limit all runs used)")
    parser.add_argument("--use_center_of_mass", action="store_true")
    parser.add_argument("--use_random_dir", action="store_true")
    parser.add_argument("--results_dir", default=ValidationConfig().results_dir)
    args, _ = parser.parse_known_args()

    method = ValidationConfig(use_center_of_mass=args.use_center_of_mass, use_random_dir=args.use_random_dir).method
    model = f"{args.model_prefix}{args.model_name}"
    results_dir = Path(args.results_dir)
    limit = args.limit if args.limit is not None else default_limit(results_dir, model, method)
    if limit != args.limit:
        print(f"no full runs of {model}: the runs made with --limit {limit}")
    table = collect(results_dir, model, method, args.seed, limit)
    if table.empty:
        raise UsageError(f"no completed runs of {model} ({method} directions, limit {limit}) under "
                         f"{results_dir / 'results_dump' / 'summary_dump'}")
    out_dir = results_dir / "results_dump" / "sweep_dump"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{model}_{method}" + (f"_limit_{limit}" if limit is not None else "")
    write_text(out_dir / f"{stem}.csv", table.to_csv(index=False))
    write_text(out_dir / f"{stem}.md", markdown(table))
    plotted = plot(table, out_dir / f"{stem}.png")
    print(markdown(table))
    print(f"{len(table)} runs -> {out_dir / stem}.csv, .md"
          + (f", .png ({', '.join(plotted)})" if plotted else " (no metric to plot)"))


if __name__ == "__main__":
    run_main(main)
