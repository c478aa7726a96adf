"""Sweeps: the grid, which runs are done, the SLURM arrays (a stub sbatch, then a real local SLURM),
and collect_sweep (the table holds each completed run's final means, the plot skips empty metrics)."""
import hashlib
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iti import sweep as sweeps
from iti.errors import UsageError
from iti.identity import readable_name
from iti.runs import earlier_run_path
from iti.validate import ValidationConfig, run_validation
from tests.conftest import REPO_ROOT, make_tiny_model, only_file

SCRIPT = REPO_ROOT / "validation" / "sweeping" / "collect_sweep.py"
SLURM_SWEEP = REPO_ROOT / "validation" / "sweeping" / "sweep_slurm.sh"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tokenizer, tqa_path):
    """run(results_dir, alpha, K, seed, limit): a validate_2fold run of a tiny model on a few questions."""
    from iti.activations import save_features
    from iti.data import build_prompt_set

    root = tmp_path_factory.mktemp("sweep")
    model = make_tiny_model("gqa", len(tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        save_features(model, tokenizer, build_prompt_set(dataset, tqa_path, limit=6), root / "features", "tq",
                      progress=False, limit=6)

    def run(results_dir, alpha, k, seed=42, limit=4):
        cfg = ValidationConfig(model_name="tq", model_path=str(root / "model"), features_dir=str(root / "features"),
                               results_dir=str(results_dir), tqa_path=str(tqa_path), limit=limit, num_heads=k,
                               alpha=alpha, use_center_of_mass=True, metrics=("mc",), device="cpu", seed=seed)
        return run_validation(cfg, progress=False, log=lambda _: None)

    return root, run


@pytest.fixture(scope="module")
def sweep(tiny_run):
    root, run = tiny_run
    records = [run(root / "results", alpha, k) for alpha, k in ((0.0, 0), (4.0, 2), (8.0, 2))]
    # An interrupted run (complete: false) must not enter the table.
    partial = json.loads(open(records[-1]["json_path"]).read())
    partial.update(complete=False, config={**partial["config"], "alpha": 12.0})
    (root / "results" / "results_dump" / "summary_dump" / "partial.json").write_text(json.dumps(partial))
    return root, records


@pytest.fixture(scope="module")
def seeds(tiny_run):
    """Seeds 1-3 of one ITI setting and of its baseline, on 6 questions (the tiny model's MC2 moves on one)."""
    root, run = tiny_run
    results = root / "seeds"
    return results, {(alpha, k): [run(results, alpha, k, seed, limit=6) for seed in (1, 2, 3)]
                     for alpha, k in ((0.0, 0), (20.0, 3))}


def test_table_and_plot(sweep, monkeypatch, capsys):
    root, records = sweep
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--model_name", "tq", "--model_path", "hub/tq",
                                      "--use_center_of_mass", "--limit", "4", "--results_dir", str(root / "results"),
                                      "--metrics", "mc"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out_dir = root / "results" / "results_dump" / "sweep_dump"
    table = pd.read_csv(only_file(out_dir, "tq_center_of_mass_limit_4_????????.csv"))
    assert table[["K", "alpha"]].astype(str).values.tolist() == [["0", "0"], ["2", "4"], ["2", "8"]]
    assert table["seeds"].astype(str).tolist() == ["42"] * 3 and table["MC2 std"].isna().all()
    for (_, row), record in zip(table.iterrows(), records):
        assert row["MC2"] == pytest.approx(record["final"]["MC2"])
        assert row["MC1"] == pytest.approx(record["final"]["MC1"])
    assert table["CE"].isna().all() and table["True*Info"].isna().all()
    assert (only_file(out_dir, "tq_center_of_mass_limit_4_????????.png")).stat().st_size > 0
    markdown = (only_file(out_dir, "tq_center_of_mass_limit_4_????????.md")).read_text()
    assert markdown.count("\n") == 2 + len(table)
    assert "(MC2)" in capsys.readouterr().out  # only MC2 has values to plot


def run_collect(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args, *(["--model_path", "hub/tq"] if "tq" in args else [])])
    runpy.run_path(str(SCRIPT), run_name="__main__")


def test_without_limit_the_one_subset_is_collected(sweep, tmp_path, monkeypatch, capsys):
    """No full runs: collect_sweep without --limit takes the runs of the one --limit they share, and
    asks for a choice when there are several."""
    root, records = sweep
    results = tmp_path / "results"
    shutil.copytree(root / "results" / "results_dump" / "summary_dump", results / "results_dump" / "summary_dump")
    run_collect(monkeypatch, "--model_name", "tq", "--use_center_of_mass", "--results_dir", str(results))
    assert "no full runs of tq: the runs made with --limit 4" in capsys.readouterr().out
    table = pd.read_csv(only_file(results / "results_dump" / "sweep_dump", "tq_center_of_mass_limit_4_????????.csv"))
    assert sorted(table["json"]) == sorted(r["json_path"].replace(str(root / "results"), str(results)) for r in records)
    other = json.loads(open(records[0]["json_path"]).read())
    other["config"]["limit"] = 6
    (results / "results_dump" / "summary_dump" / "limit_6.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit) as stop:
        run_collect(monkeypatch, "--model_name", "tq", "--use_center_of_mass", "--results_dir", str(results))
    assert stop.value.code == 2 and "runs with --limit 4, 6: pass one of those" in capsys.readouterr().err


def test_runs_on_another_dataset_stay_out_of_the_table(sweep, tmp_path, monkeypatch, capsys):
    """A full run on a custom dataset file beside a --limit TruthfulQA sweep: the TruthfulQA table keeps the
    sweep's runs, and --dataset_path collects the custom run alone, into files named apart."""
    root, records = sweep
    results = tmp_path / "results"
    summaries = results / "results_dump" / "summary_dump"
    shutil.copytree(root / "results" / "results_dump" / "summary_dump", summaries)
    data = tmp_path / "my_set.jsonl"
    data.write_text("".join(json.dumps({"question": f"Q{i}?", "correct_answers": ["a"], "incorrect_answers": ["b"]})
                            + "\n" for i in range(4)))
    custom = json.loads(open(records[1]["json_path"]).read())
    custom["config"].update(limit=None, dataset_name="my_set", dataset_path=str(data))
    (summaries / "custom.json").write_text(json.dumps(custom))
    run_collect(monkeypatch, "--model_name", "tq", "--use_center_of_mass", "--results_dir", str(results))
    table = pd.read_csv(only_file(results / "results_dump" / "sweep_dump", "tq_center_of_mass_limit_4_????????.csv"))
    assert sorted(table["json"]) == sorted(r["json_path"].replace(str(root / "results"), str(results)) for r in records)
    run_collect(monkeypatch, "--model_name", "tq", "--use_center_of_mass", "--results_dir", str(results),
                "--dataset_path", str(data), "--dataset_name", "my_set")
    table = pd.read_csv(only_file(results / "results_dump" / "sweep_dump", "tq_center_of_mass_my_set_????????.csv"))
    assert table["json"].tolist() == [str(summaries / "custom.json")]


def test_a_corrupt_summary_is_named_and_the_table_made_from_the_others(sweep, tmp_path, monkeypatch, capsys):
    root, records = sweep
    results = tmp_path / "results"
    summaries = results / "results_dump" / "summary_dump"
    shutil.copytree(root / "results" / "results_dump" / "summary_dump", summaries)
    whole = open(records[1]["json_path"]).read()
    bad = {"truncated.json": whole[:len(whole) // 2], "array.json": "[1, 2]",
           "package.json": '{"name": "left-pad", "version": "1.3.0"}'}
    for name, text in bad.items():
        (summaries / name).write_text(text)
    capsys.readouterr()
    run_collect(monkeypatch, "--model_name", "tq", "--use_center_of_mass", "--limit", "4", "--results_dir",
                str(results))
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == len(bad)
    for note, name in zip(notes, sorted(bad)):
        assert note.startswith("note: left out of the table: ") and f"{summaries / name} is not " in note
    assert "truncated.json is not valid JSON (line" in notes[2] and ": the record is a JSON list, not an object" in notes[0]
    table = pd.read_csv(only_file(results / "results_dump" / "sweep_dump", "tq_center_of_mass_limit_4_????????.csv"))
    assert sorted(table["json"]) == sorted(r["json_path"].replace(str(root / "results"), str(results)) for r in records)


def test_no_runs_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--model_name", "nothing", "--model_path", "hub/nothing",
                                      "--results_dir", str(tmp_path)])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert stop.value.code == 2 and "no completed runs of nothing" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the grid and what is done

def names(tasks) -> list[str]:
    return [task.name for task in tasks]


def test_grid_is_the_product_or_one_baseline():
    env = {"ALPHAS": "0 5", "KS": "4 8"}
    assert names(sweeps.grid(["m"], env, baseline_once=False)) == ["m_a0_k4", "m_a0_k8", "m_a5_k4", "m_a5_k8"]
    assert names(sweeps.grid(["m"], env, baseline_once=True)) == ["m_a0_k0", "m_a5_k4", "m_a5_k8"]
    seeded = sweeps.grid(["m", "n"], {"ALPHAS": "0.0 0 2.5", "KS": "4", "SEEDS": "1 2", "BASELINE_ONCE": "1"}, False)
    assert names(seeded) == ["m_a0.0_k0_seed_1", "m_a2.5_k4_seed_1", "m_a0.0_k0_seed_2", "m_a2.5_k4_seed_2",
                             "n_a0.0_k0_seed_1", "n_a2.5_k4_seed_1", "n_a0.0_k0_seed_2", "n_a2.5_k4_seed_2"]
    assert seeded[1].argv == ("--model_name", "m", "--alpha", "2.5", "--num_heads", "4", "--seed", "1")


@pytest.mark.parametrize("env, message", [({"ALPHAS": ""}, "the grid has no cells"),
                                          ({"KS": "4 x"}, "'x' is not an integer"),
                                          ({"BASELINE_ONCE": "yes"}, "BASELINE_ONCE")])
def test_grid_bad_input(env, message):
    with pytest.raises(UsageError, match=message):
        sweeps.grid(["m"], env, baseline_once=False)


def test_sequential_scripts_read_the_same_grid():
    out = subprocess.run([sys.executable, "-m", "iti.sweep", "cells", "m"], cwd=REPO_ROOT, capture_output=True,
                         text=True, env={**os.environ, "ALPHAS": "0 5", "KS": "4 8"}, check=True).stdout
    assert out.splitlines() == [f"{t.name} {' '.join(t.argv)}" for t in sweeps.grid(["m"], {"ALPHAS": "0 5", "KS": "4 8"}, True)]


def sweep_flags(root, tqa_path, features_dir=None) -> list[str]:
    """The validate_2fold flags that made the `sweep` fixture's runs (its model is named tq)."""
    return ["--model_path", str(root / "model"), "--features_dir", str(features_dir or root / "features"),
            "--results_dir", str(root / "results"), "--tqa_path", str(tqa_path), "--limit", "4",
            "--use_center_of_mass", "--metrics", "mc", "--device", "cpu"]


def test_pending_runs_are_those_without_a_complete_summary(sweep, tqa_path, capsys):
    root, records = sweep
    flags = sweep_flags(root, tqa_path)
    # α = 12 has a summary cut short (complete: false); α = 16 none at all.
    cut = ValidationConfig(model_name="tq", alpha=12.0, num_heads=2, results_dir=str(root / "results"), limit=4,
                           use_center_of_mass=True)
    folder = root / "results" / "results_dump" / "summary_dump"
    (folder / f"{readable_name(cut)}_0badc0de_com.json").write_text(json.dumps({"complete": False}))
    env = {"ALPHAS": "0 4 8 12 16", "KS": "2", "BASELINE_ONCE": "1"}
    cells, missing, configs = sweeps.pending_runs(["tq"], flags, env, baseline_once=True)
    assert names(cells) == ["tq_a0_k0", "tq_a4_k2", "tq_a8_k2", "tq_a12_k2", "tq_a16_k2"]
    assert names(missing) == ["tq_a12_k2", "tq_a16_k2"]
    assert [str(earlier_run_path(configs[cell])) for cell in cells[:3]] == [r["json_path"] for r in records]
    assert sweeps.main(["status", "tq", *flags], env) == 1
    assert capsys.readouterr().out.splitlines() == ["3 of 5 runs complete", "missing: tq_a12_k2", "missing: tq_a16_k2"]


def test_array_task_runs_its_own_cell(tmp_path):
    """Each task of the batch script runs the script with its cell's flags, then the common ones, quoting intact."""
    probe = tmp_path / "probe.py"
    probe.write_text("import json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    tasks = [sweeps.Task("a", ("--alpha", "5")), sweeps.Task("b c", ("--model_path", "it's \"here\" $HOME; *"))]
    flags = ["--metrics", "mc", "--owt_path", "a b.txt", "--empty", ""]
    submission = sweeps.array_submission("job", probe, tasks, flags, {"MAX_PARALLEL": "3", "MEM": "8G"}, tmp_path)
    for i, task in enumerate(tasks):
        run = subprocess.run(["bash", "-c", submission.script], env={**os.environ, "SLURM_ARRAY_TASK_ID": str(i)},
                             capture_output=True, text=True, check=True)
        assert json.loads(run.stdout.splitlines()[-1]) == [*task.argv, *flags]
    outside = subprocess.run(["bash", "-c", submission.script], env={**os.environ, "SLURM_ARRAY_TASK_ID": "2"},
                             capture_output=True, text=True)
    assert outside.returncode == 1
    assert {"--array=0-1%3", "--mem=8G", f"--output={tmp_path}/%x_%A_%a.log"} <= set(submission.options)


# ----------------------------------------------------------------------------- submission, with a stub sbatch

STUB_SBATCH = """#!{python}
# Records each call (options, script) and answers as sbatch does: a job id, or a refused partition.
import json, os, sys
log = os.environ["SBATCH_STUB_LOG"]
calls = open(log).read().splitlines() if os.path.exists(log) else []
with open(log, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "script": sys.stdin.read()}}) + "\\n")
if "--partition=nope" in sys.argv:
    print("sbatch: error: invalid partition specified: nope", file=sys.stderr)
    sys.exit(1)
print(100 + len(calls))
"""


@pytest.fixture
def stub_sbatch(tmp_path, monkeypatch):
    """A sbatch on PATH that records its calls; returns a function that reads them."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(STUB_SBATCH.format(python=sys.executable))
    (bin_dir / "sbatch").chmod(0o755)
    log = tmp_path / "sbatch_calls.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SBATCH_STUB_LOG", str(log))
    return lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_submits_extraction_then_array_then_collect(sweep, tqa_path, stub_sbatch, tmp_path, capsys):
    root, _ = sweep
    flags = sweep_flags(root, tqa_path, features_dir=tmp_path / "no_features")
    env = {"ALPHAS": "4 8 20", "KS": "2", "PARTITION": "cpu", "LOG_DIR": str(tmp_path / "logs")}
    sweeps.main(["slurm", "tq", *flags], env)
    calls = stub_sbatch()
    checks, submits = calls[:3], calls[3:]
    assert [c["argv"][-1] for c in checks] == ["--test-only"] * 3 and len(submits) == 3
    assert [c["script"] for c in checks] == [c["script"] for c in submits]
    extraction, validation, collect = (c["argv"] for c in submits)
    # Only α = 20 lacks a summary; its probes need both feature sets, which the empty features folder lacks.
    assert "--array=0-1" in extraction and "--array=0-0" in validation and "--partition=cpu" in collect
    assert not any(a.startswith("--dependency") for a in extraction)
    assert "--dependency=afterok:103" in validation and "--dependency=afterany:104" in collect
    assert "tq_tqa_mc2" in submits[0]["script"] and "tq_tqa_gen_end_q" in submits[0]["script"]
    assert "tq_a20_k2" in submits[1]["script"] and "tq_a4_k2" not in submits[1]["script"]
    assert "missing runs by name" in capsys.readouterr().out


def test_waits_for_given_jobs_and_resubmits_nothing_done(sweep, tqa_path, stub_sbatch, tmp_path, capsys):
    root, _ = sweep
    flags = sweep_flags(root, tqa_path, features_dir=tmp_path / "no_features")
    sweeps.main(["slurm", "tq", *flags], {"ALPHAS": "4 8", "KS": "2", "LOG_DIR": str(tmp_path / "logs")})
    assert stub_sbatch() == [] and "nothing to submit" in capsys.readouterr().out
    sweeps.main(["slurm", "tq", *flags], {"ALPHAS": "20", "KS": "2", "AFTER": "7:8", "LOG_DIR": str(tmp_path / "logs")})
    validation, collect = (c["argv"] for c in stub_sbatch()[2:])  # AFTER given: no extraction of its own
    assert "--dependency=afterok:7:8" in validation and "--dependency=afterany:102" in collect


def test_extraction_array_for_missing_features_only(tqa_path, stub_sbatch, tmp_path, capsys):
    from iti.features import FeatureSet, feature_files

    features = tmp_path / "features"
    features.mkdir()
    for path in feature_files(FeatureSet(features, "tq", "tqa_mc2", 4)):
        path.touch()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # a model folder: the flags are checked, not loaded
    flags = ["--features_dir", str(features), "--limit", "4", "--tqa_path", str(tqa_path), "--device", "cpu",
             "--model_path", str(tmp_path / "model")]
    sweeps.main(["slurm_activations", "tq", *flags], {"MAX_PARALLEL": "1", "LOG_DIR": str(tmp_path / "logs")})
    check, submit = stub_sbatch()
    assert check["argv"][-1] == "--test-only" and "--array=0-0%1" in submit["argv"]
    assert "tq_tqa_gen_end_q" in submit["script"] and "tq_tqa_mc2" not in submit["script"]
    assert "AFTER=101 bash validation/sweeping/sweep_slurm.sh" in capsys.readouterr().out


@pytest.mark.parametrize("args, env, message", [
    (["--bogus", "1"], {}, "validate_2fold.py refuses the sweep's flags: unrecognized arguments: --bogus 1"),
    ([], {"ALPHAS": ""}, "the grid has no cells"),
    ([], {"PARTITION": "nope"}, "sbatch refused the job: sbatch: error: invalid partition specified: nope"),
    ([], {"AFTER": "12x"}, "AFTER='12x'"),
])
def test_bad_input_submits_nothing(sweep, tqa_path, stub_sbatch, args, env, message):
    root, _ = sweep
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        sweeps.main(["slurm", "tq", *sweep_flags(root, tqa_path), *args], {"ALPHAS": "20", "KS": "2", **env})
    assert not [c for c in stub_sbatch() if "--test-only" not in c["argv"]]


def test_no_sbatch_on_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    run = subprocess.run([shutil.which("bash"), str(SLURM_SWEEP), "m"], capture_output=True, text=True,
                         env={**os.environ, "PATH": str(bin_dir), "PYTHON": sys.executable})
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.splitlines() == [run.stderr.strip()] and "sbatch is not on PATH" in run.stderr


# ----------------------------------------------------------------------------- a real SLURM

def slurm_unusable() -> str | None:
    """Why SLURM cannot run jobs here, or None."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "sbatch is not on PATH"
    info = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"sinfo: {(info.stderr.strip().splitlines() or ['failed'])[-1]}"
    if not {"idle", "mixed", "allocated"} & set(info.stdout.split()):
        return f"no node ready (states: {' '.join(info.stdout.split()) or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm():
    reason = slurm_unusable()
    if reason:
        message = f"no usable SLURM ({reason}); start one with `bash tests/slurm/start_local_slurm.sh` (root)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: .ci/run starts it, so CI must run this test")  # a skip would hide it
        pytest.skip(message)


def wait_for_jobs(job_ids: list[str], timeout_s: float) -> None:
    """Until none of the jobs (arrays included) is pending or running; cancels them past the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        queue = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True, check=True).stdout
        if not set(queue.split()) & set(job_ids):
            return
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *job_ids])
            pytest.fail(f"jobs {', '.join(job_ids)} still queued after {timeout_s:.0f} s (cancelled)")
        time.sleep(2)


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_sweep_equals_sequential_runs(slurm, tqa_path, tmp_path):
    """ALPHAS="0 5" KS="4 8" on the bundled model through the real scheduler: the extraction array, the
    4-task validation array after it and the collect job; the table equals the same runs made one by one."""
    flags = ["--use_center_of_mass", "--limit", "8", "--metrics", "mc", "--device", "cpu", "--tqa_path", str(tqa_path),
             "--features_dir", str(tmp_path / "features"), "--results_dir", str(tmp_path / "slurm")]
    env = {**os.environ, "ALPHAS": "0 5", "KS": "4 8", "MAX_PARALLEL": "2", "LOG_DIR": str(tmp_path / "logs"),
           "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = ["bash", str(SLURM_SWEEP), "smollm2_135M_instruct", *flags]

    refused = subprocess.run(command, capture_output=True, text=True, env={**env, "PARTITION": "no_such_partition"})
    assert refused.returncode == 2 and "invalid partition specified: no_such_partition" in refused.stderr
    assert "submitted" not in refused.stdout

    submitted = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr
    jobs = [line.split()[2].rstrip(":") for line in submitted.stdout.splitlines() if line.startswith("submitted job")]
    assert len(jobs) == 3 and "validate_2fold, 4 tasks" in submitted.stdout
    wait_for_jobs(jobs, timeout_s=900)
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert logs == sorted([f"iti_activations_{jobs[0]}_{i}.log" for i in range(2)]
                          + [f"iti_validate_{jobs[1]}_{i}.log" for i in range(4)] + [f"iti_collect_{jobs[2]}.log"])
    assert "4 of 4 runs complete" in (tmp_path / "logs" / f"iti_collect_{jobs[2]}.log").read_text()

    again = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    assert "4 of 4 runs already complete" in again.stdout and "nothing to submit" in again.stdout

    from_slurm = collected(tmp_path / "slurm")
    assert sorted(zip(from_slurm["alpha"], from_slurm["K"])) == [("0", "4"), ("0", "8"), ("5", "4"), ("5", "8")]
    for alpha in (0.0, 5.0):
        for k in (4, 8):
            run_validation(ValidationConfig(model_name="smollm2_135M_instruct", alpha=alpha, num_heads=k, limit=8,
                                            use_center_of_mass=True, metrics=("mc",), device="cpu",
                                            tqa_path=str(tqa_path), features_dir=str(tmp_path / "features"),
                                            results_dir=str(tmp_path / "sequential")), progress=False, log=lambda _: None)
    sequential = collected(tmp_path / "sequential")
    pd.testing.assert_frame_equal(from_slurm.drop(columns="json"), sequential.drop(columns="json"))


def collected(results_dir):
    """collect_sweep's table of the bundled model's center-of-mass runs on 8 questions in `results_dir`."""
    from iti.collect import collect_table, finished_runs, selected_runs
    from iti.config import CollectConfig

    cfg = CollectConfig(use_center_of_mass=True, limit=8, results_dir=str(results_dir))
    return collect_table(selected_runs(cfg, finished_runs(results_dir)[0]))[0]


def per_question(records, column):
    """({question: score averaged over the records (seeds)}, {question: category}), every fold's answer file
    read directly; questions in test-fold order (the bootstrap's draws index questions in that order)."""
    answers = pd.concat([pd.read_csv(fold["files"]["answers"]) for record in records for fold in record["folds"]])
    by_question = answers.groupby("Question", sort=False)
    return by_question[column].mean(), by_question["Category"].first()


def test_seeds_grouped_and_paired_with_the_baseline(seeds, monkeypatch, capsys):
    from iti.statistics import paired_differences

    results, runs = seeds
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--model_name", "tq", "--model_path", "hub/tq",
                                      "--use_center_of_mass", "--limit", "6", "--results_dir", str(results),
                                      "--by_category"])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    out_dir = results / "results_dump" / "sweep_dump"
    table = pd.read_csv(only_file(out_dir, "tq_center_of_mass_limit_6_????????.csv")).set_index("K")
    treated, baseline = runs[(20.0, 3)], runs[(0.0, 0)]
    mc2 = [r["final"]["MC2"] for r in treated]
    assert (table.at[3, "seeds"], table.at[3, "paired seeds"]) == ("1 2 3", "1 2 3")
    assert table.at[3, "MC2"] == pytest.approx(np.mean(mc2))
    assert table.at[3, "MC2 std"] == pytest.approx(np.std(mc2, ddof=1))
    assert np.isnan(table.at[0, "ΔMC2"])  # the baseline has nothing to differ from

    # Δ by hand: each question's MC2 averaged over seeds, then ITI minus baseline, averaged over questions.
    ours, categories = per_question(treated, "tq MC2")
    base, _ = per_question(baseline, "tq MC2")
    assert len(ours) == 6
    assert table.at[3, "ΔMC2"] == pytest.approx((ours - base.reindex(ours.index)).mean())
    assert table.at[3, "ΔMC2"] != 0
    ours1, _ = per_question(treated, "tq MC1")
    base1, _ = per_question(baseline, "tq MC1")
    expected = paired_differences({"MC2": ours.to_numpy(), "MC1": ours1.reindex(ours.index).to_numpy()},
                                  {"MC2": base.reindex(ours.index).to_numpy(),
                                   "MC1": base1.reindex(ours.index).to_numpy()})
    assert (table.at[3, "ΔMC2 low"], table.at[3, "ΔMC2 high"]) == pytest.approx((expected["MC2"].low,
                                                                                 expected["MC2"].high))
    shown = capsys.readouterr().out
    assert f"{np.mean(mc2):.4f} ± {np.std(mc2, ddof=1):.4f}" in shown

    by_category = pd.read_csv(only_file(out_dir, "tq_center_of_mass_limit_6_????????_by_category_MC2.csv"))
    difference = (ours - base.reindex(ours.index)).groupby(categories).mean()
    assert dict(zip(by_category["category"], by_category["ΔMC2"])) == pytest.approx(difference.to_dict())
    assert by_category["ΔMC2"].tolist() == sorted(by_category["ΔMC2"], reverse=True)
    assert (only_file(out_dir, "tq_center_of_mass_limit_6_????????_K3_alpha20_by_category_MC2.png")).stat().st_size > 0


def test_tables_of_other_selections_or_runs_never_share_a_file(seeds, tmp_path, monkeypatch):
    results, _ = seeds
    copy = tmp_path / "results"
    shutil.copytree(results / "results_dump" / "summary_dump", copy / "results_dump" / "summary_dump")
    flags = ["--model_name", "tq", "--use_center_of_mass", "--limit", "6", "--results_dir", str(copy), "--by_category"]
    run_collect(monkeypatch, *flags)
    run_collect(monkeypatch, *flags, "--seed", "1")
    run_collect(monkeypatch, *flags, "--category_metric", "MC1")
    out_dir = copy / "results_dump" / "sweep_dump"
    tables = sorted(p.stem for p in out_dir.glob("*.csv") if "_by_category" not in p.name)
    assert len(tables) == 2 and "_seed_1_" in tables[1] and "_seed_" not in tables[0]
    assert sorted(p.stem for p in out_dir.glob("*_by_category_*.csv")) == sorted(
        [f"{tables[0]}_by_category_MC1", f"{tables[0]}_by_category_MC2", f"{tables[1]}_by_category_MC2"])
    # Runs of another seed added since: a new table, and no per-category file beside it but its own.
    (copy / "results_dump" / "summary_dump" / "seed_7.json").write_text(
        json.dumps({**seeds[1][(0.0, 0)][0], "identity": {**seeds[1][(0.0, 0)][0]["identity"], "seed": 7}}))
    run_collect(monkeypatch, *flags[:-1])
    [newest] = set(p.stem for p in out_dir.glob("*.csv") if "_by_category" not in p.name) - set(tables)
    assert not list(out_dir.glob(f"{newest}_by_category*"))


def copy_with_a_changed_record(seeds, tmp_path, change) -> Path:
    """The seeds' summaries copied to `tmp_path/results`, the first ITI run's first fold's `files` changed by
    `change`; returns the copy's results folder."""
    results, runs = seeds
    copy = tmp_path / "results"
    summaries = copy / "results_dump" / "summary_dump"
    shutil.copytree(results / "results_dump" / "summary_dump", summaries)
    treated = runs[(20.0, 3)][0]
    record = json.loads(open(treated["json_path"]).read())
    change(record["folds"][0]["files"])
    (summaries / os.path.basename(treated["json_path"])).write_text(json.dumps(record))
    return copy


def test_a_missing_answer_file_leaves_the_difference_empty_and_says_which(seeds, tmp_path, monkeypatch, capsys):
    """One ITI run's answer file gone (deleted, or left on another machine): the row keeps its means, its Δ is
    empty, and a note names the file and how to remake it."""
    _, runs = seeds
    gone = tmp_path / "elsewhere" / "answers.csv"
    copy = copy_with_a_changed_record(seeds, tmp_path, lambda files: files.update(answers=str(gone)))
    capsys.readouterr()
    run_collect(monkeypatch, "--model_name", "tq", "--use_center_of_mass", "--limit", "6", "--results_dir", str(copy))
    table = pd.read_csv(only_file(copy / "results_dump" / "sweep_dump", "tq_center_of_mass_limit_6_????????.csv"))
    row = table.set_index("K").loc[3]
    assert np.isnan(row["ΔMC2"]) and row["MC2"] == pytest.approx(np.mean([r["final"]["MC2"] for r in runs[(20.0, 3)]]))
    assert capsys.readouterr().err.splitlines() == [
        f"note: K 3, α 20: no paired difference, the answer file {gone} is missing; run validate_2fold with that "
        "run's settings again to remake it"]


def test_a_changed_answer_file_is_refused_naming_it(seeds, tmp_path, monkeypatch, capsys):
    """One ITI run's answer file with one score changed since the run recorded its digest (it still parses, and
    would give another Δ): collect_sweep refuses it in one line naming the file, instead of a silently other table."""
    changed = tmp_path / "answers.csv"

    def with_a_changed_score(files):
        text = open(files["answers"]).read()
        changed.write_text(text.replace(",0.", ",1.", 1))  # the first score in the file
        assert changed.read_text() != text
        files["sha256"][str(changed)] = files["sha256"].pop(files["answers"])
        assert files["sha256"][str(changed)] == hashlib.sha256(text.encode()).hexdigest()
        files["answers"] = str(changed)

    copy = copy_with_a_changed_record(seeds, tmp_path, with_a_changed_score)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        run_collect(monkeypatch, "--model_name", "tq", "--use_center_of_mass", "--limit", "6", "--results_dir",
                    str(copy))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"answer file {changed} is not the file that was written there" in err
    assert not (copy / "results_dump" / "sweep_dump").exists() or not list((copy / "results_dump" /
                                                                             "sweep_dump").glob("*.csv"))
