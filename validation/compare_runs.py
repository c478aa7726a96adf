"""Print finished validate_2fold runs side by side: one row per run (baseline or ITI), one column per
metric that has a value, means over folds rounded to 4 decimals (the JSON files keep full precision).

python validation/compare_runs.py validation/results_dump/summary_dump/<baseline>.json \\
    validation/results_dump/summary_dump/<iti>.json
"""
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import ArgumentParser, run_main  # noqa: E402

METRIC_ORDER = ("MC1", "MC2", "MC3", "CE", "KL", "True", "Info", "True*Info")


def run_label(record: dict) -> str:
    """`ITI (K=8, alpha=5, center_of_mass)`; a run that chose among several values per fold lists them
    (`K=8/16`). Summaries written before K and α took several values hold plain numbers."""
    config = record["config"]
    if not record["resolved"]["intervenes"]:
        return "baseline"
    return (f"ITI (K={_values_text(config['num_heads'])}, alpha={_values_text(config['alpha'])}, "
            f"{record['resolved']['method']})")


def _values_text(value) -> str:
    return "/".join(f"{v:g}" for v in (value if isinstance(value, list) else [value]))


def comparison_table(records: list[dict]) -> str:
    """A plain-text table: runs as rows, the metrics any run computed as columns."""
    finals = [{k: math.nan if v is None else v for k, v in r["final"].items()} for r in records]
    metrics = [m for m in METRIC_ORDER if any(not math.isnan(f.get(m, math.nan)) for f in finals)]
    labels = [run_label(r) for r in records]
    cells = [[f"{f[m]:.4f}" for m in metrics] for f in finals]
    widths = [max(len(m), *(len(row[i]) for row in cells)) for i, m in enumerate(metrics)]
    first = max(len("run"), *(len(label) for label in labels))
    lines = ["  ".join(["run".ljust(first)] + [m.rjust(w) for m, w in zip(metrics, widths)])]
    for label, row in zip(labels, cells):
        lines.append("  ".join([label.ljust(first)] + [c.rjust(w) for c, w in zip(row, widths)]))
    return "\n".join(lines)


def read_finished_run(path: Path) -> dict:
    from iti.errors import UsageError
    from iti.summaries import read_summary

    record = read_summary(path)
    if not record["complete"]:
        raise UsageError(f"{path} holds an unfinished run; run validate_2fold with the same settings to finish it")
    return record


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("summaries", nargs="+", type=Path, help="summary JSON files of validate_2fold runs")
    args = parser.parse_args()
    print(comparison_table([read_finished_run(path) for path in args.summaries]))


if __name__ == "__main__":
    run_main(main)
