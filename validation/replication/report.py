"""The tables and figures of iti_replication_results.md, from the runs validation/replication/bundled_model.sh
made: every number read from the runs' summary and answer files (iti.collect), none typed in.

python validation/replication/report.py [--results_dir validation] [--output_dir results]
    [--model_name smollm2_135M_instruct] [--limit N] [--num_heads 8 16 32 48 64] [--alpha 0 2 5 10 15 20]
    [--prompts_num_heads 16 48] [--prompts_alpha 0 5 10 15]

Prints markdown: the main table (seeds as mean ± std, ITI's paired difference from the baseline with its 95%
bootstrap interval over questions, one ITI row per KL budget), the price of each ITI row beside the paper's, each
fold's choice with its selection and test scores, the prompting comparison (each prompt with and without ITI,
differences from the bare question's baseline and from the same prompt's baseline), the polite_replies sets (as
written, length-matched), and the run times; writes the per-category figure of the ITI − baseline difference on MC2
to --output_dir. Runs whose selection tables priced every setting (KL and CE, issue 30) get, per budget: each
fold's choice with its price and where it lies on the front, ITI, the random-direction control, the baseline and
chance per seed and pooled, ITI − baseline and ITI − control with paired intervals, the truth and length parts,
links to each run's trade-off figure; and one trade-off figure over seeds (each setting's means over folds and
seeds) in --output_dir.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from iti.cli import ArgumentParser, run_main  # noqa: E402

# The grids of validation/replication/bundled_model.sh, fixed before any run: the main comparison's, and the
# prompting comparison's (the earlier grid).
GRID = ([8, 16, 32, 48, 64], [0.0, 2.0, 5.0, 10.0, 15.0, 20.0])
PROMPTS_GRID = ([16, 48], [0.0, 5.0, 10.0, 15.0])
# (instruction_prompt, qa_primer) of the bare question, the prompting comparison's reference.
BARE = ("none", "no")
# (label, instruction_prompt, qa_primer) of the paper's prompting comparison, in its table's order.
PROMPTS = (("no instruction", *BARE), ("instruction", "default", "no"), ("instruction + primer (default)", None, "auto"))
SHOWN = ("MC1", "MC2", "MC3", "CE", "KL")
MC = ("MC1", "MC2", "MC3")
# The paper's figures ours are set beside (ITI_SPEC §8; LLaMA-7B, CE and KL on OpenWebText).
PAPER_KL = 0.40
PAPER_PRICE = "the paper's Table 1 (LLaMA-7B, K 48, α 15, on OpenWebText): KL 0.40, CE 2.16 → 2.48"
PAPER_CONTROL = ("the paper's random-direction row (Table 3, LLaMA-7B at its best α, 20): True*Info 31.2 against the "
                 "baseline's 30.5 and ITI's 43.5, at KL 0.02 against ITI's 0.40")


def runs_where(runs: list, **config) -> list:
    """The runs (iti.runs.RunFile) whose options have these values."""
    return [run for run in runs if all(run.record.config.get(key) == value for key, value in config.items())]


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--results_dir", type=Path, default=Path("validation"))
    parser.add_argument("--output_dir", type=Path, default=Path("results"))
    parser.add_argument("--model_name", default="smollm2_135M_instruct")
    parser.add_argument("--limit", type=int, default=None, help="the runs of the first N questions (default: all)")
    parser.add_argument("--num_heads", type=int, nargs="+", default=GRID[0], help="the main grid's K values")
    parser.add_argument("--alpha", type=float, nargs="+", default=GRID[1], help="the main grid's α values")
    parser.add_argument("--prompts_num_heads", type=int, nargs="+", default=PROMPTS_GRID[0],
                        help="the prompting comparison's K values")
    parser.add_argument("--prompts_alpha", type=float, nargs="+", default=PROMPTS_GRID[1],
                        help="the prompting comparison's α values")
    args = parser.parse_args()
    model, grid, prompts_grid = args.model_name, (args.num_heads, args.alpha), (args.prompts_num_heads,
                                                                                 args.prompts_alpha)

    import matplotlib

    matplotlib.use("Agg")

    from iti.collect import (category_table, collect_table, finished_runs, markdown_rows, mean_std,
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

    def variant(instruction, primer, selects: bool, chosen_from=prompts_grid) -> list:
        """The runs of one prompt: its baselines, or its selection from the grid `chosen_from` with no KL budget."""
        heads = chosen_from[0] if selects else [0]
        chosen = runs_where(truthfulqa, instruction_prompt=instruction, qa_primer=primer, num_heads=heads)
        return [run for run in chosen if not selects or runs_where([run], alpha=chosen_from[1], max_kl=None)]

    # 1. The main comparison: default prompting, K and α chosen per fold (under each KL budget), against the baseline.
    main_iti = runs_where(truthfulqa, instruction_prompt=None, qa_primer="auto", num_heads=grid[0], alpha=grid[1])
    baseline = variant(None, "auto", False)
    table, pairs = collect_table(main_iti + baseline)
    labels = row_labels(table, main_iti + baseline)
    notes = unpaired_notes(table)
    if not main_iti:
        notes.append(f"note: no selection runs on the main grid, {grid_words(grid)}: give the runs' grid with "
                     "--num_heads and --alpha, or run validation/replication/bundled_model.sh")
    print("## Main table\n")
    print(summary_table(table, labels))
    print(verdicts(table, pairs, labels))
    print(price_lines(table, labels))
    unpriced = [run for run in main_iti if not priced(run.record)]
    if unpriced:
        print("\n## Choices per fold\n")
        print(choices_table(unpriced))
    # One figure: the first budget's row (no budget, where there is one), so budgets never share a bar.
    budgets = sorted({run.record.config.get("max_kl") for run in main_iti}, key=lambda b: (b is not None, b or 0))
    first = {str(run.path) for run in main_iti if run.record.config.get("max_kl") == (budgets or [None])[0]}
    pairs_shown = [(index, paired) for index, paired in pairs if table.at[index, "json"].split("; ")[0] in first]
    categories = category_table(table, pairs_shown, "MC2")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for figure in category_differences(categories, "MC2", lambda k, alpha: args.output_dir / figure_name(model, args)):
        print(f"\n(per-category figure{'' if len(budgets) < 2 else ', ' + budget_words(budgets[0])}: {figure})")

    baselines = [run.record for run in baseline]
    for budget in budgets:
        members = [run.record for run in main_iti if priced(run.record) and run.record.config.get("max_kl") == budget]
        if members:
            print(f"\n## Budget: {budget_words(budget)}\n")
            print(budget_section(members, baselines))
    shown_budgets = [budget for budget in budgets if budget is not None]
    over_seeds = tradeoff_over_seeds([run.record for run in main_iti if priced(run.record)],
                                     args.output_dir / figure_name(model, args, "tradeoff_over_seeds"),
                                     shown_budgets[0] if len(shown_budgets) == 1 else None)
    if over_seeds:
        print(f"\n(trade-off over seeds, each setting's means over folds and seeds: {over_seeds})")

    # 2. The paper's prompting comparison: each prompt with and without ITI, on the same folds. Without a default-
    # prompt run of the prompting grid, the default's ITI row is the main grid's, chosen with no budget.
    rows = []
    bare = [run.record for run in variant(*BARE, False)]
    default_from_main = False
    for label, instruction, primer in PROMPTS:
        for with_iti in (False, True):
            members = [run.record for run in variant(instruction, primer, with_iti)]
            if with_iti and not members and (instruction, primer) == (None, "auto") and grid != prompts_grid:
                members = [run.record for run in variant(None, "auto", True, grid)]
                default_from_main = bool(members)
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
    if default_from_main:
        print(f"The default's ITI row chose from the main grid ({grid_words(grid)}, no KL budget); the other prompts' "
              f"from {grid_words(prompts_grid)}.\n")

    # 3. The polite_replies sets, as written and length-matched (K 8, α 5, chat).
    for dataset in ("polite_replies", "polite_replies_matched"):
        members = runs_where(runs, dataset_name=dataset)
        if members:
            print(f"\n## {dataset}\n")
            custom, custom_pairs = collect_table(members)
            custom_labels = row_labels(custom, members)
            notes += unpaired_notes(custom)
            print(summary_table(custom, custom_labels))
            print(verdicts(custom, custom_pairs, custom_labels))

    for note in notes:
        print(note, file=sys.stderr)

    print("\n## Run times\n")
    print(markdown_rows(["run", "seed", "minutes", "selection tables"],
                        [[run.path.name, str(run.record.config["seed"]), f"{run.record.seconds / 60:.1f}",
                          tables_source(run.record)] for run in sorted(runs, key=lambda run: run.path)]))


def tables_source(record) -> str:
    """Where a selection run's tables came from: scored by the run, or read from a run that differs only in its
    KL budget (iti.runs.scored_tables), whose minutes include them."""
    sources = {Path(fold.selection.scored_in).name for fold in record.folds
               if fold.selection is not None and fold.selection.scored_in}
    if not any(fold.selection is not None for fold in record.folds):
        return "—"
    return "read from " + ", ".join(sorted(sources)) if sources else "scored here"


def figure_name(model: str, args, what: str = "iti_minus_baseline_by_category") -> str:
    """Named by the options that select its runs, so reports of other runs into the same folder never replace it."""
    limit = "" if args.limit is None else f"_limit_{args.limit}"
    grid = "_K" + "-".join(map(str, args.num_heads)) + "_alpha" + "-".join(f"{a:g}" for a in args.alpha)
    return f"{model}{limit}{grid}_{what}.png"


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


def summary_table(table, labels: list[str]) -> str:
    """iti.collect's table, the columns this document shows; `labels`: each row's setting (row_labels)."""
    from iti.collect import difference, markdown_rows, mean_std

    header = ["setting", "seeds", *SHOWN, "ΔMC1 [95%]", "ΔMC2 [95%]", "ΔMC3 [95%]", "Δ on seeds"]
    rows = []
    for (_, row), label in zip(table.iterrows(), labels):
        cells = [label, str(row["seeds"])]
        cells += [mean_std(row[key], row[f"{key} std"]) for key in SHOWN]
        cells += [difference(row[f"Δ{key}"], row[f"Δ{key} low"], row[f"Δ{key} high"]) for key in MC]
        cells.append(row["paired seeds"] if isinstance(row["paired seeds"], str) else "—")
        rows.append(cells)
    return markdown_rows(header, rows)


def grid_words(grid) -> str:
    return "K {" + ", ".join(map(str, grid[0])) + "} × α {" + ", ".join(f"{a:g}" for a in grid[1]) + "}"


def budget_words(max_kl: float | None) -> str:
    return "no KL budget" if max_kl is None else f"KL ≤ {max_kl:g}"


def setting_label(row) -> str:
    """A table row's setting in words (a baseline's α is only the unused default)."""
    if str(row["K"]) == "0":
        return "baseline (no shift)"
    if "/" in str(row["K"]) + str(row["alpha"]):
        grid = [str(row[key]).replace("/", ", ") for key in ("K", "alpha")]
        return f"ITI, K and α chosen per fold from K {{{grid[0]}}} × α {{{grid[1]}}}"
    return f"ITI, K {row['K']}, α {row['alpha']}"


def row_labels(table, runs: list) -> list[str]:
    """Each row's setting in words; the rows that choose K and α per fold also name their KL budget when some row
    of the table has one (`runs`: the table's, iti.runs.RunFile)."""
    budget_of = {str(run.path): run.record.config.get("max_kl") for run in runs}
    budgets = [budget_of[row["json"].split("; ")[0]] for _, row in table.iterrows()]
    with_budget = any(budget is not None for budget in budgets)
    return [setting_label(row) + (f", {budget_words(budget)}" if with_budget and "/" in f"{row['K']}{row['alpha']}"
                                  else "") for (_, row), budget in zip(table.iterrows(), budgets)]


def verdicts(table, pairs, labels: list[str]) -> str:
    """Per ITI row paired with a baseline (iti.collect's pairs): its difference on MC2 and whether the interval
    excludes 0."""
    from iti.statistics import Interval

    lines = []
    for index, paired in pairs:
        row, questions = table.loc[index], len(paired.treated)
        if row["ΔMC2"] == row["ΔMC2"]:
            interval = Interval(row["ΔMC2"], row["ΔMC2 low"], row["ΔMC2 high"])
            lines.append(f"- {labels[index]} − baseline on MC2: {interval.value:+.3f} [{interval.low:+.3f}, "
                         f"{interval.high:+.3f}] (95% paired bootstrap interval over {questions} questions, seeds "
                         f"averaged per question): {interval.verdict()}.")
    return "\n".join(lines) + "\n"


def price_lines(table, labels: list[str]) -> str:
    """Per ITI row whose KL was measured: its KL and CE against the baseline's CE, and the paper's beside them."""
    from iti.metrics import missing

    base_ce = [row["CE"] for _, row in table.iterrows() if str(row["K"]) == "0" and not missing(row["CE"])]
    lines = []
    for (_, row), label in zip(table.iterrows(), labels):
        if str(row["K"]) == "0" or missing(row["KL"]):
            continue
        ce = f"CE {base_ce[0]:.2f} → {row['CE']:.2f}" if base_ce and not missing(row["CE"]) else f"CE {row['CE']:.2f}"
        lines.append(f"- Price of {label}: KL {row['KL']:.2f} and {ce} on the reference prose (means over seeds), "
                     f"{row['KL'] / PAPER_KL:.2g} times the paper's KL; {PAPER_PRICE}.")
    return "\n".join(lines) + ("\n" if lines else "")


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


# ----------------------------------------------------------------------------- runs that priced every setting

def priced(record) -> bool:
    """Whether a selection run measured KL for the settings of its folds' tables (issue 30), not only its choice."""
    from iti.metrics import missing

    return any(not missing(row.get("KL")) for fold in record.folds if fold.selection
               for row in fold.selection.table if row["alpha"] != 0)


def control_view(record):
    """The run's record as if its control were the run (iti.control.read_control_answers): the control's answer
    files, its means over folds, no record-level statistics of ITI's; so it pairs with ITI question by question.
    None for a run without a control in every fold."""
    import dataclasses

    from iti.metrics import mean_over_folds

    if not record.folds or not all(fold.control and fold.files.control_answers for fold in record.folds):
        return None
    folds = [dataclasses.replace(fold, files=dataclasses.replace(fold.files, answers=fold.files.control_answers),
                                 results=fold.control.results) for fold in record.folds]
    # As validate_2fold's totals take a run's means over folds (a metric not measured is NaN).
    final = mean_over_folds([{key: float("nan") if value is None else float(value)
                              for key, value in fold.results.items()} for fold in folds])
    return dataclasses.replace(record, folds=folds, final=final, bootstrap=None, control=None, effect_parts=None,
                               tradeoff_figure=None)


def budget_section(records: list, baselines: list) -> str:
    """One budget's selection runs (`records`, one per seed) against the baselines: the choices, the scores and
    differences per seed and pooled, the truth and length parts, and the trade-off figures."""
    records = sorted(records, key=lambda record: record.config["seed"])
    links = ", ".join(f"[seed {r.config['seed']}]({r.tradeoff_figure})" for r in records if r.tradeoff_figure)
    figures = [f"Trade-off figures (every setting's set-aside score against its KL, per fold): {links}\n"]
    return "\n".join([
        "### Choices per fold\n", selection_table(records),
        "### Scores on the test questions (95% bootstrap intervals over questions)\n",
        scores_table(records, baselines),
        "### Differences (paired 95% bootstrap intervals over questions; pooled: seeds averaged per question)\n",
        differences_table(records, baselines),
        "### Truth and length parts (what moved the scores)\n", parts_table(records)]
        + (figures if links else []))


def selection_table(records: list) -> str:
    """Per seed and fold: the settings scored, those on the front, ITI's choice with its price and where it lies,
    its test score, and the control's choice."""
    from iti.collect import markdown_rows
    from iti.metrics import shown

    rows = []
    for record in records:
        for fold in record.folds:
            selection, control = fold.selection, fold.control
            metric, chosen = selection.metric, selection.chosen
            front = [f"{row['K']}/{row['alpha']:g}" for row in selection.table if row.get("front")]
            on_front = next((row.get("front") for row in selection.table
                             if (row["K"], row["alpha"]) == (chosen["K"], chosen["alpha"])), None)
            where = {True: "on the front", False: "off the front"}.get(on_front, "front unknown")
            own = control.selection if control else None
            rows.append([str(record.config["seed"]), str(fold.fold), str(len(selection.table)),
                         f"{len(front)}: {', '.join(front)}", f"{chosen['K']}/{chosen['alpha']:g} ({where})",
                         shown(chosen[metric]), shown(chosen.get("KL")), shown(chosen.get("CE")),
                         shown(selection.chosen_test),
                         f"{own.chosen['K']}/{own.chosen['alpha']:g}" if own else "—",
                         shown(own.chosen[metric]) if own else "—", shown(own.chosen.get("KL")) if own else "—",
                         shown(own.chosen_test) if own else "—",
                         "; ".join(note for note in (selection.note, selection.edge_note) if note)])
    metric = records[0].folds[0].selection.metric
    return markdown_rows(["seed", "fold", "settings", "on the front (K/α)", "chosen K/α", f"{metric} set-aside",
                          "KL", "CE", f"{metric} test", "control's K/α", f"its {metric} set-aside", "its KL",
                          f"its {metric} test", "note"], rows)


def interval_text(interval: dict | None) -> str:
    from iti.metrics import missing

    if interval is None or missing(interval.get("value")):
        return "—"
    return f"{interval['value']:.4f} [{interval['low']:.4f}, {interval['high']:.4f}]"


def pooled_intervals(records: list) -> dict[str, dict]:
    """Each MC metric's mean over the questions (scores averaged over the runs' seeds) and its bootstrap interval."""
    from iti.collect import answer_tag, seed_averaged_answers
    from iti.statistics import intervals

    frame = seed_averaged_answers(records, answer_tag(records[0]))
    if frame is None:
        return {}
    return {name: value.as_dict() for name, value in
            intervals({name: frame[name].to_numpy() for name in MC if name in frame}).items() if name in MC}


def scores_table(records: list, baselines: list) -> str:
    """ITI, its control and the baseline per seed and pooled over seeds, and chance, on the same questions."""
    from iti.collect import markdown_rows, mean_std
    from iti.metrics import shown

    seeds = [record.config["seed"] for record in records]
    base = [record for record in baselines if record.config["seed"] in seeds]
    controls = [view for view in map(control_view, records) if view is not None]
    rows = []

    def add(label: str, members: list, scores: dict, final: dict) -> None:
        rows.append([label, " ".join(str(r.config["seed"]) for r in members),
                     *(interval_text(scores.get(name)) for name in MC),
                     *(final.get(key, "—") for key in ("CE", "KL"))])

    for name, members in (("ITI", records), ("control", controls), ("baseline", base)):
        for record in members:
            scores = record.bootstrap.intervals if record.bootstrap else pooled_intervals([record])
            add(f"{name}, seed {record.config['seed']}", [record], scores,
                {key: shown(record.final.get(key)) for key in ("CE", "KL")})
        if len(members) > 1:
            add(f"{name}, seeds pooled", members, pooled_intervals(members),
                {key: mean_std(*mean_and_std([r.final.get(key) for r in members])) for key in ("CE", "KL")})
    seeds_of_chance: dict[tuple, list[str]] = {}
    for record in records:
        if record.chance:
            seeds_of_chance.setdefault(tuple(sorted(record.chance.items())), []).append(str(record.config["seed"]))
    for chance, of in seeds_of_chance.items():
        rows.append(["chance (every answer equally likely)", " ".join(of),
                     *(f"{dict(chance)[name]:.4f}" for name in MC), "—", "—"])
    return markdown_rows(["setting", "seeds", *(f"{name} [95%]" for name in MC), "CE", "KL"], rows)


def differences_table(records: list, baselines: list) -> str:
    """ITI − baseline and ITI − control per seed (the control's: the record's own) and pooled over seeds, and the
    pooled MC2 difference from the control in words beside the paper's random-direction row."""
    from iti.collect import Paired, difference, markdown_rows, pair_with_baseline

    def signed(interval: dict | None) -> str:
        return "—" if interval is None else difference(interval["value"], interval["low"], interval["high"])

    def cells(paired) -> list[str]:
        differences = paired.differences if isinstance(paired, Paired) else {}
        return [signed(differences[name].as_dict() if name in differences else None) for name in MC]

    rows, words = [], []
    for record in records:
        own = record.control or {}
        rows.append([f"seed {record.config['seed']}", *cells(pair_with_baseline([record], baselines)),
                     *(signed(own.get(name)) for name in MC)])
    controls = [view for view in map(control_view, records) if view is not None]
    against_control = pair_with_baseline(records, controls) if controls else None
    if len(records) > 1:
        rows.append(["seeds pooled", *cells(pair_with_baseline(records, baselines)), *cells(against_control)])
    if isinstance(against_control, Paired) and "MC2" in against_control.differences:
        gap = against_control.differences["MC2"]
        words.append(f"- ITI − control on MC2 (seeds {' '.join(map(str, against_control.seeds))}, averaged per "
                     f"question): {gap.value:+.3f} [{gap.low:+.3f}, {gap.high:+.3f}]: {gap.verdict()}. Beside it, "
                     f"{PAPER_CONTROL}.")
    header = ["seeds", *(f"ITI − baseline {name}" for name in MC), *(f"ITI − control {name}" for name in MC)]
    return markdown_rows(header, rows) + ("\n" + "\n".join(words) + "\n" if words else "")


def pooled_parts(records: list) -> dict | None:
    """The truth and length parts (iti.effect_parts) over every seed's answers, a question being the same question
    in every seed (its answers' changes from all seeds together); None where an answer file lacks the columns."""
    import dataclasses

    import numpy as np
    import pandas as pd

    from iti.collect import answer_tag
    from iti.effect_parts import ScoredAnswers, answers_of_frame, effect_parts
    from iti.evaluation import read_fold_answers

    tag, joined = answer_tag(records[0]), []
    for record in records:
        frame = pd.concat([read_fold_answers(fold, tag) for fold in record.folds], ignore_index=True)
        answers = answers_of_frame(frame, tag)
        if answers is None:
            return None
        joined.append(dataclasses.replace(answers, question=frame["Question"].to_numpy(dtype=str)[answers.question]))
    return effect_parts(ScoredAnswers(*(np.concatenate([getattr(answers, field.name) for answers in joined])
                                        for field in dataclasses.fields(ScoredAnswers))))


def parts_table(records: list) -> str:
    """Per seed (the record's effect_parts) and pooled over seeds: the truth part (nats for a true answer beyond its
    length) and the length part (nats per token), each with its 95% interval over questions."""
    from iti.collect import markdown_rows

    def row(label: str, parts: dict | None) -> list[str]:
        if not parts:
            return [label, "—", "—", "—", "—"]
        truth, length = parts["truth"], parts["length"]
        return [label, f"{truth['coef']:+.3f} [{truth['low']:+.3f}, {truth['high']:+.3f}]",
                f"{length['coef']:+.4f} [{length['low']:+.4f}, {length['high']:+.4f}]", str(parts["questions"]),
                str(parts["answers"])]

    rows = [row(f"seed {record.config['seed']}", record.effect_parts) for record in records]
    if len(records) > 1:
        rows.append(row("seeds pooled", pooled_parts(records)))
    return markdown_rows(["seeds", "truth part, nats [95%]", "length part, nats per token [95%]", "questions",
                          "answers"], rows)


def tradeoff_over_seeds(records: list, path: Path, max_kl: float | None):
    """iti.plots.tradeoff_figure of every setting's set-aside score and KL, each a mean over the folds and seeds of
    `records` (ITI's and the control's); None without runs."""
    import pandas as pd

    from iti.plots import tradeoff_figure

    if not records:
        return None
    metric = records[0].folds[0].selection.metric

    def means(tables: list) -> list[dict] | None:
        rows = [row for table in tables for row in table]
        if not rows:
            return None
        frame = pd.DataFrame([{key: row.get(key) for key in ("K", "alpha", metric, "KL")} for row in rows])
        return frame.astype({metric: float, "KL": float}).groupby(["K", "alpha"], as_index=False).mean().to_dict(
            "records")

    folds = [fold for record in records for fold in record.folds]
    return tradeoff_figure(path, metric, [{
        "fold": None, "iti": means([fold.selection.table for fold in folds]),
        "control": means([fold.control.selection.table for fold in folds if fold.control and fold.control.selection]),
        "chosen": None, "control_chosen": None}], max_kl)


if __name__ == "__main__":
    run_main(main)
