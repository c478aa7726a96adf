"""validation/replication/report.py on real validate_2fold runs of a tiny model (the runs bundled_model.sh makes,
on a few questions and a small grid): every number it prints is the runs' own, recomputed here from their
summary and answer files, and it writes the per-category figure; runs that price every setting (MC, CE and KL,
--control random_direction, with no budget and under --max_kl) get their per-budget sections."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO_ROOT, tiny_model_folder

SCRIPT = REPO_ROOT / "validation" / "replication" / "report.py"
LIMIT, GRID = 20, ((2, 4), (0.0, 5.0))
# The priced runs' grid: every setting shifts, so every choice has its truth and length parts.
PRICED_GRID = ((2, 4), (2.0, 8.0))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer, tqa_path):
    """Seeds 1 and 2: a selection over GRID and its baseline; seed 1 also with the bare question (no instruction,
    no primer), with and without ITI."""
    from iti.activations import save_features
    from iti.data import build_prompt_set
    from iti.models import load_model
    from iti.validate import ValidationConfig, run_validation

    root = tmp_path_factory.mktemp("replication")
    folder = tiny_model_folder(tmp_path_factory, "report_model", "llama", tokenizer)
    model, _ = load_model(str(folder), "cpu", "float32")
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        save_features(model, tokenizer, build_prompt_set(dataset, tqa_path, limit=LIMIT), root / "features", "tiny",
                      progress=False, limit=LIMIT)
    common = dict(model_name="tiny", model_path=str(folder), features_dir=str(root / "features"),
                  results_dir=str(root / "results"), tqa_path=str(tqa_path), limit=LIMIT, use_center_of_mass=True,
                  metrics=("mc",), device="cpu", batch_size=8)
    records = {}
    for seed, prompt in ((1, {}), (2, {}), (1, {"instruction_prompt": "none", "qa_primer": "no"})):
        bare = "bare " if prompt else ""
        for label, heads, alphas in (("iti", GRID[0], GRID[1]), ("baseline", (0,), (15.0,))):
            cfg = ValidationConfig(**common, seed=seed, num_heads=heads, alpha=alphas, **prompt)
            records[f"{bare}{label} {seed}"] = run_validation(cfg, progress=False, log=lambda _: None)
    return root, records


def report(root, results: str = "results", chosen_from=GRID) -> subprocess.CompletedProcess:
    """The report of the runs under root/results on a grid (the main grid and the prompting comparison's)."""
    grid = ["--num_heads", *map(str, chosen_from[0]), "--alpha", *map(str, chosen_from[1])]
    return subprocess.run([sys.executable, str(SCRIPT), "--results_dir", str(root / results), "--output_dir",
                           str(root / "figures"), "--model_name", "tiny", "--limit", str(LIMIT), *grid,
                           *(f"--prompts_{flag[2:]}" if flag.startswith("--") else flag for flag in grid)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)


def table_row(text: str, section: str, first_cell: str) -> list[str]:
    part = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    [line] = [line for line in part.splitlines() if line.startswith(f"| {first_cell} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def mean_std(values: list[float]) -> str:
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def test_the_report_shows_the_runs_own_numbers(runs):
    root, records = runs
    result = report(root)
    assert result.returncode == 0, result.stderr
    text = result.stdout

    iti = table_row(text, "Main table", "ITI, K and α chosen per fold from K {2, 4} × α {0, 5}")
    base = table_row(text, "Main table", "baseline (no shift)")
    header = ["setting", "seeds", "MC1", "MC2", "MC3", "CE", "KL"]
    for name in ("MC1", "MC2", "MC3"):
        column = header.index(name)
        assert iti[column] == mean_std([records[f"iti {s}"]["final"][name] for s in (1, 2)])
        assert base[column] == mean_std([records[f"baseline {s}"]["final"][name] for s in (1, 2)])
    assert iti[1] == "1 2" and iti[header.index("CE")] == "—"
    assert iti[-1] == "1 2" and base[-1] == "—"  # the seeds the difference pairs on; a baseline has none
    assert re.search(r"^- ITI, K and α chosen .* − baseline on MC2: [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\] "
                     rf"\(95% paired bootstrap interval over {LIMIT} questions, .*\): (the interval excludes 0|no "
                     "significant difference)", text, re.M)

    for seed in (1, 2):
        for fold in records[f"iti {seed}"]["folds"]:
            row = table_row(text, "Choices per fold", f"{seed} | {fold['fold']}")
            selection = fold["selection"]
            assert row[2:6] == [str(fold["K"]), f"{fold['alpha']:g}", f"{selection['chosen']['MC2']:.4f}",
                                f"{fold['results']['MC2']:.4f}"]

    bare = table_row(text, "Prompting and ITI", "no instruction + ITI")
    assert bare[:2] == ["no instruction + ITI", "1"] and bare[3] == f"{records['bare iti 1']['final']['MC2']:.4f}"
    # The default prompt's ITI row averages seeds 1 and 2; the bare question ran only on seed 1, so its difference
    # from the bare question pairs seed 1 alone and says so, while the one from its own baseline pairs both.
    default = table_row(text, "Prompting and ITI", "instruction + primer (default) + ITI")
    assert default[1] == "1 2" and default[4].endswith(" (seed 1 only)") and "only" not in default[5]
    assert "only" not in bare[4]
    assert table_row(text, "Prompting and ITI", "no instruction")[4] == "—"  # the reference itself
    # Named by the options that chose its runs: a report of other runs into the same folder leaves it alone.
    assert (root / "figures" / "tiny_limit_20_K2-4_alpha0-5_iti_minus_baseline_by_category.png").stat().st_size > 0


def test_no_runs_of_the_asked_questions_is_one_line(runs):
    root, _ = runs
    result = subprocess.run([sys.executable, str(SCRIPT), "--results_dir", str(root / "results"), "--model_name",
                             "tiny", "--output_dir", str(root / "elsewhere")], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: no complete runs of tiny on all TruthfulQA questions in {root / 'results'}; run "
        "validation/replication/bundled_model.sh first"]
    assert not (root / "elsewhere").exists()


def test_a_changed_answer_file_is_refused_naming_it(runs, tmp_path):
    """An ITI run's answer file with one score changed since the run recorded its digest (it still parses): the
    report stops in one line naming it, and writes no figure, instead of printing other numbers."""
    root, records = runs
    summaries = tmp_path / "results" / "results_dump" / "summary_dump"
    shutil.copytree(root / "results" / "results_dump" / "summary_dump", summaries)
    record = json.loads(Path(records["iti 1"]["json_path"]).read_text())
    files = record["folds"][0]["files"]
    text = Path(files["answers"]).read_text()
    changed = tmp_path / "answers.csv"
    changed.write_text(text.replace(",0.", ",1.", 1))
    assert changed.read_text() != text
    files["sha256"][str(changed)] = files["sha256"].pop(files["answers"])
    assert files["sha256"][str(changed)] == hashlib.sha256(text.encode()).hexdigest()
    files["answers"] = str(changed)
    (summaries / Path(records["iti 1"]["json_path"]).name).write_text(json.dumps(record))
    result = report(tmp_path)
    assert result.returncode == 2, result.stderr
    [error] = result.stderr.strip().splitlines()
    assert error.startswith(f"error: answer file {changed} is not the file that was written there: its SHA-256 ")
    assert not (tmp_path / "figures").exists()


def test_the_committed_runs_files_hold_the_bytes_their_records_digest():
    """results/replication_runs/ holds runs whose records name their files under the results_dir they were written
    to (validation/, or a machine's absolute path): read where they lie now, each fold's recorded digests are those
    of the committed files."""
    from iti.runs import read_run

    committed = REPO_ROOT / "results" / "replication_runs"
    records = sorted((committed / "results_dump" / "summary_dump").glob("*.json"))
    assert records
    for path in records:
        for fold in read_run(path).folds:
            digests = fold.files.sha256
            assert fold.files.answers in digests and fold.files.summary in digests
            for name, recorded in digests.items():
                assert Path(name).is_relative_to(committed), name
                assert hashlib.sha256(Path(name).read_bytes()).hexdigest() == recorded, name


# ----------------------------------------------------------------------------- runs that price every setting

@pytest.fixture(scope="module")
def priced_runs(runs):
    """bundled_model.sh's main part on GRID, seeds 1 and 2, MC, CE and KL on a few documents: the selection with
    --control random_direction with no budget and under a KL budget that keeps some settings and not others (the
    mean KL of seed 1's settings), and the baseline. Returns the folder, the budget and the records."""
    from iti.validate import ValidationConfig, run_validation

    root, old = runs
    owt = root / "owt.txt"
    owt.write_text("\n\n".join(f"Document {i}: the river rose {i} feet overnight and the town kept dry." for i in
                               range(4)) + "\n")
    common = dict(model_name="tiny", model_path=old["iti 1"]["config"]["model_path"],
                  features_dir=str(root / "features"), results_dir=str(root / "priced"), tqa_path=old["iti 1"][
                      "config"]["tqa_path"], limit=LIMIT, use_center_of_mass=True, metrics=("mc", "ce", "kl"),
                  owt_path=str(owt), owt_samples=4, device="cpu", batch_size=8)

    def run(label: str, seed: int, **options) -> None:
        records[f"{label} {seed}"] = run_validation(ValidationConfig(**common, seed=seed, **options), progress=False,
                                                    log=lambda _: None)

    records: dict = {}
    grid = dict(num_heads=PRICED_GRID[0], alpha=PRICED_GRID[1], control="random_direction")
    run("iti", 1, **grid)
    budget = float(np.mean([row["KL"] for fold in records["iti 1"]["folds"] for row in fold["selection"]["table"]]))
    for seed in (1, 2):
        if seed == 2:
            run("iti", seed, **grid)
        run("budget", seed, **grid, max_kl=budget)
        run("baseline", seed, num_heads=(0,), alpha=(15.0,))
    return root, budget, records


def section(text: str, heading: str) -> str:
    """The lines under `heading` (a whole line) up to the next heading of its level or above."""
    level = heading.split(" ", 1)[0]
    part = f"\n{text}".split(f"\n{heading}\n", 1)[1]
    return re.split(rf"\n#{{1,{len(level)}}} ", part, maxsplit=1)[0]


def cells_of(part: str, first_cell: str) -> list[str]:
    [line] = [line for line in part.splitlines() if line.startswith(f"| {first_cell} |")]
    return [cell.strip() for cell in line.strip("|").split("|")]


def interval(values: np.ndarray, sign: str = "") -> str:
    """The mean and 95% percentile interval of 1000 seeded resamples of the questions, as the page writes it (a
    difference with its sign: `sign` "+")."""
    draws = np.random.default_rng(0).integers(0, len(values), size=(1000, len(values)))
    low, high = np.quantile(values[draws].mean(axis=1), [0.025, 0.975])
    return shown_interval({"value": values.mean(), "low": low, "high": high}, sign)


def shown_interval(value: dict, sign: str = "") -> str:
    return f"{value['value']:{sign}.4f} [{value['low']:{sign}.4f}, {value['high']:{sign}.4f}]"


def seed_means(records: list[dict], key: str = "answers") -> pd.DataFrame:
    """Per question (by its text, in the order the first seed meets it), each column averaged over the seeds."""
    frames = [pd.concat([pd.read_csv(fold["files"][key]) for fold in record["folds"]], ignore_index=True)
              for record in records]
    return pd.concat(frames).groupby("Question", sort=False).mean(numeric_only=True)


def test_priced_runs_get_their_budget_sections_with_the_records_values(priced_runs):
    root, budget, records = priced_runs
    result = report(root, "priced", PRICED_GRID)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "as in the paper" not in text

    # The main table: one ITI row per budget, each with its price beside the paper's.
    main = section(text, "## Main table")
    label = "ITI, K and α chosen per fold from K {2, 4} × α {2, 8}"
    for name, words in (("iti", "no KL budget"), ("budget", f"KL ≤ {budget:g}")):
        row = cells_of(main, f"{label}, {words}")
        kl, ce = (np.mean([records[f"{name} {s}"]["final"][key] for s in (1, 2)]) for key in ("KL", "CE"))
        base_ce = np.mean([records[f"baseline {s}"]["final"]["CE"] for s in (1, 2)])
        assert row[6] == f"{kl:.4f} ± {np.std([records[f'{name} {s}']['final']['KL'] for s in (1, 2)], ddof=1):.4f}"
        assert (f"- Price of {label}, {words}: KL {kl:.2f} and CE {base_ce:.2f} → {ce:.2f} on the reference prose "
                f"(means over seeds), {kl / 0.40:.2g} times the paper's KL; the paper's Table 1 (LLaMA-7B, K 48, "
                "α 15, on OpenWebText): KL 0.40, CE 2.16 → 2.48.") in main
    assert "\n## Choices per fold\n" not in text  # the budgets' own tables replace it

    tag = "tiny"
    for name, words in (("iti", "no KL budget"), ("budget", f"KL ≤ {budget:g}")):
        part = section(text, f"## Budget: {words}")
        seeds = [records[f"{name} {s}"] for s in (1, 2)]
        baselines = [records[f"baseline {s}"] for s in (1, 2)]
        choices = section(part, "### Choices per fold")
        for record in seeds:
            for fold in record["folds"]:
                selection, control = fold["selection"], fold["control"]
                chosen, own = selection["chosen"], control["selection"]["chosen"]
                [flag] = [row["front"] for row in selection["table"] if (row["K"], row["alpha"]) == (chosen["K"],
                                                                                                      chosen["alpha"])]
                front = [f"{row['K']}/{row['alpha']:g}" for row in selection["table"] if row["front"]]
                assert cells_of(choices, f"{record['config']['seed']} | {fold['fold']}")[2:13] == [
                    str(len(selection["table"])), f"{len(front)}: {', '.join(front)}",
                    f"{chosen['K']}/{chosen['alpha']:g} ({'on' if flag else 'off'} the front)",
                    f"{chosen['MC2']:.4f}", f"{chosen['KL']:.4f}", f"{chosen['CE']:.4f}",
                    f"{fold['results']['MC2']:.4f}", f"{own['K']}/{own['alpha']:g}", f"{own['MC2']:.4f}",
                    f"{own['KL']:.4f}", f"{control['results']['MC2']:.4f}"]
                assert fold["K"] == chosen["K"] and (fold["K"], fold["alpha"]) != (None, None)
                if name == "budget":
                    assert chosen["KL"] <= budget or selection["note"]

        scores = section(part, "### Scores on the test questions (95% bootstrap intervals over questions)")
        for record in seeds:
            seed = record["config"]["seed"]
            iti = cells_of(scores, f"ITI, seed {seed}")
            assert iti[2:5] == [shown_interval(record["bootstrap"]["intervals"][m]) for m in ("MC1", "MC2", "MC3")]
            assert iti[5:7] == [f"{record['final'][key]:.4f}" for key in ("CE", "KL")]
            control = seed_means([record], "control_answers")
            row = cells_of(scores, f"control, seed {seed}")
            assert row[3] == interval(control[f"{tag} MC2"].to_numpy())
            assert row[5:7] == [f"{np.mean([fold['control']['results'][key] for fold in record['folds']]):.4f}"
                                for key in ("CE", "KL")]
        pooled = seed_means(seeds)
        assert cells_of(scores, "ITI, seeds pooled")[3] == interval(pooled[f"{tag} MC2"].to_numpy())
        chance = seeds[0]["chance"]
        assert seeds[1]["chance"] == chance
        assert cells_of(scores, "chance (every answer equally likely)")[1:5] == [
            "1 2", *(f"{chance[m]:.4f}" for m in ("MC1", "MC2", "MC3"))]

        differences = section(part, "### Differences (paired 95% bootstrap intervals over questions; pooled: seeds "
                                    "averaged per question)")
        for record, base in zip(seeds, baselines):
            row = cells_of(differences, f"seed {record['config']['seed']}")
            assert row[4:7] == [shown_interval(record["control"][m], "+") for m in ("MC1", "MC2", "MC3")]
            iti, unshifted = seed_means([record]), seed_means([base])
            gap = iti[f"{tag} MC2"] - unshifted[f"{tag} MC2"].reindex(iti.index)
            assert row[2] == interval(gap.to_numpy(), "+")
        pooled_control = seed_means(seeds, "control_answers").reindex(pooled.index)
        gap = (pooled[f"{tag} MC2"] - pooled_control[f"{tag} MC2"]).to_numpy()
        assert cells_of(differences, "seeds pooled")[5] == interval(gap, "+")

        parts = section(part, "### Truth and length parts (what moved the scores)")
        for record in seeds:
            truth, length = record["effect_parts"]["truth"], record["effect_parts"]["length"]
            assert cells_of(parts, f"seed {record['config']['seed']}")[1:3] == [
                f"{truth['coef']:+.3f} [{truth['low']:+.3f}, {truth['high']:+.3f}]",
                f"{length['coef']:+.4f} [{length['low']:+.4f}, {length['high']:+.4f}]"]
        pooled_truth, pooled_length = least_squares_parts(seeds, tag)
        row = cells_of(parts, "seeds pooled")
        assert row[1].startswith(f"{pooled_truth:+.3f} [") and row[2].startswith(f"{pooled_length:+.4f} [")

        for record in seeds:
            assert f"[seed {record['config']['seed']}]({record['tradeoff_figure']})" in part
            assert Path(record["tradeoff_figure"]).stat().st_size > 0
    assert (root / "figures" / "tiny_limit_20_K2-4_alpha2-8_tradeoff_over_seeds.png").stat().st_size > 0

    # A budget run chose from the tables of the run that differs from it only in its budget; the run times say so.
    times = section(text, "## Run times")
    for seed in (1, 2):
        unbounded, bounded = (Path(records[f"{name} {seed}"]["json_path"]).name for name in ("iti", "budget"))
        assert cells_of(times, unbounded)[3] == "scored here"
        assert cells_of(times, bounded)[3] == f"read from {unbounded}"
        assert cells_of(times, Path(records[f"baseline {seed}"]["json_path"]).name)[3] == "—"


def least_squares_parts(records: list[dict], tag: str) -> tuple[float, float]:
    """numpy's least squares of every answer's change (shifted − unshifted) on its token count and truth label, each
    demeaned within its question (the same question in every seed), no intercept: (truth, length)."""
    rows = []
    for record in records:
        for fold in record["folds"]:
            frame = pd.read_csv(fold["files"]["answers"])
            for _, question in frame.iterrows():
                for side, truth in (("true", 1.0), ("false", 0.0)):
                    shifted, unshifted, tokens = (json.loads(question[f"{tag} {name}-{side}"]) for name in
                                                  ("lprob scores", "unshifted lprob scores", "tokens"))
                    rows += [(question["Question"], s - u, t, truth) for s, u, t in zip(shifted, unshifted, tokens)]
    frame = pd.DataFrame(rows, columns=["question", "change", "tokens", "truth"])
    columns = ["change", "tokens", "truth"]
    demeaned = frame[columns] - frame.groupby("question")[columns].transform("mean")
    (length, truth), *_ = np.linalg.lstsq(demeaned[["tokens", "truth"]].to_numpy(), demeaned["change"].to_numpy(),
                                          rcond=None)
    return float(truth), float(length)


def test_a_results_folder_moved_whole_is_read_where_it_lies(priced_runs, tmp_path):
    """The priced runs' folder copied elsewhere and the original moved away: the report reads every file (answers,
    the control's answers, each checked against its digest) from the copy and prints the same tables, its links
    into the copy."""
    root, _, _ = priced_runs
    before = report(root, "priced", PRICED_GRID)
    assert before.returncode == 0, before.stderr
    shutil.copytree(root / "priced", tmp_path / "priced")
    away = root / "priced_moved_away"
    (root / "priced").rename(away)
    try:
        after = report(tmp_path, "priced", PRICED_GRID)
    finally:
        away.rename(root / "priced")
    assert after.returncode == 0, after.stderr
    assert str(root) not in after.stdout
    assert "_tradeoff.png" in after.stdout
    assert after.stdout == before.stdout.replace(str(root), str(tmp_path))
