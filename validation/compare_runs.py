"""Print finished validate_2fold runs side by side: one row per run (baseline or ITI), one column per
metric any run measured (a metric a run did not measure shows "—"), means over folds rounded to 4 decimals
(the JSON files keep full precision). When one run is an unshifted baseline, each ITI run's paired difference
from it follows, with its 95% bootstrap interval over questions, and one plain sentence on whether the interval
excludes 0. Runs pair only when their records show the same model as loaded (fingerprint and dtype), data,
questions and folds (iti.pairing): an ITI run that does not is named with the reason, and when none does the
comparison is refused.

python validation/compare_runs.py validation/results_dump/summary_dump/<baseline>.json \\
    validation/results_dump/summary_dump/<iti>.json
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.config import CompareConfig  # noqa: E402

# The metric the closing sentence speaks of when a run measured it; else the first per-question one.
HEADLINE = "MC2"


def run_label(record) -> str:
    """`ITI (K=8, alpha=5, center_of_mass)` of a RunRecord; a run that chose among several values per fold lists
    them (`K=8/16`)."""
    from iti.collect import grid_text

    if not record.resolved.intervenes:
        return "baseline"
    return (f"ITI (K={grid_text(record.config['num_heads'])}, alpha={grid_text(record.config['alpha'])}, "
            f"{record.resolved.method})")


def comparison_table(records: list) -> str:
    """A plain-text table: runs as rows, the metrics any run computed as columns, "—" where a run has none."""
    from iti.metrics import METRICS, missing, shown

    metrics = [m.name for m in METRICS if any(not missing(r.final.get(m.name)) for r in records)]
    labels = [run_label(r) for r in records]
    cells = [[shown(r.final.get(m)) for m in metrics] for r in records]
    widths = [max(len(m), *(len(row[i]) for row in cells)) for i, m in enumerate(metrics)]
    first = max(len("run"), *(len(label) for label in labels))
    lines = ["  ".join(["run".ljust(first)] + [m.rjust(w) for m, w in zip(metrics, widths)])]
    for label, row in zip(labels, cells):
        lines.append("  ".join([label.ljust(first)] + [c.rjust(w) for c, w in zip(row, widths)]))
    return "\n".join(lines)


def paired_lines(records: list) -> list[str]:
    """Per ITI run among `records`, against the first baseline it pairs with (iti.pairing): its difference on the
    headline metric with the 95% interval and whether the interval excludes 0, or why it has none. Nothing
    without a baseline; a UsageError when no ITI run pairs with any baseline given."""
    from iti.collect import pair_with_baseline
    from iti.errors import UsageError
    from iti.pairing import why_unpaired

    baselines = [r for r in records if not r.resolved.intervenes]
    treated = [r for r in records if r.resolved.intervenes]
    if not baselines or not treated:
        return []
    lines, unpaired = [], []
    for record in treated:
        reasons = [why_unpaired(record, baseline) for baseline in baselines]
        if None not in reasons:
            unpaired.append(f"{run_label(record)} and the baseline do not pair, {reasons[0]}")
            lines.append(f"{run_label(record)} − baseline: not paired, {reasons[0]}")
            continue
        paired = pair_with_baseline([record], [baselines[reasons.index(None)]])
        if isinstance(paired, str):
            lines.append(f"{run_label(record)} − baseline: no paired difference, {paired}")
            continue
        metric = HEADLINE if HEADLINE in paired.differences else next(iter(paired.differences))
        interval = paired.differences[metric]
        lines.append(f"{run_label(record)} − baseline on {metric}: {interval.value:+.3f} "
                     f"[{interval.low:+.3f}, {interval.high:+.3f}] (95% paired bootstrap interval): "
                     f"{interval.verdict()} on "
                     f"{len(paired.treated)} questions; see iti_replication_results.md for the full run")
    if len(unpaired) == len(treated):
        raise UsageError(f"{unpaired[0]}; compare runs of one model, in one dtype, on the same questions and folds")
    return lines


def read_finished_run(path: Path):
    """The RunRecord of a complete run."""
    from iti.errors import UsageError
    from iti.runs import read_run

    record = read_run(path)
    if not record.complete:
        raise UsageError(f"{path} holds an unfinished run; run validate_2fold with the same settings to finish it")
    return record


def main() -> None:
    cfg = parse_config(CompareConfig, description=__doc__)
    records = [read_finished_run(Path(path)) for path in cfg.summaries]
    lines = paired_lines(records)
    print(comparison_table(records))
    for line in lines:
        print(line)


if __name__ == "__main__":
    run_main(main)
