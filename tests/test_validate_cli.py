"""validate_2fold end to end on a tiny model (every metric: tiny judges, a small OWT file), the
α = 0 MC2 against one forward per answer, a run killed midway, and bad input."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from iti.errors import UsageError
from iti.head_shifts import HeadShifts
from iti.probes import all_fold_splits
from iti.prompts import question_prompt
from iti.validate import ValidationConfig, run_validation
from tests.conftest import REPO_ROOT, make_tiny_model
from tests.test_mc import reference_score

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
        save_features(model, tokenizer, build_prompt_set(dataset, tqa_path, limit=6), features, MODEL, progress=False)
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

    name = f"{MODEL}_seed_42_top_4_heads_alpha_5_limit_6"
    splits = all_fold_splits(6, 2, 0.2, 42)
    fold_means = []
    for fold, (train, val, test) in enumerate(splits):
        for part, questions in (("train", train), ("val", val), ("test", test)):
            split = pd.read_csv(tmp_path / "splits" / f"fold_{fold}_{part}_seed_42_limit_6.csv")
            assert split["Question"].tolist() == [setup_records(setup)[i].question for i in questions]
        answers = pd.read_csv(tmp_path / "results_dump" / "answer_dump" / f"{name}_fold_{fold}_com.csv")
        test_questions = pd.read_csv(tmp_path / "splits" / f"fold_{fold}_test_seed_42_limit_6.csv")["Question"]
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
        summary = pd.read_csv(tmp_path / "results_dump" / "summary_dump" / f"{name}_fold_{fold}_com.csv").iloc[0]
        assert summary["MC2"] == pytest.approx(answers[f"{MODEL} MC2"].mean())
        assert summary["GPT-judge acc"] == pytest.approx(answers[f"{MODEL} GPT-judge acc"].mean())
        assert summary["CE Loss"] > 0 and summary["KL wrt Orig"] > 0
        fold_means.append(summary)
        shifts = HeadShifts.load(tmp_path / "results_dump" / "head_shifts_dump" / f"{name}_fold_{fold}_com")
        assert shifts.k == 4 and shifts.alpha == 5.0 and shifts.provenance["fold"] == fold
    for key, column in (("MC1", "MC1"), ("MC2", "MC2"), ("True", "GPT-judge acc"), ("Info", "GPT-info acc"),
                        ("CE", "CE Loss"), ("KL", "KL wrt Orig")):
        # The printed line is rounded to 4 decimals.
        assert line[key] == pytest.approx(np.mean([s[column] for s in fold_means]), abs=5e-5)
    assert line["TI"] == pytest.approx(line["True"] * line["Info"], abs=2e-4)

    record = json.loads((tmp_path / "results_dump" / "summary_dump" / f"{name}_com.json").read_text())
    assert record["complete"] and len(record["folds"]) == 2
    assert record["config"]["judge_model"] == judge and record["config"]["info_model"] == judge
    assert record["config"]["metrics"] == ["mc", "judge", "info", "ce", "kl"]
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
    name = f"{MODEL}_seed_42_top_4_heads_alpha_0_limit_4"
    for fold in range(2):
        answers = pd.read_csv(tmp_path / "results_dump" / "answer_dump" / f"{name}_fold_{fold}_com.csv")
        for _, row in answers.iterrows():
            prompt = question_prompt(row["Question"])

            def score(joined):
                return [reference_score(model, tokenizer, prompt, a if a.endswith(".") else a + ".", {})
                        for a in (part.strip() for part in joined.split(";")) if a]

            true, false = np.exp(score(row["Correct Answers"])), np.exp(score(row["Incorrect Answers"]))
            assert row[f"{MODEL} MC2"] == pytest.approx(true.sum() / (true.sum() + false.sum()), abs=1e-5)


def test_killed_run_leaves_earlier_folds_whole(setup, tmp_path, monkeypatch):
    import iti.validate as validate

    real = validate.evaluate_fold
    calls = []

    def dies_in_second_fold(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(validate, "evaluate_fold", dies_in_second_fold)
    with pytest.raises(KeyboardInterrupt):
        run_validation(config(setup, tmp_path, num_heads=0, limit=4), progress=False, log=lambda _: None)
    name = f"{MODEL}_seed_42_top_0_heads_alpha_5_limit_4"
    dump = tmp_path / "results_dump"
    assert len(pd.read_csv(dump / "answer_dump" / f"{name}_fold_0_com.csv")) == 2
    assert not (dump / "answer_dump" / f"{name}_fold_1_com.csv").exists()
    record = json.loads((dump / "summary_dump" / f"{name}_com.json").read_text())
    assert not record["complete"] and len(record["folds"]) == 1
    assert not list(tmp_path.rglob("*.tmp"))

    # The same settings again: the finished fold is kept, only the second one runs.
    calls.clear()
    monkeypatch.setattr(validate, "evaluate_fold", lambda *a, **k: calls.append(1) or real(*a, **k))
    resumed = run_validation(config(setup, tmp_path, num_heads=0, limit=4), progress=False, log=lambda _: None)
    assert len(calls) == 1 and resumed["complete"] and resumed["folds"][0] == record["folds"][0]
    # --resume accepts other execution settings, refuses other results settings; without it those recompute.
    calls.clear()
    run_validation(config(setup, tmp_path, num_heads=0, limit=4, batch_size=2, resume=True), progress=False,
                   log=lambda _: None)
    assert calls == []
    with pytest.raises(UsageError, match=r"--resume: the run in .* used other settings \(max_new_tokens\)"):
        run_validation(config(setup, tmp_path, num_heads=0, limit=4, max_new_tokens=7, resume=True),
                       progress=False, log=lambda _: None)
    run_validation(config(setup, tmp_path, num_heads=0, limit=4, max_new_tokens=7), progress=False,
                   log=lambda _: None)
    assert len(calls) == 2
    with pytest.raises(UsageError, match="--resume: no earlier run of these settings"):
        run_validation(config(setup, tmp_path, num_heads=0, limit=4, seed=7, resume=True), progress=False,
                       log=lambda _: None)


def test_baseline_needs_no_features(setup, tmp_path):
    record = run_validation(config(setup, tmp_path, num_heads=0, limit=4, features_dir=str(tmp_path / "none")),
                            progress=False, log=lambda _: None)
    assert record["complete"] and record["folds"][0]["heads"] == [] and not record["resolved"]["intervenes"]
    assert 0 < record["final"]["MC2"] < 1 and math.isnan(record["final"]["True*Info"])


@pytest.mark.parametrize("overrides, message", [
    ({"metrics": ("mc", "bleu")}, "unknown metric bleu"),
    ({"limit": 1}, "--limit 1 leaves fewer questions than the 2 folds"),
    ({"metrics": ("judge",), "judge_model": "/no/such/judge"}, "--judge_model /no/such/judge does not exist"),
    ({"metrics": ("info",), "info_model": "./missing_info"}, "--info_model ./missing_info does not exist"),
    ({"metrics": ("ce",), "owt_path": "/no/such/owt.txt"}, "--owt_path /no/such/owt.txt does not exist"),
    ({"use_random_dir": True}, "exclude each other"),
    ({"dataset_name": "nq_open"}, "cannot train probes on TruthfulQA folds"),
    ({"limit": 8}, "cover 6 questions, fewer than --limit 8"),
    ({"instruction_prompt": "chatty"}, "unknown --instruction_prompt"),
    ({"split_rng": "public", "use_random_dir": True, "use_center_of_mass": False},
     "--split_rng public cannot follow the public stream"),
])
def test_bad_input(setup, tmp_path, overrides, message):
    with pytest.raises(UsageError, match=re.escape(message)):
        run_validation(config(setup, tmp_path, **overrides), progress=False, log=lambda _: None)
    assert not (tmp_path / "results_dump").exists()


def test_features_of_another_model(setup, tmp_path):
    """Features whose width is not this model's layers x heads x head_dim are refused by name."""
    other = tmp_path / "features"
    other.mkdir()
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        labels = np.load(setup["features"] / f"{MODEL}_{dataset}_labels.npy")
        ids = np.load(setup["features"] / f"{MODEL}_{dataset}_question_ids.npy")
        np.save(other / f"{MODEL}_{dataset}_head_wise.npy", np.zeros((len(labels), 3, 48), dtype=np.float32))
        np.save(other / f"{MODEL}_{dataset}_labels.npy", labels)
        np.save(other / f"{MODEL}_{dataset}_question_ids.npy", ids)
    with pytest.raises(UsageError, match=r"per-row shape \(3, 48\) but the model has 3 layers x 80 .*another model"):
        run_validation(config(setup, tmp_path, features_dir=str(other)), progress=False, log=lambda _: None)


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
    tuning = np.load(setup["features"] / f"{MODEL}_tqa_gen_end_q_head_wise.npy")
    question_ids = np.load(setup["features"] / f"{MODEL}_tqa_gen_end_q_question_ids.npy")
    assert question_ids.max() == 5  # extracted for 6 questions: trimming has rows to drop
    shifts = HeadShifts.load(record["folds"][0]["files"]["head_shifts"])
    d = shifts.head_dim
    for layer, head, direction, sigma in zip(shifts.layers, shifts.heads, shifts.directions, shifts.sigmas):
        block = tuning[:, layer, head * d:(head + 1) * d].astype(np.float64)
        assert sigma == pytest.approx(np.std(block[question_ids < 4] @ direction), rel=1e-6)


def test_run_names_differ_whenever_the_numbers_can():
    from iti.validate import run_name

    plain = ValidationConfig(model_name=MODEL, limit=6)
    assert run_name(plain) == f"{MODEL}_seed_42_top_48_heads_alpha_15_limit_6"  # the public layout
    variants = [ValidationConfig(model_name=MODEL, limit=6, **change) for change in (
        {"val_ratio": 0.3}, {"num_fold": 3}, {"split_rng": "public"}, {"probe_backend": "sklearn"},
        {"instruction_prompt": "none"}, {"dataset_name": "tqa_gen"}, {"activations_dataset": "tqa_gen"},
        {"val_ratio": 0.3, "num_fold": 3})]
    names = [run_name(cfg) for cfg in [plain, *variants]]
    assert len(set(names)) == len(names)
    assert all(name.startswith(f"{MODEL}_seed_42_top_48_heads_alpha_15_limit_6_") for name in names[1:])


def test_public_split_stream_run(setup, tmp_path):
    record = run_validation(config(setup, tmp_path, split_rng="public", num_heads=0), progress=False,
                            log=lambda _: None)
    public = all_fold_splits(6, 2, 0.2, 42, split_rng="public")
    assert [f["train"] for f in record["folds"]] == [s[0].tolist() for s in public]
    split_file = record["folds"][1]["files"]["splits"]["train"]
    assert split_file.endswith(".csv") and "_limit_6_" in split_file  # beside, not over, the default run's files
    assert pd.read_csv(split_file)["Question"].tolist() == [setup_records(setup)[q].question for q in public[1][0]]


# ----------------------------------------------------------------------------- any contrastive dataset (spec §9)

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
    from iti.activations import load_features

    features = tqa_as_jsonl["features"]
    for kind in ("head_wise", "layer_wise"):
        builtin, labels, ids = load_features(features, MODEL, "tqa_gen", kind)
        custom, custom_labels, custom_ids = load_features(features, MODEL, "tqa6", kind)
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
    from tests.test_mc import reference_score

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
        deltas = {layer: torch.as_tensor(offset)
                  for layer, offset in HeadShifts.load(fold["files"]["head_shifts"]).layer_offsets().items()}
        answers = pd.read_csv(fold["files"]["answers"])
        for _, row in answers.iterrows():
            question, correct, incorrect = next(item for item in FRESH_ITEMS if item[0] == row["Question"])
            true = [reference_score(model, tokenizer, f"Q: {question}", a, deltas) for a in correct]
            false = [reference_score(model, tokenizer, f"Q: {question}", a, deltas) for a in incorrect]
            assert row[f"{MODEL} MC1"] == float(true[0] > max(false))
            mass = np.exp(true).sum() / (np.exp(true).sum() + np.exp(false).sum())
            assert row[f"{MODEL} MC2"] == pytest.approx(mass, abs=1e-5)


@pytest.mark.parametrize("lines, extra, message", [
    (FRESH_ITEMS[:1], [], "has 1 items, fewer than the 2"),
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

SELECTION = dict(num_heads=(2, 4), alpha=(0.0, 5.0, 60.0), val_ratio=0.5, sigma_questions="dev")


def copy_features(source, folder, transform=lambda dataset, acts, labels, ids: (acts, labels)):
    folder.mkdir()
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        acts, labels, ids = (np.load(source / f"{MODEL}_{dataset}_{kind}.npy")
                             for kind in ("head_wise", "labels", "question_ids"))
        acts, labels = transform(dataset, acts, labels, ids)
        for kind, array in (("head_wise", acts), ("labels", labels), ("question_ids", ids)):
            np.save(folder / f"{MODEL}_{dataset}_{kind}.npy", array)
    return folder


def poisoned_copy(setup, source, folder, questions):
    """Features with every row of `questions` (MC order) replaced by large noise and flipped labels."""
    from iti.data import load_truthfulqa
    from iti.validate import mc_order_ids

    tqa = load_truthfulqa(setup["tqa_path"])
    rng = np.random.default_rng(0)

    def poison(dataset, acts, labels, ids):
        rows = np.isin(mc_order_ids(ids, dataset, tqa), questions)
        assert rows.any()
        acts[rows] = rng.standard_normal(acts[rows].shape).astype(acts.dtype) * 100
        labels[rows] = 1 - labels[rows]
        return acts, labels

    return copy_features(source, folder, poison)


@pytest.fixture(scope="module")
def selection_features(setup, tmp_path_factory):
    """The setup's probing features and a tuning set that holds rows of the first 12 MC-order questions
    (the setup's own tuning rows are of the first 6 generation-order questions, which --sigma_questions
    dev cannot use with MC-order folds of 6 questions)."""
    from iti.data import load_truthfulqa

    tqa = load_truthfulqa(setup["tqa_path"])
    mc_index = {q.question.strip(): i for i, q in enumerate(tqa.multiple_choice)}
    generation_ids = [g for g, q in enumerate(tqa.generation) if mc_index.get(q.question.strip(), -1) < 12]
    rng = np.random.default_rng(1)
    width = np.load(setup["features"] / f"{MODEL}_tqa_mc2_head_wise.npy").shape[1:]
    folder = copy_features(setup["features"], tmp_path_factory.mktemp("selection_features") / "f")
    ids = np.repeat(generation_ids, 3)
    np.save(folder / f"{MODEL}_tqa_gen_end_q_head_wise.npy", rng.standard_normal((len(ids), *width)).astype(np.float32))
    np.save(folder / f"{MODEL}_tqa_gen_end_q_labels.npy", np.tile([1, 0, 0], len(generation_ids)))
    np.save(folder / f"{MODEL}_tqa_gen_end_q_question_ids.npy", ids)
    return folder


@pytest.fixture(scope="module")
def selection_run(setup, selection_features, tmp_path_factory):
    results = tmp_path_factory.mktemp("selection")
    return run_validation(config(setup, results, features_dir=str(selection_features), **SELECTION), progress=False,
                          log=lambda _: None)


def test_each_fold_chooses_on_its_validation_questions(setup, selection_run):
    record = selection_run
    for fold in record["folds"]:
        table = fold["selection"]["table"]
        assert [(row["K"], row["alpha"]) for row in table] == [(k, a) for k in (2, 4) for a in (0.0, 5.0, 60.0)]
        assert fold["selection"]["questions"] == len(fold["val"])
        best = max(row["MC2"] for row in table)
        weakest_best = min((row["alpha"], row["K"]) for row in table if row["MC2"] == best)
        assert (fold["alpha"], fold["K"]) == weakest_best and fold["selection"]["chosen"]["MC2"] == best
        answers = pd.read_csv(fold["files"]["answers"])
        assert answers["Question"].tolist() == [setup_records(setup)[q].question for q in fold["test"]]
        assert fold["results"]["MC2"] == pytest.approx(answers[f"{MODEL} MC2"].mean())
    assert len({row["MC2"] for fold in record["folds"] for row in fold["selection"]["table"]}) > 1
    alphas = "/".join(f"{f['alpha']:g}" for f in record["folds"])
    assert record["final_line"].startswith(f"alpha: {alphas}, heads: ")
    assert "_top_2-4_heads_alpha_0-5-60_limit_6_" in record["json_path"]


def test_summary_holds_intervals_categories_and_provenance(setup, selection_run):
    from iti.statistics import intervals

    with open(selection_run["json_path"]) as handle:
        record = json.load(handle)
    answers = pd.concat([pd.read_csv(f["files"]["answers"]) for f in record["folds"]], ignore_index=True)
    expected = intervals({"MC2": answers[f"{MODEL} MC2"].to_numpy()})["MC2"]
    assert record["bootstrap"]["intervals"]["MC2"] == pytest.approx(expected.as_dict())
    assert record["bootstrap"]["resamples"] == 1000 and record["bootstrap"]["level"] == 0.95
    by_category = answers.groupby("Category")[f"{MODEL} MC2"].agg(["mean", "size"])
    assert {c: (v["MC2"], v["questions"]) for c, v in record["categories"].items()} == pytest.approx(
        {c: (row["mean"], row["size"]) for c, row in by_category.iterrows()})
    provenance = record["provenance"]
    assert provenance["config"]["num_heads"] == [2, 4] and provenance["device"].startswith("cpu")
    assert len(provenance["features_sha256"]) == 6 and set(provenance["git"]) == {"commit", "dirty"}


def test_choice_never_reads_a_test_question(setup, selection_features, selection_run, tmp_path, monkeypatch):
    """Poison fold 0's test questions in both feature sets: fold 0's validation table and choice stay
    exactly the same (fold 1 trains on those questions, so it may move). Control: poisoning fold 0's
    validation questions instead does move the table, so the check can fail."""
    import iti.validate as validate

    clean = selection_run["folds"][0]
    poisoned = poisoned_copy(setup, selection_features, tmp_path / "poisoned", clean["test"])
    evaluated = []
    real = validate.evaluate_fold

    def recording(shifted, tokenizer, records, *args, **kwargs):
        evaluated.append([r.question for r in records])
        return real(shifted, tokenizer, records, *args, **kwargs)

    monkeypatch.setattr(validate, "evaluate_fold", recording)
    again = run_validation(config(setup, tmp_path / "results", features_dir=str(poisoned), **SELECTION),
                           progress=False, log=lambda _: None)["folds"][0]
    assert again["selection"]["table"] == clean["selection"]["table"]
    assert (again["K"], again["alpha"]) == (clean["K"], clean["alpha"])
    questions = setup_records(setup)
    val, test = [questions[q].question for q in clean["val"]], [questions[q].question for q in clean["test"]]
    assert evaluated[:7] == [val] * 6 + [test]  # six settings on the validation questions, then the test fold

    control = poisoned_copy(setup, selection_features, tmp_path / "control", clean["val"])
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
