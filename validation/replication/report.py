"""The tables and figures of iti_replication_results.md, from the runs validation/replication/bundled_model.sh
made: every number read from the runs' summary and answer files (iti.collect), none typed in.

python validation/replication/report.py [--results_dir validation] [--output_dir results]
    [--model_name smollm2_135M_instruct] [--limit N] [--num_heads 16 48] [--alpha 0 5 10 15]

Prints markdown: the main table (seeds as mean ± std, ITI's paired difference from the baseline with its 95%
bootstrap interval over questions), each fold's choice with its selection and test scores, the prompting
comparison (each prompt with and without ITI, differences from the bare question's baseline and from the
same prompt's baseline), the polite_replies sets (as written, length-matched), and the run times; writes
the per-category figure of the ITI − baseline difference on MC2 to --output_dir.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from iti.cli import ArgumentParser, run_main  # noqa: E402

# The grid of validation/replication/bundled_model.sh, fixed before any run.
GRID = ([16, 48], [0.0, 5.0, 10.0, 15.0])
# (instruction_prompt, qa_primer) of the bare question, the prompting comparison's reference.
BARE = ("none", "no")
# (label, instruction_prompt, qa_primer) of the paper's prompting comparison, in its table's order.
PROMPTS = (("no instruction", *BARE), ("instruction", "default", "no"), ("instruction + primer (default)", None, "auto"))
SHOWN = ("MC1", "MC2", "MC3", "CE", "KL")


def runs_where(runs: list, **config) -> list:
    """The runs (iti.runs.RunFile) whose options have these values."""
    return [run for run in runs if all(run.record.config.get(key) == value for key, value in config.items())]


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--results_dir", type=Path, default=Path("validation"))
    parser.add_argument("--output_dir", type=Path, default=Path("results"))
    parser.add_argument("--model_name", default="smollm2_135M_instruct")
    parser.add_argument("--limit", type=int, default=None, help="the runs of the first N questions (default: all)")
    parser.add_argument("--num_heads", type=int, nargs="+", default=GRID[0], help="the grid's K values")
    parser.add_argument("--alpha", type=float, nargs="+", default=GRID[1], help="the grid's α values")
    args = parser.parse_args()
    model, grid = args.model_name, (args.num_heads, args.alpha)

    import matplotlib

    matplotlib.use("Agg")

    from iti.collect import (category_table, collect_table, difference, finished_runs, markdown_rows, mean_std,
                             pair_with_baseline, unpaired_notes)
    from iti.errors import UsageError
    from iti.plots import category_differences

    finished, unreadable = finished_runs(args.results_dir)
    for problem in unreadable:
        print(f"note: left out: {problem}", file=sys.stderr)
    runs = [run for run in finished if run.record.config["model_name"] == model]
    truthfulqa = runs_where(runs, dataset_path=None, limit=args.limit, use_center_of_mass=True)
    if not truthfulqa:
        questions = "all TruthfulQA questions" if args.limit is None else f"the first {args.limit} TruthfulQA questions"
        raise UsageError(f"no complete runs of {model} on {questions} in {args.results_dir}; run "
                         "validation/replication/bundled_model.sh first")

    def variant(instruction, primer, selects: bool) -> list[dict]:
        heads = grid[0] if selects else [0]
        chosen = runs_where(truthfulqa, instruction_prompt=instruction, qa_primer=primer, num_heads=heads)
        return [run for run in chosen if not selects or run.record.config["alpha"] == grid[1]]

    # 1. The main comparison: default prompting, K and α chosen per fold, against the baseline.
    main_runs = variant(None, "auto", True) + variant(None, "auto", False)
    table, pairs = collect_table(main_runs)
    notes = unpaired_notes(table)
    print("## Main table\n")
    print(summary_table(table))
    print(verdicts(table, pairs))
    print("\n## Choices per fold\n")
    print(choices_table(variant(None, "auto", True)))
    categories = category_table(table, pairs, "MC2")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    [figure] = category_differences(categories, "MC2", lambda k, alpha: args.output_dir / figure_name(model, args))
    print(f"\n(per-category figure: {figure})")

    # 2. The paper's prompting comparison: each prompt with and without ITI, on the same folds.
    rows = []
    bare = [run.record for run in variant(*BARE, False)]
    for label, instruction, primer in PROMPTS:
        for with_iti in (False, True):
            members = [run.record for run in variant(instruction, primer, with_iti)]
            if not members:
                continue
            final = {key: [r.final[key] for r in members] for key in SHOWN}
            row = [label + (" + ITI" if with_iti else ""), " ".join(str(r.config["seed"]) for r in members)]
            row += [mean_std(*mean_and_std(final[key])) for key in ("MC1", "MC2")]
            seeds = sorted(r.config["seed"] for r in members)
            reference = (instruction, primer) == BARE and not with_iti
            own = [run.record for run in variant(instruction, primer, False)]
            for against, wanted, name in ((bare, not reference, "the bare question"),
                                          (own, with_iti, "the same prompt")):
                paired = pair_with_baseline(members, against) if against and wanted else None
                if isinstance(paired, str):
                    notes.append(f"note: {row[0]} against {name}: no paired difference, {paired}")
                row.append(paired_text(paired, seeds))
            rows.append(row)
    print("\n## Prompting and ITI\n")
    print(markdown_rows(["setting", "seeds", "MC1", "MC2", "ΔMC2 vs bare question [95%]",
                         "ΔMC2 vs same prompt [95%]"], rows))

    # 3. The polite_replies sets, as written and length-matched (K 8, α 5, chat).
    for dataset in ("polite_replies", "polite_replies_matched"):
        members = runs_where(runs, dataset_name=dataset)
        if members:
            print(f"\n## {dataset}\n")
            custom, custom_pairs = collect_table(members)
            notes += unpaired_notes(custom)
            print(summary_table(custom))
            print(verdicts(custom, custom_pairs))

    for note in notes:
        print(note, file=sys.stderr)

    print("\n## Run times\n")
    print(markdown_rows(["run", "seed", "minutes"], [[run.path.name, str(run.record.config["seed"]),
                                                      f"{run.record.seconds / 60:.1f}"] for run in sorted(
        runs, key=lambda run: run.path)]))


def figure_name(model: str, args) -> str:
    """Named by the options that select its runs, so reports of other runs into the same folder never replace it."""
    limit = "" if args.limit is None else f"_limit_{args.limit}"
    grid = "_K" + "-".join(map(str, args.num_heads)) + "_alpha" + "-".join(f"{a:g}" for a in args.alpha)
    return f"{model}{limit}{grid}_iti_minus_baseline_by_category.png"


def mean_and_std(values: list[float]) -> tuple[float, float]:
    import numpy as np

    array = np.array([np.nan if v is None else v for v in values], dtype=float)
    return float(np.mean(array)), float(np.std(array, ddof=1)) if len(array) > 1 else float("nan")


def paired_text(paired, seeds: list[int]) -> str:
    """The paired MC2 difference (iti.collect.Paired; "—" for none, or a reason, which the notes give); the seeds
    it pairs on when the two sides share only some of the row's."""
    from iti.collect import Paired, difference

    if not isinstance(paired, Paired) or "MC2" not in paired.differences:
        return "—"
    interval, shared = paired.differences["MC2"], paired.seeds
    text = difference(interval.value, interval.low, interval.high)
    if shared != seeds:
        text += f" (seed{'s' if len(shared) > 1 else ''} {' '.join(map(str, shared))} only)"
    return text


def summary_table(table) -> str:
    """iti.collect's table, the columns this document shows."""
    from iti.collect import difference, markdown_rows, mean_std

    header = ["setting", "seeds", *SHOWN, "ΔMC1 [95%]", "ΔMC2 [95%]", "ΔMC3 [95%]", "Δ on seeds"]
    rows = []
    for _, row in table.iterrows():
        cells = [setting_label(row), str(row["seeds"])]
        cells += [mean_std(row[key], row[f"{key} std"]) for key in SHOWN]
        cells += [difference(row[f"Δ{key}"], row[f"Δ{key} low"], row[f"Δ{key} high"]) for key in ("MC1", "MC2", "MC3")]
        cells.append(row["paired seeds"] if isinstance(row["paired seeds"], str) else "—")
        rows.append(cells)
    return markdown_rows(header, rows)


def setting_label(row) -> str:
    """A table row's setting in words (a baseline's α is only the unused default)."""
    if str(row["K"]) == "0":
        return "baseline (no shift)"
    if "/" in str(row["K"]) + str(row["alpha"]):
        grid = [str(row[key]).replace("/", ", ") for key in ("K", "alpha")]
        return f"ITI, K and α chosen per fold from K {{{grid[0]}}} × α {{{grid[1]}}}"
    return f"ITI, K {row['K']}, α {row['alpha']}"


def verdicts(table, pairs) -> str:
    """Per ITI row paired with a baseline (iti.collect's pairs): its difference on MC2 and whether the interval
    excludes 0."""
    from iti.statistics import Interval

    lines = []
    for index, paired in pairs:
        row, questions = table.loc[index], len(paired.treated)
        if row["ΔMC2"] == row["ΔMC2"]:
            interval = Interval(row["ΔMC2"], row["ΔMC2 low"], row["ΔMC2 high"])
            lines.append(f"- {setting_label(row)} − baseline on MC2: {interval.value:+.3f} [{interval.low:+.3f}, "
                         f"{interval.high:+.3f}] (95% paired bootstrap interval over {questions} questions, seeds "
                         f"averaged per question): {interval.verdict()}.")
    return "\n".join(lines) + "\n"


def choices_table(runs: list) -> str:
    """Per seed and fold: the setting chosen, its selection score (set-aside questions) and its test score."""
    from iti.collect import markdown_rows

    rows = []
    for run in sorted((run.record for run in runs), key=lambda record: record.config["seed"]):
        for fold in run.folds:
            selection = fold.selection
            rows.append([str(run.config["seed"]), str(fold.fold), f"{fold.K}", f"{fold.alpha:g}",
                         f"{selection.chosen[selection.metric]:.4f}", f"{selection.chosen_test:.4f}",
                         str(selection.counts["select"]), selection.edge_note or ""])
    return markdown_rows(["seed", "fold", "K", "α", "MC2 on set-aside questions", "MC2 on test questions",
                          "set-aside questions", "note"], rows)


if __name__ == "__main__":
    run_main(main)
