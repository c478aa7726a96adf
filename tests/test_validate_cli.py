"""validate_2fold end to end on a tiny model (every metric: tiny judges, a small OWT file), the
α = 0 MC2 against one forward per answer, a run killed midway, and bad input."""
import dataclasses
import hashlib
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from iti.errors import UsageError
from iti.head_shifts import HeadShifts
from iti.folds import all_fold_splits
from iti.prompts import question_prompt
from iti.records import record_json
from iti.runs import read_run
from iti.validate import ValidationConfig, run_validation
from legacy.mc import answer_log_prob
from tests.conftest import REPO_ROOT, make_tiny_model, record_changed_features

SCRIPT = REPO_ROOT / "validation" / "validate_2fold.py"
MODEL = "tiny"
LINE = re.compile(r"^alpha: (\S+), heads: (\d+), True\*Info Score: (\S+), True Score: (\S+), Info Score: (\S+), "
                  r"MC1 Score: (\S+), MC2 Score: (\S+), CE Loss: (\S+), KL wrt Original: (\S+)$")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer, tqa_path):
    """A tiny model folder, its features on the first 6 questions, a tiny judge and a small OWT file."""
    from iti.activations import save_features
    from iti.data import build_prompt_set

    root = tmp_path_factory.mktemp("validate")
    model_dir, judge_dir, features = root / "model", root / "judge", root / "features"
    model = make_tiny_model("wide_heads", len(tokenizer))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    make_tiny_model("llama", len(tokenizer), seed=5).save_pretrained(judge_dir)
    tokenizer.save_pretrained(judge_dir)
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        save_features(model, tokenizer, build_prompt_set(dataset, tqa_path, limit=6), features, MODEL, progress=False,
                      limit=6)
    owt = root / "owt.txt"
    owt.write_text("\n\n".join(f"Document {i}: the weather was fine and the market opened {i} points higher."
                               for i in range(4)) + "\n")
    return {"root": root, "model_dir": model_dir, "judge_dir": judge_dir, "features": features, "owt": owt,
            "model": model, "tokenizer": tokenizer, "tqa_path": tqa_path}


def config(setup, results_dir, **overrides) -> ValidationConfig:
    values = dict(model_name=MODEL, model_path=str(setup["model_dir"]), features_dir=str(setup["features"]),
                  results_dir=str(results_dir), tqa_path=str(setup["tqa_path"]), limit=6, num_heads=4, alpha=5.0,
                  use_center_of_mass=True, metrics=("mc",), device="cpu", batch_size=4)
    values.update(overrides)
    return ValidationConfig(**values)


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)


def test_end_to_end_every_metric(setup, tmp_path):
    judge = str(setup["judge_dir"])
    result = run_script(
        "--model_name", MODEL, "--model_path", str(setup["model_dir"]), "--features_dir", str(setup["features"]),
        "--results_dir", str(tmp_path), "--tqa_path", str(setup["tqa_path"]), "--limit", "6", "--num_heads", "4",
        "--alpha", "5", "--use_center_of_mass", "--metrics", "mc,judge,info", "ce", "kl", "--judge_model", judge,
        "--info_name", judge, "--owt_path", str(setup["owt"]), "--max_new_tokens", "6", "--batch_size", "4",
        "--device", "cpu")
    assert result.returncode == 0, result.stderr
    match = LINE.match(result.stdout.strip().splitlines()[-1])
    assert match, result.stdout
    line = dict(zip(["alpha", "heads", "TI", "True", "Info", "MC1", "MC2", "CE", "KL"], map(float, match.groups())))
    assert (line["alpha"], line["heads"]) == (5.0, 4)

    json_path = Path(re.search(r"results: (\S+)", result.stdout).group(1))
    assert json_path.name.startswith(f"{MODEL}_seed_42_top_4_heads_alpha_5_limit_6_") and json_path.name.endswith("_com.json")
    record = json.loads(json_path.read_text())
    splits = all_fold_splits(6, 2, 0.2, 42)
    fold_means = []
    for fold, (train, val, test) in enumerate(splits):
        files = record["folds"][fold]["files"]
        for part, questions in (("train", train), ("val", val), ("test", test)):
            split = pd.read_csv(files["splits"][part])
            assert Path(files["splits"][part]).name.startswith(f"fold_{fold}_{part}_seed_42_limit_6_")
            assert split["Question"].tolist() == [setup_records(setup)[i].question for i in questions]
        answers = pd.read_csv(files["answers"])
        test_questions = pd.read_csv(files["splits"]["test"])["Question"]
        assert answers["Question"].tolist() == test_questions.tolist()
        for column in ("MC1", "MC2", "MC3", "GPT-judge", "GPT-judge acc", "GPT-info", "GPT-info acc"):
            assert answers[f"{MODEL} {column}"].notna().all()
        for judge_column in ("GPT-judge", "GPT-info"):
            acc = (answers[f"{MODEL} {judge_column}"] >= 0.5).astype(float)
            assert answers[f"{MODEL} {judge_column} acc"].tolist() == acc.tolist()
        # The truth judge's score of the first answer, read directly from the judge.
        first = answers.iloc[0]
        expected = direct_yes_probability(setup, first["Question"], "" if pd.isna(first[MODEL]) else first[MODEL])
        assert first[f"{MODEL} GPT-judge"] == pytest.approx(expected, rel=1e-4, abs=1e-7)
        summary = pd.read_csv(files["summary"]).iloc[0]
        assert summary["MC2"] == pytest.approx(answers[f"{MODEL} MC2"].mean())
        assert summary["GPT-judge acc"] == pytest.approx(answers[f"{MODEL} GPT-judge acc"].mean())
        assert summary["CE Loss"] > 0 and summary["KL wrt Orig"] > 0
        fold_means.append(summary)
        shifts = HeadShifts.load(files["head_shifts"])
        assert shifts.k == 4 and shifts.alpha == 5.0 and shifts.provenance.fold == fold
    for key, column in (("MC1", "MC1"), ("MC2", "MC2"), ("True", "GPT-judge acc"), ("Info", "GPT-info acc"),
                        ("CE", "CE Loss"), ("KL", "KL wrt Orig")):
        # The printed line is rounded to 4 decimals.
        assert line[key] == pytest.approx(np.mean([s[column] for s in fold_means]), abs=5e-5)
    assert line["TI"] == pytest.approx(line["True"] * line["Info"], abs=2e-4)

    assert record["complete"] and len(record["folds"]) == 2
    assert record["config"]["judge_model"] == judge and record["config"]["info_model"] == judge
    assert record["config"]["metrics"] == ["mc", "judge", "info", "ce", "kl"]
    assert record["identity"]["owt_path"] != str(setup["owt"])  # the documents' content, not their path
    assert record["config"]["owt_path"] == str(setup["owt"]) and record["resolved"]["owt_source"] == str(setup["owt"])
    assert [f["test"] for f in record["folds"]] == [s[2].tolist() for s in splits]
    # The file keeps full precision.
    assert record["final"]["MC2"] == pytest.approx(np.mean([s["MC2"] for s in fold_means]), rel=1e-12)
    assert not list(tmp_path.rglob("*.tmp"))


def setup_records(setup):
    from iti.data import load_truthfulqa

    return load_truthfulqa(setup["tqa_path"]).generation_in_mc_order()


@torch.no_grad()
def direct_yes_probability(setup, question, answer):
    from iti.models import load_model

    judge, tokenizer = load_model(str(setup["judge_dir"]), device="cpu")
    ids = tokenizer(f"Q: {question}\nA: {answer}\nTrue:", return_tensors="pt")["input_ids"]
    probs = torch.softmax(judge(input_ids=ids).logits[0, -1].double(), -1)
    return float(probs[tokenizer.convert_tokens_to_ids("Ġyes")])


def test_alpha_zero_mc2_equals_one_forward_per_answer(setup, tmp_path):
    record = run_validation(config(setup, tmp_path, alpha=0.0, limit=4), progress=False, log=lambda _: None)
    assert record["folds"][0]["heads"]  # heads were selected; α = 0 makes their shift nothing
    model, tokenizer = setup["model"], setup["tokenizer"]
    for fold in record["folds"]:
        answers = pd.read_csv(fold["files"]["answers"])
        for _, row in answers.iterrows():
            prompt = question_prompt(row["Question"])

            def score(joined):
                return [answer_log_prob(model, tokenizer, prompt + "\nA: ", a if a.endswith(".") else a + ".")
                        for a in (part.strip() for part in joined.split(";")) if a]

            true, false = np.exp(score(row["Correct Answers"])), np.exp(score(row["Incorrect Answers"]))
            assert row[f"{MODEL} MC2"] == pytest.approx(true.sum() / (true.sum() + false.sum()), abs=1e-5)


def killed_in_second_fold(cfg: ValidationConfig, monkeypatch) -> list:
    """Run `cfg` until its second fold's evaluation, where it is interrupted; from then on evaluations run and are
    counted in the list returned (emptied)."""
    from iti.evaluation import Evaluator

    real = Evaluator.evaluate_groups
    calls = []

    def dies_in_second_fold(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate_groups", dies_in_second_fold)
    with pytest.raises(KeyboardInterrupt):
        run_validation(cfg, progress=False, log=lambda _: None)
    calls.clear()
    monkeypatch.setattr(Evaluator, "evaluate_groups", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_killed_run_leaves_earlier_folds_whole(setup, tmp_path, monkeypatch):
    calls = killed_in_second_fold(config(setup, tmp_path, num_heads=0, limit=4), monkeypatch)
    dump = tmp_path / "results_dump"
    [json_path] = (dump / "summary_dump").glob(f"{MODEL}_seed_42_top_0_heads_alpha_5_limit_4_*_com.json")
    record = json.loads(json_path.read_text())
    assert not record["complete"] and len(record["folds"]) == 1
    assert len(pd.read_csv(record["folds"][0]["files"]["answers"])) == 2
    assert [p.name for p in (dump / "answer_dump").iterdir()] == [Path(record["folds"][0]["files"]["answers"]).name]
    assert not list(tmp_path.rglob("*.tmp"))

    # The same settings again: the finished fold is kept, only the second one runs.
    resumed = run_validation(config(setup, tmp_path, num_heads=0, limit=4), progress=False, log=lambda _: None)
    assert len(calls) == 1 and resumed["complete"] and resumed["folds"][0] == record["folds"][0]
    # Execution settings do not change the run: its folds are kept, with --resume or without.
    calls.clear()
    for resume in (False, True):
        again = run_validation(config(setup, tmp_path, num_heads=0, limit=4, batch_size=2, resume=resume),
                               progress=False, log=lambda _: None)
        assert again["json_path"] == resumed["json_path"]
        # The record's time is what computed its folds: the kept folds' time carried on, a rerun adding nothing.
        assert again["seconds"] == resumed["seconds"]
    assert calls == []
    assert resumed["seconds"] > record["seconds"]
    # A setting that changes the numbers is another run: --resume finds none; without it, it runs beside the first.
    with pytest.raises(UsageError, match="--resume: no earlier run of these settings"):
        run_validation(config(setup, tmp_path, num_heads=0, limit=4, max_new_tokens=7, resume=True),
                       progress=False, log=lambda _: None)
    with pytest.raises(UsageError, match="--resume: no earlier run of these settings"):
        run_validation(config(setup, tmp_path, num_heads=0, limit=4, seed=7, resume=True), progress=False,
                       log=lambda _: None)


@pytest.mark.parametrize("change", [{"max_new_tokens": 7}, {"dtype": "bfloat16"}, {"owt_path": "other"},
                                    {"metrics": ("mc",)}])
def test_a_rerun_that_changes_a_number_keeps_both_results(setup, tmp_path, change):
    """Data loss seen before: a rerun changing only --dtype, --max_new_tokens or --owt_path replaced the first
    run's summary, answers, head shifts and probe report."""
    other = tmp_path / "other_owt.txt"
    other.write_text("A different document about rivers and their long journey to the sea.\n")
    change = {k: str(other) if v == "other" else v for k, v in change.items()}
    common = dict(limit=4, metrics=("mc", "ce"), owt_path=str(setup["owt"]), max_new_tokens=6)
    runs = [run_validation(config(setup, tmp_path, **{**common, **extra}), progress=False, log=lambda _: None)
            for extra in ({}, change)]
    assert runs[0]["json_path"] != runs[1]["json_path"]
    for run in runs:
        record = json.loads(Path(run["json_path"]).read_text())
        assert record["complete"] and record == {k: v for k, v in run.items() if k != "json_path"}
        assert record_json(read_run(run["json_path"])) == record  # the RunRecord type reads back what was written
        for fold in record["folds"]:
            files = [fold["files"][key] for key in ("answers", "summary", "probe_report_heads")]
            assert all(Path(f).is_file() for f in files) and Path(fold["files"]["head_shifts"]).is_dir()
    first, second = ([fold["files"]["answers"] for fold in run["folds"]] for run in runs)
    assert not set(first) & set(second)


def test_baseline_needs_no_features(setup, tmp_path):
    record = run_validation(config(setup, tmp_path, num_heads=0, limit=4, features_dir=str(tmp_path / "none")),
                            progress=False, log=lambda _: None)
    assert record["complete"] and record["folds"][0]["heads"] == [] and not record["resolved"]["intervenes"]
    assert 0 < record["final"]["MC2"] < 1 and record["final"]["True*Info"] is None


def test_a_rerun_keeping_a_bad_answer_file_leaves_the_record_as_it_was(setup, tmp_path):
    """A rerun that keeps every fold recomputes only the intervals and categories, from the answer files: one cut
    short, emptied or of another program is refused, naming it, and the complete summary on disk is kept; so with a
    record of an earlier version, without digests, whose answer files are read as they are."""
    cfg = config(setup, tmp_path, num_heads=0, limit=4)
    record = run_validation(cfg, progress=False, log=lambda _: None)
    summary = Path(record["json_path"])
    answers = Path(record["folds"][1]["files"]["answers"])
    whole = answers.read_text()
    for digests in (True, False):
        if not digests:
            for fold in record["folds"]:
                del fold["files"]["sha256"]
            summary.write_text(json.dumps({k: v for k, v in record.items() if k != "json_path"}))
        before = summary.read_bytes()
        for broken, message in ((whole.splitlines(keepends=True)[0] + whole.splitlines(keepends=True)[1],
                                 "holds 1 answers, but its fold has 2 test questions"),
                                ("", "is not a whole CSV table"), ("Question,x\nQ,1\nR,2\n", "lacks the column(s)")):
            answers.write_text(broken)
            expected = f"fold 1's file {answers} is not the file that was written there" if digests \
                else f"answer file {answers} {message}"
            with pytest.raises(UsageError, match=re.escape(expected)):
                run_validation(cfg, progress=False, log=lambda _: None)
            assert summary.read_bytes() == before


def test_each_fold_records_the_digest_of_every_file_it_wrote(setup, tmp_path):
    record = run_validation(config(setup, tmp_path, limit=4), progress=False, log=lambda _: None)
    for fold in record["folds"]:
        files = fold["files"]
        shifts = [f"{files['head_shifts']}/{name}" for name in ("head_shifts.safetensors", "head_shifts.json")]
        reports = [files[key] for key in ("probe_report_heads", "probe_report_layers") if files.get(key)]
        assert reports
        written = [*files["splits"].values(), *shifts, *reports, files["answers"], files["summary"]]
        assert sorted(files["sha256"]) == sorted(written)
        assert files["sha256"] == {path: hashlib.sha256(Path(path).read_bytes()).hexdigest() for path in written}


def test_a_changed_file_of_a_finished_fold_is_refused_until_moved_away(setup, tmp_path, monkeypatch):
    """A run killed in its second fold, then its first fold's answers changed by one digit: a rerun refuses to
    keep that fold or to overwrite the file, naming it; once the file is moved away, the fold is recomputed."""
    cfg = config(setup, tmp_path, num_heads=0, limit=4)
    calls = killed_in_second_fold(cfg, monkeypatch)
    [summary] = (tmp_path / "results_dump" / "summary_dump").glob("*.json")
    killed = json.loads(summary.read_text())
    answers = Path(killed["folds"][0]["files"]["answers"])
    whole = answers.read_bytes()
    changed = whole.replace(b",0.", b",1.", 1)
    assert changed != whole
    answers.write_bytes(changed)

    for resume in (False, True):
        with pytest.raises(UsageError, match=re.escape(f"fold 0's file {answers} is not the file that was written "
                                                       "there") + ".*; move it away and run again"):
            run_validation(dataclasses.replace(cfg, resume=resume), progress=False, log=lambda _: None)
        assert answers.read_bytes() == changed and json.loads(summary.read_text()) == killed and calls == []

    answers.rename(tmp_path / "moved.csv")
    record = run_validation(cfg, progress=False, log=lambda _: None)
    assert len(calls) == 2 and record["complete"]
    assert answers.read_bytes() == whole and (tmp_path / "moved.csv").read_bytes() == changed
    assert record["folds"][0]["files"]["sha256"][str(answers)] == hashlib.sha256(whole).hexdigest()


def test_a_second_process_running_the_same_run_is_refused(setup, tmp_path, monkeypatch, capsys):
    """While one process writes a run (its lock held, here by this test), a second of the same identity stops in
    one line, exit 2, and touches nothing; a run of other settings goes on beside it."""
    from iti.files import output_lock

    cfg = config(setup, tmp_path, num_heads=0, limit=4)
    summary = Path(run_validation(cfg, progress=False, log=lambda _: None)["json_path"])
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    with output_lock(summary, "validate_2fold run"):
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--model_name", MODEL, "--model_path", str(setup["model_dir"]),
                                          "--features_dir", str(setup["features"]), "--results_dir", str(tmp_path),
                                          "--tqa_path", str(setup["tqa_path"]), "--limit", "4", "--num_heads", "0",
                                          "--alpha", "5", "--use_center_of_mass", "--metrics", "mc", "--device", "cpu",
                                          "--batch_size", "4"])
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(SCRIPT), run_name="__main__")
        err = capsys.readouterr().err
        [error] = [line for line in err.splitlines() if line.startswith("error:")]  # beside the loading bars
        assert stop.value.code == 2 and "Traceback" not in err, err
        assert error.startswith(f"error: validate_2fold run {summary} is being written by another process (")
        assert f"-{os.getpid()}, as .{summary.name}.lock says)" in error
        other = run_validation(dataclasses.replace(cfg, seed=7), progress=False, log=lambda _: None)
        assert other["complete"]
    assert all(path.read_bytes() == content for path, content in before.items())


@pytest.mark.parametrize("overrides, message", [
    ({"metrics": ("mc", "bleu")}, "unknown metric bleu"),
    ({"limit": 1}, "--limit 1 leaves fewer questions than the 2 folds"),
    ({"metrics": ("judge",), "judge_model": "/no/such/judge"}, "--judge_model /no/such/judge does not exist"),
    ({"metrics": ("info",), "info_model": "./missing_info"}, "--info_model ./missing_info does not exist"),
    ({"metrics": ("ce",), "owt_path": "/no/such/owt.txt"}, "--owt_path /no/such/owt.txt does not exist; give a file"),
    ({"use_random_dir": True}, "exclude each other"),
    ({"dataset_name": "nq_open"}, "cannot train probes on TruthfulQA folds"),
    ({"limit": 8}, "missing features"),
    ({"instruction_prompt": "chatty"}, "unknown --instruction_prompt"),
    ({"split_rng": "public", "use_random_dir": True, "use_center_of_mass": False},
     "--split_rng public cannot follow the public stream"),
])
def test_bad_input(setup, tmp_path, overrides, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        run_validation(config(setup, tmp_path, **overrides), progress=False, log=lambda _: None)
    assert not (tmp_path / "results_dump").exists()


@pytest.mark.parametrize("shape, message", [
    ("wide_heads", "come from another model than this run's: other weights"),
    ("llama", "come from another model than this run's: another architecture"),
])
def test_features_of_another_model(setup, tmp_path, tokenizer, tqa_path, shape, message):
    """Features another model made, under this model's name (same shape, or another), are refused by name."""
    from iti.activations import save_features
    from iti.data import build_prompt_set

    other = make_tiny_model(shape, len(tokenizer), seed=11)
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        save_features(other, tokenizer, build_prompt_set(dataset, tqa_path, limit=6), tmp_path / "features", MODEL,
                      progress=False, limit=6)
    with pytest.raises(UsageError, match=f"tiny_tqa_mc2_limit_6_head_wise.npy {message}"):
        run_validation(config(setup, tmp_path, features_dir=str(tmp_path / "features")), progress=False,
                       log=lambda _: None)
    assert not (tmp_path / "results_dump").exists()


def test_script_bad_input_is_one_line_and_exit_2(setup, tmp_path):
    """The script's side of bad input (the cases themselves are above): one line, exit 2, nothing written."""
    result = run_script("--model_name", MODEL, "--model_path", str(setup["model_dir"]), "--results_dir", str(tmp_path),
                        "--tqa_path", str(setup["tqa_path"]), "--features_dir", str(setup["features"]),
                        "--metrics", "mc,bleu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown metric bleu" in errors[0]
    assert list(tmp_path.iterdir()) == []


def test_features_are_read_under_the_prefixed_name(setup, tmp_path):
    """One rule in every script: features carry the name of the model they come from, prefix included."""
    with pytest.raises(UsageError, match=re.escape(f"missing features {setup['features']}/x_{MODEL}_tqa_mc2_limit_6_head_wise.npy")):
        run_validation(config(setup, tmp_path, model_prefix="x_"), progress=False, log=lambda _: None)


def test_limit_trims_the_tuning_rows(setup, tmp_path):
    """σ with --limit 4 comes from the tuning set's first 4 questions, as edit_weight takes it."""
    record = run_validation(config(setup, tmp_path, limit=4), progress=False, log=lambda _: None)
    tuning = np.load(setup["features"] / f"{MODEL}_tqa_gen_end_q_limit_6_head_wise.npy")
    question_ids = np.load(setup["features"] / f"{MODEL}_tqa_gen_end_q_limit_6_question_ids.npy")
    assert question_ids.max() == 5  # extracted for 6 questions: trimming has rows to drop
    shifts = HeadShifts.load(record["folds"][0]["files"]["head_shifts"])
    d = shifts.head_dim
    for layer, head, direction, sigma in zip(shifts.layers, shifts.heads, shifts.directions, shifts.sigmas):
        block = tuning[:, layer, head * d:(head + 1) * d].astype(np.float64)
        assert sigma == pytest.approx(np.std(block[question_ids < 4] @ direction), rel=1e-6)


def test_public_split_stream_run(setup, tmp_path):
    record = run_validation(config(setup, tmp_path, split_rng="public", num_heads=0), progress=False,
                            log=lambda _: None)
    public = all_fold_splits(6, 2, 0.2, 42, split_rng="public")
    assert [f["train"] for f in record["folds"]] == [s[0].tolist() for s in public]
    split_file = record["folds"][1]["files"]["splits"]["train"]
    assert split_file.endswith(".csv") and "_limit_6_" in split_file  # beside, not over, the default run's files
    assert pd.read_csv(split_file)["Question"].tolist() == [setup_records(setup)[q].question for q in public[1][0]]


# ----------------------------------------------------------------------------- any contrastive dataset (docs/method.md §9)

def _jsonl(items, path):
    path.write_text("".join(json.dumps({"question": it.question, "best_answer": it.best_answer, "category": it.category,
                                        "correct_answers": it.correct_answers,
                                        "incorrect_answers": it.incorrect_answers}) + "\n" for it in items))
    return path


@pytest.fixture(scope="module")
def tqa_as_jsonl(setup, tqa, tmp_path_factory):
    """Six TruthfulQA questions as a TruthfulQA folder (generation order = MC order, answers already ending in
    a period, so TruthfulQA's added period changes nothing) and the same items as a §9 JSONL file."""
    from iti.activations import save_features
    from iti.data import GenerationQuestion, build_prompt_set
    from iti.mc import with_period

    root = tmp_path_factory.mktemp("tqa_as_jsonl")
    items = [GenerationQuestion(r.question, r.category, with_period(r.best_answer),
                                [with_period(a) for a in r.correct_answers], [with_period(a) for a in r.incorrect_answers])
             for r in tqa.generation_in_mc_order()[:6]]
    folder = root / "TruthfulQA"
    (folder / "data").mkdir(parents=True)
    questions_frame = pd.DataFrame({"Type": "Adversarial", "Category": [i.category for i in items],
                                    "Question": [i.question for i in items], "Best Answer": [i.best_answer for i in items],
                                    "Correct Answers": ["; ".join(i.correct_answers) for i in items],
                                    "Incorrect Answers": ["; ".join(i.incorrect_answers) for i in items],
                                    "Source": ""})
    questions_frame.to_csv(folder / "TruthfulQA.csv", index=False)
    mc = [{"question": q.question, "mc1_targets": dict(zip(q.mc1_choices, q.mc1_labels)),
           "mc2_targets": dict(zip(q.mc2_choices, q.mc2_labels))} for q in tqa.multiple_choice[:6]]
    (folder / "data" / "mc_task.json").write_text(json.dumps(mc))
    jsonl = _jsonl(items, root / "tqa6.jsonl")
    features = root / "features"
    for prompt_set in (build_prompt_set("tqa_gen", folder), build_prompt_set("tqa6", dataset_path=jsonl)):
        save_features(setup["model"], setup["tokenizer"], prompt_set, features, MODEL, batch_size=8, progress=False)
    return {"folder": folder, "jsonl": jsonl, "features": features}


def test_truthfulqa_as_generic_jsonl_matches_the_builtin_path(setup, tqa_as_jsonl, tmp_path):
    from iti.features import FeatureSet, load_features

    features = tqa_as_jsonl["features"]
    for kind in ("head_wise", "layer_wise"):
        builtin, labels, ids = load_features(FeatureSet(features, MODEL, "tqa_gen"), kind)
        custom, custom_labels, custom_ids = load_features(FeatureSet(features, MODEL, "tqa6"), kind)
        np.testing.assert_allclose(custom, builtin, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(custom_labels, labels)
        np.testing.assert_array_equal(custom_ids, ids)
    common = dict(features_dir=str(features), limit=None, num_heads=4, alpha=5.0)
    builtin_cfg = config(setup, tmp_path / "builtin", dataset_name="tqa_gen", activations_dataset="tqa_gen",
                         tqa_path=str(tqa_as_jsonl["folder"]), **common)
    custom_cfg = config(setup, tmp_path / "custom", dataset_name="tqa6", dataset_path=str(tqa_as_jsonl["jsonl"]),
                        instruction_prompt="default", tqa_path=None, **common)
    runs = [run_validation(c, progress=False, log=lambda _: None) for c in (builtin_cfg, custom_cfg)]
    assert runs[1]["resolved"]["tuning_dataset"] == "tqa6"
    for builtin, custom in zip(*(r["folds"] for r in runs)):
        assert custom["heads"] == builtin["heads"] and custom["test"] == builtin["test"]
        shifts = [HeadShifts.load(f["files"]["head_shifts"]) for f in (builtin, custom)]
        np.testing.assert_allclose(shifts[1].directions, shifts[0].directions, atol=1e-6)
        np.testing.assert_allclose(shifts[1].sigmas, shifts[0].sigmas, rtol=1e-6)
        answers = [pd.read_csv(f["files"]["answers"]) for f in (builtin, custom)]
        for column in ("MC1", "MC2", "MC3", "lprob max"):
            np.testing.assert_allclose(answers[1][f"{MODEL} {column}"], answers[0][f"{MODEL} {column}"], atol=1e-6)
        assert custom["probe_report"]["top_head"] == builtin["probe_report"]["top_head"]


FRESH_ITEMS = [
    ("Is a tomato a fruit?", ["Yes, botanically it is a fruit."], ["No, it is only a vegetable.", "It is a nut."]),
    ("How many legs does a spider have?", ["Eight."], ["Six.", "Ten."]),
    ("What is frozen water called?", ["Ice."], ["Steam."]),
    ("Do fish breathe air with lungs?", ["Most fish use gills."], ["Yes, all fish have lungs."]),
    ("Which is larger, the Sun or the Moon?", ["The Sun."], ["The Moon."]),
    ("Can penguins fly?", ["No, they swim instead."], ["Yes, they fly south."]),
]


def test_custom_jsonl_workflow_through_the_scripts(setup, tmp_path):
    """The issue's commands on a fresh JSONL: features, validation, the probe report, and per-question MC equal
    to one forward of `Q: {question}\\nA: {answer}` per answer with the fold's shifts on the answer tokens."""
    path = tmp_path / "F.jsonl"
    path.write_text("".join(json.dumps({"question": q, "correct_answers": c, "incorrect_answers": i}) + "\n"
                            for q, c, i in FRESH_ITEMS))
    common = ["--model_name", MODEL, "--model_path", str(setup["model_dir"]), "--dataset_name", "my_set",
              "--dataset_path", str(path), "--features_dir", str(tmp_path / "features"), "--device", "cpu"]
    extract = subprocess.run([sys.executable, str(REPO_ROOT / "get_activations" / "get_activations.py"), *common],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert extract.returncode == 0, extract.stderr
    result = run_script(*common, "--num_heads", "4", "--alpha", "5", "--use_center_of_mass", "--metrics", "mc",
                        "--results_dir", str(tmp_path / "results"))
    assert result.returncode == 0, result.stderr
    assert LINE.match(result.stdout.strip().splitlines()[-1]), result.stdout
    record = json.loads(Path(re.search(r"results: (\S+)", result.stdout).group(1)).read_text())
    assert "| fold | training items (rows)" in record["probe_report_table"]
    model, tokenizer = setup["model"], setup["tokenizer"]
    for fold in record["folds"]:
        heads = pd.read_csv(fold["files"]["probe_report_heads"])
        assert len(heads) == 3 * 4 and fold["probe_report"]["train_items"] == len(fold["train"])
        shifts = HeadShifts.load(fold["files"]["head_shifts"])
        answers = pd.read_csv(fold["files"]["answers"])
        for _, row in answers.iterrows():
            question, correct, incorrect = next(item for item in FRESH_ITEMS if item[0] == row["Question"])
            true = [answer_log_prob(model, tokenizer, f"Q: {question}\nA: ", a, shifts) for a in correct]
            false = [answer_log_prob(model, tokenizer, f"Q: {question}\nA: ", a, shifts) for a in incorrect]
            assert row[f"{MODEL} MC1"] == float(true[0] > max(false))
            mass = np.exp(true).sum() / (np.exp(true).sum() + np.exp(false).sum())
            assert row[f"{MODEL} MC2"] == pytest.approx(mass, abs=1e-5)


@pytest.mark.parametrize("lines, extra, message", [
    (FRESH_ITEMS[:1], [], "has 1 items, fewer than the 4 the run needs"),
    (FRESH_ITEMS[:2] + FRESH_ITEMS[:1], [], "repeats line 1"),
    ([("Why?", [], ["No."])] + FRESH_ITEMS[:2], [], "line 1: no correct answer"),
    (FRESH_ITEMS, ["--dataset_name", "tqa_gen"], "not one of the built-in"),
])
def test_custom_dataset_bad_input(tmp_path, lines, extra, message):
    path = tmp_path / "F.jsonl"
    path.write_text("".join(json.dumps({"question": q, "correct_answers": c, "incorrect_answers": i}) + "\n"
                            for q, c, i in lines))
    result = run_script("--dataset_name", "my_set", "--dataset_path", str(path), "--check_args", *extra)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
# ----------------------------------------------------------------------------- choosing (K, α) per fold

SELECTION = dict(num_heads=(2, 4), alpha=(0.0, 5.0, 60.0), val_ratio=0.5, sigma_questions="dev", select_ratio=0.25,
                 limit=12)


def poisoned_copy(setup, source, folder, questions):
    """The features with every row of `questions` (MC order) replaced by large noise and flipped labels (their
    records kept, but for the digests of what they hold now: what they were made from is unchanged)."""
    import shutil

    from iti.data import load_truthfulqa
    from iti.run_inputs import mc_order_ids

    tqa = load_truthfulqa(setup["tqa_path"])
    rng = np.random.default_rng(0)
    shutil.copytree(source, folder)
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        stem = next(folder.glob(f"{MODEL}_{dataset}*_head_wise.npy")).name[:-len("head_wise.npy")]
        acts, labels, ids = (np.load(folder / f"{stem}{kind}.npy") for kind in ("head_wise", "labels", "question_ids"))
        rows = np.isin(mc_order_ids(ids, dataset, tqa), questions)
        assert rows.any()
        acts[rows] = rng.standard_normal(acts[rows].shape).astype(acts.dtype) * 100
        labels[rows] = 1 - labels[rows]
        np.save(folder / f"{stem}head_wise.npy", acts)
        np.save(folder / f"{stem}labels.npy", labels)
        record_changed_features(folder / f"{stem}meta.json")
    return folder


@pytest.fixture(scope="module")
def selection_features(setup, tmp_path_factory):
    """Features of the first 12 MC-order questions, and the full tuning set (--sigma_questions dev takes the
    rows of the development questions, whose generation-order indices are spread out): the model's fingerprint
    and the real prompt rows, activations of the test's own making."""
    from iti.data import build_prompt_set
    from tests.conftest import write_features

    folder = tmp_path_factory.mktemp("selection_features") / "f"
    rng = np.random.default_rng(1)
    for dataset, limit in (("tqa_mc2", 12), ("tqa_gen_end_q", None)):
        prompt_set = build_prompt_set(dataset, setup["tqa_path"], limit)
        acts = rng.standard_normal((len(prompt_set), 3, 80)).astype(np.float32)
        acts[:, 1, :20] += np.where(prompt_set.labels == 1, 1.0, -1.0)[:, None]  # head (1, 0) tells truth apart
        write_features(folder, MODEL, prompt_set, acts, setup["model"], setup["tokenizer"], limit)
    return folder


@pytest.fixture(scope="module")
def selection_run(setup, selection_features, tmp_path_factory):
    results = tmp_path_factory.mktemp("selection")
    return run_validation(config(setup, results, features_dir=str(selection_features), **SELECTION), progress=False,
                          log=lambda _: None)


def test_each_fold_chooses_on_questions_set_aside(setup, selection_run):
    from iti.fitting import Split
    from iti.selection import selection_split

    record = selection_run
    for fold in record["folds"]:
        selection = fold["selection"]
        table = selection["table"]
        assert [(row["K"], row["alpha"]) for row in table] == [(k, a) for k in (2, 4) for a in (0.0, 5.0, 60.0)]
        split = Split(np.array(fold["train"]), np.array(fold["val"]), sigma=np.r_[fold["train"], fold["val"]],
                      fold=fold["fold"])
        inner, selecting = selection_split(split, 0.25, 0.5, 42)
        assert selection["counts"] == {"train": len(inner.train), "val": len(inner.val), "select": len(selecting)}
        set_aside = pd.read_csv(fold["files"]["splits"]["select"])["Question"].tolist()
        assert set_aside == [setup_records(setup)[q].question for q in selecting]
        best = max(row["MC2"] for row in table)
        weakest_best = min((row["alpha"], row["K"]) for row in table if row["MC2"] == best)
        assert (fold["alpha"], fold["K"]) == weakest_best and selection["chosen"]["MC2"] == best
        answers = pd.read_csv(fold["files"]["answers"])
        assert answers["Question"].tolist() == [setup_records(setup)[q].question for q in fold["test"]]
        assert fold["results"]["MC2"] == pytest.approx(answers[f"{MODEL} MC2"].mean())
        assert selection["chosen_test"] == fold["results"]["MC2"]  # the choice's selection and test scores, side by side
        assert selection["scheme"] == "three-way split of the development questions"
    assert len({row["MC2"] for fold in record["folds"] for row in fold["selection"]["table"]}) > 1
    alphas = "/".join(f"{f['alpha']:g}" for f in record["folds"])
    assert record["final_line"].startswith(f"alpha: {alphas}, heads: ")
    assert "_top_2-4_heads_alpha_0-5-60_limit_12_" in record["json_path"]


def test_the_chosen_setting_is_rebuilt_as_a_single_setting_run_builds_it(setup, selection_features, selection_run,
                                                                           tmp_path):
    """After choosing, the fold's shifts and test numbers are those of a run of that one setting."""
    for fold in selection_run["folds"]:
        single = run_validation(config(setup, tmp_path, features_dir=str(selection_features),
                                       **{**SELECTION, "num_heads": fold["K"], "alpha": fold["alpha"]}),
                                progress=False, log=lambda _: None)["folds"][fold["fold"]]
        assert single["heads"] == fold["heads"] and single["results"] == fold["results"]


def test_summary_holds_intervals_categories_and_provenance(setup, selection_run):
    from iti.statistics import intervals

    with open(selection_run["json_path"]) as handle:
        record = json.load(handle)
    answers = pd.concat([pd.read_csv(f["files"]["answers"]) for f in record["folds"]], ignore_index=True)
    expected = intervals({"MC2": answers[f"{MODEL} MC2"].to_numpy()})["MC2"]
    assert record["bootstrap"]["intervals"]["MC2"] == pytest.approx(expected.as_dict())
    assert record["bootstrap"]["resamples"] == 1000 and record["bootstrap"]["level"] == 0.95
    by_category = answers.groupby("Category")[f"{MODEL} MC2"].agg(["mean", "size"])
    assert {c: v["questions"] for c, v in record["categories"].items()} == \
        {c: row["size"] for c, row in by_category.iterrows()}
    assert {c: v["MC2"] for c, v in record["categories"].items()} == pytest.approx(
        {c: row["mean"] for c, row in by_category.iterrows()})
    provenance = record["provenance"]
    assert provenance["config"]["num_heads"] == [2, 4] and provenance["device"].startswith("cpu")
    assert len(provenance["features_sha256"]) == 6 and set(provenance["git"]) == {"commit", "dirty"}


def test_choice_never_reads_a_test_question(setup, selection_features, selection_run, tmp_path, monkeypatch):
    """Poison fold 0's test questions in both feature sets: fold 0's selection table and choice stay exactly the
    same (fold 1 trains on those questions, so it may move). Control: poisoning the questions that build fold
    0's scored shifts does move the table, so the check can fail."""
    from iti.evaluation import Evaluator
    from iti.fitting import Split
    from iti.selection import selection_split

    clean = selection_run["folds"][0]
    poisoned = poisoned_copy(setup, selection_features, tmp_path / "poisoned", clean["test"])
    evaluated = []
    real = Evaluator.evaluate_groups

    def recording(self, groups, *args, **kwargs):
        evaluated.extend((len(settings), [r.question for r in records]) for settings, records in groups)
        return real(self, groups, *args, **kwargs)

    monkeypatch.setattr(Evaluator, "evaluate_groups", recording)
    again = run_validation(config(setup, tmp_path / "results", features_dir=str(poisoned), **SELECTION),
                           progress=False, log=lambda _: None)["folds"][0]
    assert again["selection"]["table"] == clean["selection"]["table"]
    assert (again["K"], again["alpha"]) == (clean["K"], clean["alpha"])
    questions = setup_records(setup)
    split = Split(np.array(clean["train"]), np.array(clean["val"]), fold=0)
    inner, selecting = selection_split(split, 0.25, 0.5, 42)
    scored, test = [questions[q].question for q in selecting], [questions[q].question for q in clean["test"]]
    # Five settings on the set-aside questions in one call (α = 0 is the unshifted model, scored once), then the
    # chosen setting on the test fold.
    assert evaluated[:2] == [(5, scored), (1, test)]

    control = poisoned_copy(setup, selection_features, tmp_path / "control", inner.train)
    moved = run_validation(config(setup, tmp_path / "control_results", features_dir=str(control), **SELECTION),
                           progress=False, log=lambda _: None)["folds"][0]
    assert moved["selection"]["table"] != clean["selection"]["table"]


@pytest.mark.parametrize("overrides, message", [
    (dict(SELECTION, select_metric="true*info"), "--select_metric true*info needs --metrics info judge"),
    (dict(SELECTION, max_kl=0.5), "--max_kl 0.5 needs KL: add kl to --metrics"),
    ({"sigma_questions": "dev", "activations_dataset": "nq_open"}, "--sigma_questions dev needs a TruthfulQA"),
])
def test_selection_bad_input(setup, tmp_path, overrides, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        run_validation(config(setup, tmp_path, **overrides), progress=False, log=lambda _: None)
