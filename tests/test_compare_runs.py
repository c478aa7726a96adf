"""validation/compare_runs.py: the baseline/ITI table of finished runs, and unfinished or foreign files refused."""
import dataclasses
import importlib.util
import json
import subprocess
import sys

import pytest

from iti.config import ValidationConfig
from iti.files import plain
from tests.conftest import REPO_ROOT, write_finished_run

SCRIPT = REPO_ROOT / "validation" / "compare_runs.py"


def load_script():
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(intervenes: bool, mc2: float, ce: float, kl: float, num_heads=(8,), alpha=(5.0,)) -> dict:
    """A summary as validate_2fold writes it: the config is the run's ValidationConfig through JSON."""
    cfg = ValidationConfig(num_heads=num_heads if intervenes else (0,), alpha=alpha, use_center_of_mass=True)
    final = {"MC1": mc2 / 2, "MC2": mc2, "MC3": mc2 / 3, "CE": ce, "KL": kl, "True": None, "Info": None,
             "True*Info": None}
    return json.loads(json.dumps({"config": plain(dataclasses.asdict(cfg)), "complete": True, "final": final,
                                  "folds": [], "resolved": {"intervenes": cfg.intervenes, "method": cfg.method}}))


def test_rows_columns_and_rounding(tmp_path):
    runs = [record(False, 0.412345678, 2.718281828, 0.0), record(True, 0.456789012, 2.9, 0.0123456789)]
    paths = []
    for i, run in enumerate(runs):
        paths.append(tmp_path / f"run{i}.json")
        paths[-1].write_text(json.dumps(run))
    result = subprocess.run([sys.executable, str(SCRIPT), *map(str, paths)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    header, baseline, iti, why = result.stdout.strip().splitlines()
    assert why == ("ITI (K=8, alpha=5, center_of_mass) − baseline: no paired difference, the records list no folds, "
                   "hence no answers per question")
    assert header.split() == ["run", "MC1", "MC2", "MC3", "CE", "KL"]
    assert baseline.split() == ["baseline"] + [f"{runs[0]['final'][m]:.4f}" for m in ("MC1", "MC2", "MC3", "CE", "KL")]
    assert iti.startswith("ITI (K=8, alpha=5, center_of_mass)")
    assert iti.split()[-5:] == [f"{runs[1]['final'][m]:.4f}" for m in ("MC1", "MC2", "MC3", "CE", "KL")]


def test_label_of_a_run_that_chose_per_fold_and_of_an_old_summary():
    from iti.records import read_record
    from iti.runs import RunRecord

    module = load_script()
    label = lambda values: module.run_label(read_record(RunRecord, values, "test record", "write it again"))
    assert label(record(True, 0.5, 2.0, 0.1, num_heads=(8, 16), alpha=(0.0, 5.0, 15.0))) == \
        "ITI (K=8/16, alpha=0/5/15, center_of_mass)"
    old = record(True, 0.5, 2.0, 0.1)
    old["config"].update(num_heads=48, alpha=15.0)
    assert label(old) == "ITI (K=48, alpha=15, center_of_mass)"


def test_unfinished_run_refused(tmp_path):
    module = load_script()
    unfinished = dict(record(True, 0.5, 2.0, 0.1), complete=False)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(unfinished))
    from iti.errors import UsageError

    with pytest.raises(UsageError, match="unfinished run"):
        module.read_finished_run(path)
    path.write_text("{not json")
    with pytest.raises(UsageError, match="run.json is not valid JSON"):
        module.read_finished_run(path)


@pytest.mark.parametrize("content, why", [
    ("[1, 2]", "the record is a JSON list, not an object"),
    ('{"name": "left-pad", "version": "1.3.0"}', "config is missing"),
    ('{"config": {}, "resolved": {"method": "probe", "intervenes": true}, "folds": [], "complete": true, '
     '"final": {"MC1": "high"}}', "final.MC1 is a JSON string, not a number"),
    ('{"config": {}, "resolved": {"method": "probe", "intervenes": true}, "folds": [], "complete": true}',
     "complete, but final is missing"),
    ('{"config": {}, "resolved": {"method": "probe", "intervenes": true}, "complete": false, '
     '"folds": [{"fold": 0, "test": [1], "results": {}, "files": {}}]}', "folds[0].files.answers is missing"),
])
def test_foreign_json_is_named_in_one_line(tmp_path, content, why):
    path = tmp_path / "other.json"
    path.write_text(content)
    result = subprocess.run([sys.executable, str(SCRIPT), str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {path} is not a validate_2fold summary JSON: {why}; give the files "
                                          "validate_2fold writes to results_dump/summary_dump/"]


def test_missing_metrics_show_a_dash_and_the_paired_difference_follows(tmp_path):
    """The quickstart's last lines: a metric one run lacks is "—", never "nan"; the ITI run's MC2 difference from
    the baseline on the same questions with its paired bootstrap interval (iti.statistics, computed here
    directly) and one sentence on whether it excludes 0."""
    import numpy as np
    import pandas as pd

    from iti.statistics import paired_differences

    rng = np.random.default_rng(0)
    mc2 = {"base": rng.uniform(0.2, 0.8, 40)}
    mc2["iti"] = np.clip(mc2["base"] + rng.normal(0.003, 0.02, 40), 0, 1)
    runs = {"base": record(False, float(mc2["base"].mean()), 3.0, 0.0),
            "iti": record(True, float(mc2["iti"].mean()), 3.1, 0.02)}
    runs["iti"]["final"]["KL"] = None
    paths = []
    for name, run in runs.items():
        answers = tmp_path / f"{name}_answers.csv"
        pd.DataFrame({"Question": [f"Q{i}?" for i in range(40)], "Category": "c",
                      f"{run['config']['model_name']} MC2": mc2[name]}).to_csv(answers, index=False)
        run["folds"] = [{"fold": 0, "test": list(range(40)), "results": {"MC2": run["final"]["MC2"]},
                         "files": {"answers": str(answers)}}]
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(run))
    result = subprocess.run([sys.executable, str(SCRIPT), *map(str, paths)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert "nan" not in result.stdout and lines[2].split()[-1] == "—"
    interval = paired_differences({"MC2": mc2["iti"]}, {"MC2": mc2["base"]})["MC2"]
    expected = f"{interval.value:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}]"
    assert lines[3].startswith(f"ITI (K=8, alpha=5, center_of_mass) − baseline on MC2: {expected}")
    verdict = "no significant difference" if interval.low <= 0 <= interval.high else "the interval excludes 0"
    assert f"{verdict}" in lines[3] and "on 40 questions" in lines[3]


def test_a_missing_answer_file_is_said_where_the_paired_line_would_be(tmp_path):
    paths = [write_finished_run(tmp_path, "base", False, [0.4, 0.5, 0.6]),
             write_finished_run(tmp_path, "iti", True, [0.5, 0.6, 0.7])]
    (tmp_path / "iti_answers.csv").unlink()
    result = subprocess.run([sys.executable, str(SCRIPT), *map(str, paths)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        f"ITI (K=8, alpha=5, center_of_mass) − baseline: no paired difference, the answer file "
        f"{tmp_path / 'iti_answers.csv'} is missing; run validate_2fold with that run's settings again to remake it")
