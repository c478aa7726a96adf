"""validate_2fold --sweep: every (K, α) of a grid in one process (one model load, one probe fit per fold), each cell
written as the run of that setting alone writes it; a killed sweep resumes with the rest; collect_sweep and
sweep_alpha_k.sh on its runs."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iti import sweep as sweeps
from iti.errors import UsageError
from iti.head_shifts import HeadShifts
from iti.identity import identity, readable_name
from iti.runs import Run
from iti.validate import ValidationConfig, one_model_source, run_sweep, run_validation
from tests.conftest import REPO_ROOT, only_file
from tests.test_settings_batch import sum_rtol
from tests.test_validate_cli import MODEL, config, setup  # noqa: F401 (setup: the tiny model's fixture)

GRID = dict(num_heads=(0, 2, 4), alpha=(0.0, 5.0), metrics=("mc", "ce", "kl"), limit=6)
# Per-question scores are sums over a few answer tokens of float32 log-probabilities; CE and KL means over a few
# documents: a batched evaluation may reorder their sums, within float32's rounding of values of that size.
FLOAT32_SUMS = dict(rel=1e-5, abs=1e-5)
SCORES = ("MC1", "MC2", "MC3", "lprob max", "lprob diff")


def quiet(_):
    pass


def same_means(got: dict, expected: dict) -> bool:
    """The same metrics measured (None where not) and equal values within FLOAT32_SUMS."""
    unmeasured = {name for name, value in expected.items() if value is None}
    return got.keys() == expected.keys() and {name for name, value in got.items() if value is None} == unmeasured \
        and {name: got[name] for name in got.keys() - unmeasured} == pytest.approx(
            {name: expected[name] for name in expected.keys() - unmeasured}, **FLOAT32_SUMS)


@pytest.fixture(scope="module")
def counted_sweep(setup, tmp_path_factory):  # noqa: F811
    """The grid swept in one process, with the model loads, probe trainings and evaluations (settings per fold)
    counted."""
    import iti.fitting
    import iti.validate
    from iti.evaluation import Evaluator

    results = tmp_path_factory.mktemp("one_process")
    counts = {"loads": 0, "probe fits": 0, "evaluations": []}
    real = (iti.validate.load_model, iti.fitting.train_probes, Evaluator.evaluate_groups)

    def load_model(*args, **kwargs):
        counts["loads"] += 1
        return real[0](*args, **kwargs)

    def train_probes(*args, **kwargs):
        counts["probe fits"] += 1
        return real[1](*args, **kwargs)

    def evaluate_groups(self, groups, *args, **kwargs):
        counts["evaluations"].extend(len(settings) for settings, _ in groups)
        return real[2](self, groups, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(iti.validate, "load_model", load_model)
        patch.setattr(iti.fitting, "train_probes", train_probes)
        patch.setattr(Evaluator, "evaluate_groups", evaluate_groups)
        records = run_sweep(sweep_config(setup, results), progress=False, log=quiet)
    return results, records, counts


def sweep_config(setup, results_dir, **overrides) -> ValidationConfig:  # noqa: F811
    return config(setup, results_dir, sweep=True, owt_path=str(setup["owt"]), **{**GRID, **overrides})


def relative(path: str, root: Path) -> str:
    return str(Path(path).relative_to(root))


def test_one_model_load_and_one_probe_fit_per_fold(counted_sweep):
    _, records, counts = counted_sweep
    assert [(r["config"]["num_heads"], r["config"]["alpha"]) for r in records] == [
        ([k], [a]) for k in GRID["num_heads"] for a in GRID["alpha"]]
    assert counts["loads"] == 1 and counts["probe fits"] == 2
    # Per fold one call with every cell (the unshifted ones, K = 0 or α = 0, are then computed once).
    assert counts["evaluations"] == [6, 6]
    assert all(record["complete"] for record in records)


def test_every_cell_is_the_run_of_that_setting_alone(setup, counted_sweep, tmp_path):  # noqa: F811
    swept_dir, records, _ = counted_sweep
    for record in records:
        k, alpha = record["config"]["num_heads"][0], record["config"]["alpha"][0]
        single = run_validation(config(setup, tmp_path, owt_path=str(setup["owt"]), **{**GRID, "num_heads": k,
                                                                                          "alpha": alpha}),
                                progress=False, log=quiet)
        assert (record["identity"], record["name"], record["resolved"], record["notes"]) == (
            single["identity"], single["name"], single["resolved"], single["notes"])
        assert relative(record["json_path"], swept_dir) == relative(single["json_path"], tmp_path)
        as_run = {key: value for key, value in single["config"].items() if key not in ("sweep", "results_dir")}
        assert {key: value for key, value in record["config"].items() if key not in ("sweep", "results_dir")} == as_run
        assert record["config"]["sweep"] and not single["config"]["sweep"]
        assert record["provenance"]["features_sha256"] == single["provenance"]["features_sha256"]
        assert bool(single["provenance"]["features_sha256"]) == (k > 0)  # a run of no heads reads no features
        assert same_means(record["final"], single["final"])
        for swept, alone in zip(record["folds"], single["folds"]):
            for key in ("fold", "train", "val", "test", "K", "alpha", "heads", "probe_report", "selection"):
                assert swept[key] == alone[key], key
            assert same_means(swept["results"], alone["results"])
            files, alone_files = swept["files"], alone["files"]
            assert {key: relative(value, swept_dir) if isinstance(value, str) else
                    {part: relative(path, swept_dir) for part, path in value.items()}
                    for key, value in files.items() if key != "sha256" and value} == \
                   {key: relative(value, tmp_path) if isinstance(value, str) else
                    {part: relative(path, tmp_path) for part, path in value.items()}
                    for key, value in alone_files.items() if key != "sha256" and value}
            digests = {relative(path, swept_dir): sha for path, sha in files["sha256"].items()}
            alone_digests = {relative(path, tmp_path): sha for path, sha in alone_files["sha256"].items()}
            assert digests.keys() == alone_digests.keys()
            # Splits and probe reports hold no float noise of the evaluation: the same bytes.
            for path in [*files["splits"].values(), *(files[key] for key in ("probe_report_heads",
                                                                             "probe_report_layers") if files.get(key))]:
                assert digests[relative(path, swept_dir)] == alone_digests[relative(path, swept_dir)]
            answers = [pd.read_csv(f["answers"]) for f in (files, alone_files)]
            assert answers[0]["Question"].tolist() == answers[1]["Question"].tolist()
            for column in SCORES:
                np.testing.assert_allclose(answers[0][f"{MODEL} {column}"], answers[1][f"{MODEL} {column}"],
                                           rtol=FLOAT32_SUMS["rel"], atol=FLOAT32_SUMS["abs"])
            assert (files["head_shifts"] is None) == (alone_files["head_shifts"] is None) == (k == 0)
            if k:
                shifts = [HeadShifts.load(f["head_shifts"]) for f in (files, alone_files)]
                for name in ("layers", "heads", "directions", "sigmas", "probe_accuracies"):
                    np.testing.assert_array_equal(getattr(shifts[0], name), getattr(shifts[1], name))  # bit for bit
                assert shifts[0].alpha == shifts[1].alpha == alpha
                assert shifts[0].provenance.as_dict() == shifts[1].provenance.as_dict()
                assert shifts[0].provenance.K == k


def test_a_sweep_of_one_setting_is_the_single_run():
    one = ValidationConfig(num_heads=(4,), alpha=(5.0,), sweep=True)
    assert one.cells == [one] and not one.selects
    assert identity(one) == identity(dataclasses.replace(one, sweep=False))
    grid = ValidationConfig(num_heads=(4, 8, 4), alpha=(5.0,), sweep=True)
    assert [(cell.num_heads, cell.alpha) for cell in grid.cells] == [((4,), (5.0,)), ((8,), (5.0,))]
    assert not grid.selects and ValidationConfig(num_heads=(4, 8), alpha=(5.0,)).selects


def test_run_validation_of_several_cells_points_to_run_sweep(setup, tmp_path):  # noqa: F811
    with pytest.raises(UsageError, match="makes one run each: call run_sweep"):
        run_validation(sweep_config(setup, tmp_path), progress=False, log=quiet)
    assert not tmp_path.joinpath("results_dump").exists()


def test_a_killed_sweep_resumes_with_the_rest(setup, tmp_path, monkeypatch):  # noqa: F811
    """Killed right after the first cell's record of the second fold: that cell is then complete but for its totals,
    the others hold one fold. Run again, the first cell's folds and the others' first fold are kept (read back, their
    digests checked), only the others' second fold is evaluated; a third run evaluates nothing."""
    import iti.fitting
    from iti.evaluation import Evaluator

    cfg = sweep_config(setup, tmp_path, num_heads=(2, 4), alpha=(5.0,), metrics=("mc",))
    real_write, writes = Run.write, []

    def killed_after_the_first_cells_second_fold(self, record):
        real_write(self, record)
        writes.append(self.name)
        if len(writes) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Run, "write", killed_after_the_first_cells_second_fold)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(cfg, progress=False, log=quiet)
    monkeypatch.setattr(Run, "write", real_write)
    summaries = sorted((tmp_path / "results_dump" / "summary_dump").glob("*.json"))
    killed = {path.name: json.loads(path.read_text()) for path in summaries}
    assert sorted(len(record["folds"]) for record in killed.values()) == [1, 2]
    assert not any(record["complete"] for record in killed.values())

    evaluated, fits, logged = [], [], []
    real_evaluate, real_fit = Evaluator.evaluate_groups, iti.fitting.train_probes
    monkeypatch.setattr(Evaluator, "evaluate_groups",
                        lambda self, groups, *a, **k: evaluated.extend([s.k for s in settings] for settings, _ in groups)
                        or real_evaluate(self, groups, *a, **k))
    monkeypatch.setattr(iti.fitting, "train_probes", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    resumed = run_sweep(cfg, progress=False, log=logged.append)
    assert evaluated == [[4]] and len(fits) == 1  # the second fold of the K = 4 cell alone
    assert all(record["complete"] for record in resumed)
    for record in resumed:
        before = killed[Path(record["json_path"]).name]
        assert record["folds"][:len(before["folds"])] == before["folds"]
        assert record["seconds"] > before["seconds"] or len(before["folds"]) == 2
    assert sum("kept from" in line for line in logged) == 3

    evaluated.clear()
    again = run_sweep(cfg, progress=False, log=quiet)
    assert evaluated == [] and [r["seconds"] for r in again] == [r["seconds"] for r in resumed]
    assert [r["final"] for r in again] == [r["final"] for r in resumed]


def test_the_judges_load_once_per_sweep(setup, tmp_path, monkeypatch):  # noqa: F811
    """With judges loaded one at a time (the default), every fold's answers of every cell are judged in one call
    per judge: one load each for the whole sweep. Kept loaded instead, each fold is written as it is evaluated; both
    ways give every answer the same judge scores."""
    import iti.judges

    judge = str(setup["judge_dir"])
    grid = dict(GRID, num_heads=(0, 2, 4), alpha=(5.0,), metrics=("mc", "judge", "info"), judge_model=judge,
                info_model=judge, max_new_tokens=4)
    loads, real_load = [], iti.judges.load_model
    monkeypatch.setattr(iti.judges, "load_model", lambda source, *a, **k: loads.append(source) or
                        real_load(source, *a, **k))
    once = run_sweep(sweep_config(setup, tmp_path / "sequential", **grid), progress=False, log=quiet)
    assert loads == [judge, judge]  # the truth judge, then the info judge
    kept = run_sweep(sweep_config(setup, tmp_path / "kept", sequential_loading=False, **grid), progress=False,
                     log=quiet)
    assert len(loads) == 4
    columns = [f"{MODEL} {name}" for name in ("GPT-judge", "GPT-info")]
    for sequential, loaded in zip(once, kept):
        assert len(sequential["folds"]) == 2
        for fold, other in zip(sequential["folds"], loaded["folds"]):
            answers, other_answers = pd.read_csv(fold["files"]["answers"]), pd.read_csv(other["files"]["answers"])
            assert answers[MODEL].tolist() == other_answers[MODEL].tolist()
            # The same judge on the same (question, answer) rows, batched with other rows: a probability from float32
            # sums over the judge's prompt (under 128 tokens).
            np.testing.assert_allclose(answers[columns], other_answers[columns], rtol=0, atol=sum_rtol(128))


def test_collect_sweep_reads_the_cells(setup, counted_sweep, tmp_path):  # noqa: F811
    swept_dir, records, _ = counted_sweep
    result = subprocess.run([sys.executable, str(REPO_ROOT / "validation" / "sweeping" / "collect_sweep.py"),
                             "--model_name", MODEL, "--model_path", str(setup["model_dir"]), "--use_center_of_mass",
                             "--limit", "6", "--results_dir", str(swept_dir)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(only_file(swept_dir / "results_dump" / "sweep_dump", f"{MODEL}_center_of_mass_limit_6_"
                                                                           "????????.csv"))
    assert sorted(zip(table["K"], table["alpha"])) == sorted((r["config"]["num_heads"][0], r["config"]["alpha"][0])
                                                             for r in records)
    by_setting = {(row["K"], row["alpha"]): row for _, row in table.iterrows()}
    for record in records:
        row = by_setting[(record["config"]["num_heads"][0], record["config"]["alpha"][0])]
        assert row["MC2"] == pytest.approx(record["final"]["MC2"])
        assert pd.isna(row["ΔMC2"]) != record["resolved"]["intervenes"]  # each shifted cell pairs with the baseline


def test_the_sequential_script_runs_one_process_per_seed(setup, tmp_path):  # noqa: F811
    """sweep_alpha_k.sh: the baseline alone and the shifted cells in one --sweep process; one log each, every cell's
    summary line, and the table of them all."""
    env = {**os.environ, "ALPHAS": "0 5", "KS": "2 4", "LOG_DIR": str(tmp_path / "logs"), "OMP_NUM_THREADS": "1"}
    assert [task.argv for task in sweeps.one_process_sweeps([MODEL], env)] == [
        ("--model_name", MODEL, "--alpha", "0", "--num_heads", "0", "--sweep"),
        ("--model_name", MODEL, "--alpha", "5", "--num_heads", "2", "4", "--sweep")]
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "validation" / "sweeping" / "sweep_alpha_k.sh"), MODEL, "--model_path",
         str(setup["model_dir"]), "--features_dir", str(setup["features"]), "--results_dir", str(tmp_path / "out"),
         "--tqa_path", str(setup["tqa_path"]), "--limit", "4", "--use_center_of_mass", "--metrics", "mc", "--device",
         "cpu"], cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == [f"{MODEL}_a0_k0.log", f"{MODEL}_a5_k2-4.log"]
    lines = [line for line in result.stdout.splitlines() if line.startswith("alpha: ")]
    assert [line.split(", True")[0] for line in lines] == ["alpha: 0.0, heads: 0", "alpha: 5.0, heads: 2",
                                                           "alpha: 5.0, heads: 4"]
    summaries = list((tmp_path / "out" / "results_dump" / "summary_dump").glob("*.json"))
    assert len(summaries) == 3 and all(json.loads(p.read_text())["complete"] for p in summaries)
    assert only_file(tmp_path / "out" / "results_dump" / "sweep_dump", f"{MODEL}_center_of_mass_limit_4_????????.csv")


def test_sweeps_command_prints_the_processes():
    env = {"ALPHAS": "0 5 10", "KS": "4 8", "SEEDS": "1"}
    out = subprocess.run([sys.executable, "-m", "iti.sweep", "sweeps", "m"], cwd=REPO_ROOT, capture_output=True,
                         text=True, env={**os.environ, **env}, check=True).stdout
    assert out.splitlines() == ["m_a0_k0_seed_1 --model_name m --alpha 0 --num_heads 0 --seed 1 --sweep",
                                "m_a5-10_k4-8_seed_1 --model_name m --alpha 5 10 --num_heads 4 8 --seed 1 --sweep"]
    # The processes hold exactly the grid's cells, either way of running α = 0.
    for once in ("0", "1"):
        cells = {(a, k) for _, _, a, k in sweeps.grid_cells(["m"], {**env, "BASELINE_ONCE": once}, True)}
        swept = set()
        for task in sweeps.one_process_sweeps(["m"], {**env, "BASELINE_ONCE": once}):
            argv = list(task.argv)
            alphas = argv[argv.index("--alpha") + 1:argv.index("--num_heads")]
            ks = argv[argv.index("--num_heads") + 1:argv.index("--seed")]
            swept |= {(a, k) for a in alphas for k in ks}
        assert swept == cells


def test_a_sweep_whose_cells_name_different_bakes_is_refused(tmp_path, monkeypatch):
    """A `local_` model is the bake of each run's seed, K and α: a sweep over two K of it would be two models."""
    import iti.models

    base = "llama2_chat_7B"
    monkeypatch.setattr(iti.models, "EDITED_MODELS_DIR", tmp_path)
    for k in (4, 8):
        (tmp_path / f"{readable_name({'model': base, 'seed': 42, 'num_heads': k, 'alpha': 5.0})}_0123abcd").mkdir()
    swept = ValidationConfig(model_name=base, model_prefix="local_", num_heads=(4, 8), alpha=(5.0,), sweep=True)
    with pytest.raises(UsageError, match="--sweep evaluates one loaded model, but its settings name 2 "):
        one_model_source(swept.cells)
    assert one_model_source(dataclasses.replace(swept, num_heads=(8,)).cells) == str(
        tmp_path / f"{base}_seed_42_top_8_heads_alpha_5_0123abcd")
    # The same model given by folder: one model for every cell.
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    given = dataclasses.replace(swept, model_path=str(tmp_path / "model"))
    assert one_model_source(given.cells) == str(tmp_path / "model")
