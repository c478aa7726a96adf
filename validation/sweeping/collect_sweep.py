"""Collect the completed validate_2fold runs of a sweep into one table (CSV and markdown) and plot
True*Info, MC2, CE and KL against α, one line per K (metrics with no values are left out).

python validation/sweeping/collect_sweep.py --model_name llama2_chat_7B --use_center_of_mass [--by_category]

Reads `{results_dir}/results_dump/summary_dump/*.json` (a file that is not a summary is named and left
out). Every validate_2fold flag is accepted, so the sweep's own flags pass unchanged; those that name runs
(model, prefix, method, dataset, limit, and --seed when given) select them, and runs that differ in the
others are rows of their own. Without --limit: the full runs, or if there are none, the runs of the one
--limit they all used. Runs that differ only by seed are one row: each metric's mean ± std over the
seeds. A row with a baseline (an unshifted run with the same other settings and the same seeds, hence
the same folds) also gets the paired difference from it, Δ, with a 95% bootstrap interval over questions
(iti.statistics), from the per-question answer files: each question's scores averaged over the seeds,
folds pooled. CE and KL are not per-question and get no Δ. Runs pair only when their records show the same
model as loaded (fingerprint and dtype), data, questions and folds (iti.pairing); a row left without Δ says
why in its `unpaired` column and in a note. Runs that chose K and α per fold are rows
labelled with their grid and the choices (iti.collect).
Writes `{results_dir}/results_dump/sweep_dump/{model}_{method}[_{dataset}][_limit_{N}][_seed_{S}]_{hash}.{csv,md,png}`,
named by the flags that selected the runs and a hash of the runs themselves (tables of other selections or other
runs never replace each other), and `…_tradeoff.png`: the --select_metric (MC2 unless given) against KL, each run of
one setting a point (means over folds and seeds), the front (ITI_SPEC §11) drawn; `--by_category` adds
`…_by_category_{metric}.{csv,md}` and one plot per setting of the per-category differences from the baseline
(categories sorted by the difference), under the same stem.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.config import SELECT_METRIC_NAMES, CollectConfig  # noqa: E402


def main() -> None:
    cfg = parse_config(CollectConfig, description=__doc__)

    import matplotlib

    matplotlib.use("Agg")

    from iti.collect import (category_markdown, category_table, category_tag, collect_table, finished_runs, markdown,
                             selected_runs, table_stem, unpaired_notes)
    from iti.errors import UsageError
    from iti.files import write_text
    from iti.plots import category_differences, sweep_curves, sweep_tradeoff

    results_dir = Path(cfg.results_dir)
    finished, unreadable = finished_runs(results_dir)
    for problem in unreadable:
        print(f"note: left out of the table: {problem}", file=sys.stderr)
    runs = selected_runs(cfg, finished)
    if not runs:
        raise UsageError(f"no completed runs of {cfg.output_name} ({cfg.method} directions, limit {cfg.limit}) under "
                         f"{results_dir / 'results_dump' / 'summary_dump'}")
    limit = runs[0].record.config.get("limit")
    if limit != cfg.limit:
        print(f"no full runs of {cfg.output_name}: the runs made with --limit {limit}")
    table, pairs = collect_table(runs)
    for note in unpaired_notes(table):
        print(note, file=sys.stderr)
    out_dir = results_dir / "results_dump" / "sweep_dump"
    stem = table_stem(cfg, runs)
    write_text(out_dir / f"{stem}.csv", table.to_csv(index=False))
    write_text(out_dir / f"{stem}.md", markdown(table))
    plotted = sweep_curves(table, out_dir / f"{stem}.png")
    metric = SELECT_METRIC_NAMES[cfg.select_metric]
    tradeoff = sweep_tradeoff(table, metric, out_dir / f"{stem}_tradeoff.png")
    print(markdown(table))
    print(f"{len(table)} settings -> {out_dir / stem}.csv, .md"
          + (f", .png ({', '.join(plotted)})" if plotted else " (no metric to plot)"))
    print(f"trade-off of {metric} against KL -> {tradeoff}" if tradeoff else
          f"no trade-off figure: no run of one setting measured both {metric} and KL")
    if cfg.by_category:
        categories = category_table(table, pairs, cfg.category_metric)
        if categories.empty:
            raise UsageError(f"no setting has a baseline run with {cfg.category_metric} answers to compare "
                             "categories against; run the same settings with --alpha 0 or --num_heads 0")
        tag = category_tag(cfg.category_metric)
        write_text(out_dir / f"{stem}{tag}.csv", categories.to_csv(index=False))
        write_text(out_dir / f"{stem}{tag}.md", category_markdown(categories, cfg.category_metric))
        figures = category_differences(categories, cfg.category_metric,
                                       lambda k, alpha: out_dir / f"{stem}_K{k}_alpha{alpha}{tag}.png")
        print(f"per category -> {out_dir / stem}{tag}.csv, .md and {len(figures)} plots")


if __name__ == "__main__":
    run_main(main)
