"""validation/replication/report.py on real validate_2fold runs of a tiny model (the runs bundled_model.sh makes,
on a few questions and a small grid): every number it prints is the runs' own, recomputed here from their
summary files, and it writes the per-category figure."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, tiny_model_folder

SCRIPT = REPO_ROOT / "validation" / "replication" / "report.py"
LIMIT, GRID = 20, ((2, 4), (0.0, 5.0))


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


def report(root) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--results_dir", str(root / "results"), "--output_dir",
                           str(root / "figures"), "--model_name", "tiny", "--limit", str(LIMIT),
                           "--num_heads", *map(str, GRID[0]), "--alpha", *map(str, GRID[1])],
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
    """results/replication_runs/ holds runs whose records name their files under validation/ (where
    iti_replication_results.md copies them): each fold's recorded digests are those of the committed files."""
    from iti.runs import read_run

    committed = REPO_ROOT / "results" / "replication_runs"
    records = sorted((committed / "results_dump" / "summary_dump").glob("*.json"))
    assert records
    for path in records:
        for fold in read_run(path).folds:
            digests = fold.files.sha256
            assert fold.files.answers in digests and fold.files.summary in digests
            for name, recorded in digests.items():
                local = committed / Path(name).relative_to("validation")
                assert hashlib.sha256(local.read_bytes()).hexdigest() == recorded, local
