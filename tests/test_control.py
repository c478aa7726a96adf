"""The random-direction control and the chance levels (docs/method.md §11): the control's directions (seeded, blind
to the labels, unit length) and σ along them against a hand computation; chance levels against every ranking; a
planted length preference that any large shift turns into MC2, which the control catches; a selection run with the
control end to end, its resume, and runs without it keeping their names."""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from iti.config import ValidationConfig
from iti.control import chance_levels, control_differences, control_settings, control_shifts
from iti.errors import UsageError
from iti.fitting import Features, Recipe, Split, fit_head_shifts
from iti.items import GenerationQuestion
from iti.metrics import mc1, mc2, mc3
from iti.mc import MCResult
from iti.runs import ControlFold, FoldEntry, FoldFiles, Run
from iti.validate import run_validation
from tests.conftest import REPO_ROOT
from tests.test_validate_cli import MODEL, SELECTION, config, selection_features, setup  # noqa: F401 (fixtures)

NUM_LAYERS, NUM_HEADS, HEAD_DIM = 2, 4, 6


def synthetic_features(seed: int = 0, labels: np.ndarray | None = None) -> Features:
    """60 questions of two rows (true, false); head (0, 1) tells the labels apart. The tuning rows are another
    draw, with each question's rows, and a spread that differs per coordinate (so σ depends on the direction)."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(60), 2)
    labels = np.tile([1, 0], 60) if labels is None else labels
    acts = rng.standard_normal((len(ids), NUM_LAYERS, NUM_HEADS * HEAD_DIM)).astype(np.float32)
    acts[:, 0, HEAD_DIM:2 * HEAD_DIM] += np.where(labels == 1, 2.0, -2.0)[:, None]
    spread = np.linspace(0.5, 3.0, NUM_HEADS * HEAD_DIM)
    tuning = (rng.standard_normal((len(ids), NUM_LAYERS, NUM_HEADS * HEAD_DIM)) * spread).astype(np.float32)
    return Features(acts, labels, ids, tuning, ids, NUM_HEADS)


SPLIT = Split(np.arange(0, 30), np.arange(30, 45), np.arange(45, 60), fold=1)


def iti_shifts(features: Features, k: int = 3, alpha: float = 4.0):
    return fit_head_shifts(features, SPLIT, Recipe(k, alpha, "center_of_mass"), progress=False)[0]


def test_control_directions_are_seeded_unit_and_blind_to_the_labels():
    features = synthetic_features()
    shifts = iti_shifts(features)
    control = control_shifts(shifts, features, SPLIT, seed=42)
    assert control.head_list() == shifts.head_list() and control.alpha == shifts.alpha
    np.testing.assert_allclose(np.linalg.norm(control.directions.astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert not np.allclose(np.abs(control.directions), np.abs(shifts.directions), atol=0.1)
    again = control_shifts(shifts, features, SPLIT, seed=42)
    np.testing.assert_array_equal(again.directions, control.directions)
    np.testing.assert_array_equal(again.sigmas, control.sigmas)
    other_seed = control_shifts(shifts, features, SPLIT, seed=43)
    other_fold = control_shifts(shifts, features, dataclasses.replace(SPLIT, fold=0), seed=42)
    for other in (other_seed, other_fold):
        assert np.abs(other.directions - control.directions).max() > 0.1
    # Shuffled labels move ITI's own directions, not the control's at the same heads.
    shuffled = synthetic_features(labels=np.random.default_rng(5).permutation(features.labels))
    blind = control_shifts(shifts, shuffled, SPLIT, seed=42)
    np.testing.assert_array_equal(blind.directions, control.directions)
    np.testing.assert_array_equal(blind.sigmas, control.sigmas)
    # A head's direction does not depend on K: the control at K 1 is the first head of the control at K 3.
    first = control_shifts(iti_shifts(features, k=1), features, SPLIT, seed=42)
    assert first.head_list() == shifts.head_list()[:1]
    np.testing.assert_array_equal(first.directions[0], control.directions[0])


@pytest.mark.parametrize("sigma_questions", [None, np.arange(0, 45)])
def test_sigma_along_the_control_directions_by_hand(sigma_questions):
    """σ: the population standard deviation of the tuning rows of the questions that set ITI's σ (all of them, or
    the fold's development questions) projected on each random direction, one row at a time here."""
    features = synthetic_features()
    split = dataclasses.replace(SPLIT, sigma=sigma_questions)
    [control] = control_settings([iti_shifts(features).scaled(2.0)], features, split, seed=7)
    draw = np.random.default_rng([7, 2, split.fold]).standard_normal((NUM_LAYERS, NUM_HEADS, HEAD_DIM))
    rows = [r for r in range(len(features.tuning_acts))
            if sigma_questions is None or features.tuning_question_ids[r] in set(sigma_questions.tolist())]
    for (layer, head), direction, sigma in zip(control.head_list(), control.directions, control.sigmas):
        expected = draw[layer, head] / np.sqrt(sum(x * x for x in draw[layer, head]))
        np.testing.assert_allclose(direction, expected, rtol=1e-6)
        projections = [sum(float(a) * float(b) for a, b in zip(
            features.tuning_acts[r, layer, head * HEAD_DIM:(head + 1) * HEAD_DIM], expected)) for r in rows]
        mean = sum(projections) / len(projections)
        assert sigma == pytest.approx(np.sqrt(sum((p - mean) ** 2 for p in projections) / len(projections)),
                                      rel=1e-5)
    assert control.alpha == 2.0


def test_control_settings_keep_the_unshifted_and_share_sigma_per_heads():
    features = synthetic_features()
    unit = iti_shifts(features, alpha=1.0)
    controls = control_settings([None, unit.scaled(2.0), unit.scaled(5.0)], features, SPLIT, seed=1)
    assert controls[0] is None and [c.alpha for c in controls[1:]] == [2.0, 5.0]
    np.testing.assert_array_equal(controls[1].directions, controls[2].directions)
    np.testing.assert_array_equal(controls[1].sigmas, controls[2].sigmas)


def question(true: int, false: int) -> GenerationQuestion:
    return GenerationQuestion(f"Q {true} {false}?", "c", "t0.", [f"t{i}." for i in range(true)],
                              [f"f{i}." for i in range(false)])


def test_chance_levels_against_every_ranking():
    """MC1 and MC3 averaged over every order of a question's answers (distinct scores, all orders equally likely),
    MC2 of equal scores: what chance_levels gives in closed form."""
    questions = [question(1, 1), question(2, 3), question(3, 2), question(1, 4)]
    brute = {"MC1": [], "MC2": [], "MC3": []}
    for q in questions:
        answers = len(q.correct_answers) + len(q.incorrect_answers)
        per_order = []
        for order in itertools.permutations(range(answers)):
            scores = [float(-rank) for rank in order]
            true, false = scores[:len(q.correct_answers)], scores[len(q.correct_answers):]
            result = MCResult(true, false, scores[0], [1] * len(true), [1] * len(false))
            per_order.append((mc1(result), mc3(result)))
        brute["MC1"].append(np.mean([m1 for m1, _ in per_order]))
        brute["MC3"].append(np.mean([m3 for _, m3 in per_order]))
        ones = ([1] * len(q.correct_answers), [1] * len(q.incorrect_answers))
        brute["MC2"].append(mc2(MCResult([0.0] * len(q.correct_answers), [0.0] * len(q.incorrect_answers), 0.0,
                                         *ones)))
    chance = chance_levels(questions)
    assert chance == pytest.approx({name: np.mean(values) for name, values in brute.items()}, rel=1e-12)


def test_chance_levels_of_truthfulqa(tqa):
    """The spec's TruthfulQA figures (MC1 0.226, MC2 0.448 from the MC task's targets), on the answers as scored."""
    chance = chance_levels(tqa.generation_in_mc_order())
    assert chance["MC1"] == pytest.approx(0.226, abs=5e-4) and chance["MC2"] == pytest.approx(0.448, abs=1e-3)


def planted_scores(questions: list[tuple[list[int], list[int]]], shifts, truth: float, seed: int) -> pd.DataFrame:
    """A stand-in model's MC scores: an answer's log-probability is −0.2 nats per character, plus noise; any shift
    of size α·σ above 1 adds 0.15 nats per character (a length preference, whatever the direction) and `truth`
    nats to every true answer."""
    rng = np.random.default_rng(seed)
    rows = []
    for true_lengths, false_lengths in questions:
        lengths = np.array(true_lengths + false_lengths, dtype=float)
        scores = -0.2 * lengths + rng.normal(0, 0.5, len(lengths))
        if shifts is not None and shifts.alpha * shifts.sigmas.mean() > 1:
            scores += 0.15 * lengths + truth * (np.arange(len(lengths)) < len(true_lengths))
        result = MCResult(list(scores[:len(true_lengths)]), list(scores[len(true_lengths):]), scores[0],
                          true_lengths, false_lengths)
        rows.append({"Category": "c", "Question": f"Q{len(rows)}", f"{MODEL} MC1": mc1(result),
                     f"{MODEL} MC2": mc2(result), f"{MODEL} MC3": mc3(result)})
    return pd.DataFrame(rows)


def test_a_planted_length_preference_is_caught_by_the_control(tmp_path):
    """True answers are longer; any large shift favours long answers. ITI's MC2 gain over the unshifted model is
    beyond the spread of questions, and so is the control's: ITI − control's interval holds 0. With a truth effect
    added to ITI alone, ITI − control's interval excludes 0 (the check can fail)."""
    rng = np.random.default_rng(0)
    questions = [(list(rng.integers(30, 60, 2)), list(rng.integers(10, 40, 3))) for _ in range(120)]
    features = synthetic_features()
    iti = iti_shifts(features, alpha=5.0)
    [control] = control_settings([iti], features, SPLIT, seed=42)
    assert min(iti.alpha * iti.sigmas.mean(), control.alpha * control.sigmas.mean()) > 1

    def differences(truth: float, against) -> dict:
        folds = []
        for fold, part in enumerate((questions[:60], questions[60:])):
            paths = {}
            for name, shifts, extra in (("iti", iti, truth), ("against", against, 0.0)):
                paths[name] = tmp_path / f"{name}_{fold}_{truth}.csv"
                planted_scores(part, shifts, extra, seed=fold * 10 + (name == "iti")).to_csv(paths[name], index=False)
            files = FoldFiles(answers=str(paths["iti"]), control_answers=str(paths["against"]),
                              sha256={str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths.values()})
            means = pd.read_csv(paths["against"]).mean(numeric_only=True)
            results = {m: float(means[f"{MODEL} {m}"]) for m in ("MC1", "MC2", "MC3")}
            folds.append(FoldEntry(fold=fold, test=list(range(60)), results=results, files=files,
                                   control=ControlFold(method="random_direction", K=3, alpha=5.0, heads=[],
                                                       results=results)))
        answers = pd.concat([pd.read_csv(f.files.answers) for f in folds], ignore_index=True)
        return control_differences(answers, folds, MODEL, log=lambda _: None)

    unscored = tmp_path / "unscored.csv"  # a run of CE and KL alone: no score per question to pair
    pd.DataFrame({"Category": ["c"], "Question": ["Q0"]}).to_csv(unscored, index=False)
    ce_kl_only = FoldEntry(fold=0, test=[0], results={"KL": 0.1}, files=FoldFiles(answers=str(unscored),
                                                                                  control_answers=str(unscored)),
                           control=ControlFold(method="random_direction", K=3, alpha=5.0, heads=[],
                                               results={"KL": 0.2}))
    assert control_differences(pd.read_csv(unscored), [ce_kl_only], MODEL, log=print) == {}
    over_unshifted = differences(0.0, None)["MC2"]
    assert over_unshifted["low"] > 0
    caught = differences(0.0, control)["MC2"]
    assert caught["low"] <= 0 <= caught["high"]
    assert differences(2.0, control)["MC2"]["low"] > 0


def test_runs_without_the_control_keep_their_names():
    """The committed records, those made before --control existed among them, resolve to the names they carry."""
    paths = sorted(glob.glob(str(REPO_ROOT / "results" / "*" / "results_dump" / "summary_dump" / "*.json")))
    records = [json.loads(Path(path).read_text()) for path in paths]
    assert any("control" not in record["config"] for record in records)
    fields = {f.name for f in dataclasses.fields(ValidationConfig)}
    for path, record in zip(paths, records):
        cfg = ValidationConfig(**{key: tuple(value) if isinstance(value, list) else value
                                  for key, value in record["config"].items() if key in fields})
        assert Run.resolve(cfg, record["identity"]).name == record["name"], path
    base = ValidationConfig(limit=8)
    assert Run.resolve(dataclasses.replace(base, control="random_direction"), {}).name != Run.resolve(base, {}).name


def test_a_control_needs_a_shift(setup, tmp_path):
    with pytest.raises(UsageError, match=re.escape("--control random_direction compares the shifts with random "
                                                   "ones, but no setting shifts anything")):
        run_validation(config(setup, tmp_path, num_heads=0, control="random_direction"), progress=False,
                       log=lambda _: None)


@pytest.fixture(scope="module")
def control_run(setup, selection_features, tmp_path_factory):
    """The test_validate_cli selection run with --control random_direction: its record, the questions and number of
    settings of each group of questions evaluated, and its log lines."""
    from iti.evaluation import Evaluator

    evaluated, lines = [], []
    real = Evaluator.evaluate_groups

    def recording(self, groups, *args, **kwargs):
        evaluated.extend((len(settings), [r.question for r in records]) for settings, records in groups)
        return real(self, groups, *args, **kwargs)

    cfg = config(setup, tmp_path_factory.mktemp("control"), features_dir=str(selection_features),
                 control="random_direction", **SELECTION)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Evaluator, "evaluate_groups", recording)
        record = run_validation(cfg, progress=False, log=lines.append)
    return cfg, record, evaluated, lines


def test_the_control_chooses_among_the_same_settings_on_the_same_questions(setup, control_run):
    from iti.fitting import Split
    from iti.selection import choose_setting, selection_split
    from tests.test_validate_cli import setup_records

    _, record, evaluated, _ = control_run
    questions = setup_records(setup)
    calls = iter(evaluated)
    for fold in record["folds"]:
        selection, control = fold["selection"], fold["control"]
        own = control["selection"]
        assert [(r["K"], r["alpha"]) for r in own["table"]] == [(r["K"], r["alpha"]) for r in selection["table"]]
        assert [r["MC2"] for r in own["table"]] != [r["MC2"] for r in selection["table"]]
        assert own["counts"] == selection["counts"] and own["metric"] == "MC2"
        assert own["chosen"] == choose_setting(own["table"], "MC2")[0]
        assert (control["K"], control["alpha"]) == (own["chosen"]["K"], own["chosen"]["alpha"])
        # The same ranked heads: the top K of the fold's ranking, of which ITI's are the top K too.
        shorter, longer = sorted((control["heads"], fold["heads"]), key=len)
        assert len(control["heads"]) == control["K"] and longer[:len(shorter)] == shorter
        # ITI's grid and the control's in one call on the set-aside questions (the unshifted model once), then
        # both choices in one call on the test questions (an unshifted one is computed once: evaluate_settings).
        split = Split(np.array(fold["train"]), np.array(fold["val"]), sigma=np.r_[fold["train"], fold["val"]],
                      fold=fold["fold"])
        _, selecting = selection_split(split, 0.25, 0.5, 42)
        shifted = sum(1 for row in selection["table"] if row["alpha"] != 0)
        assert next(calls) == (2 * shifted + 1, [questions[q].question for q in selecting])
        assert next(calls) == (2, [questions[q].question for q in fold["test"]])
        files = fold["files"]
        answers = pd.read_csv(files["control_answers"])
        assert answers["Question"].tolist() == [questions[q].question for q in fold["test"]]
        assert control["results"]["MC2"] == pytest.approx(answers[f"{MODEL} MC2"].mean())
        assert own["chosen_test"] == control["results"]["MC2"]
        assert files["sha256"][files["control_answers"]] == hashlib.sha256(
            Path(files["control_answers"]).read_bytes()).hexdigest()


def test_the_record_holds_iti_minus_control_and_chance(setup, control_run):
    """ITI − control: the mean of the per-question differences and its percentile interval over 1000 resamples of
    the pooled test questions (seed 0), by hand; the chance levels from the questions' answer counts."""
    from tests.test_validate_cli import setup_records

    _, record, _, lines = control_run
    iti, control = (pd.concat([pd.read_csv(f["files"][key]) for f in record["folds"]], ignore_index=True)
                    for key in ("answers", "control_answers"))
    for name in ("MC1", "MC2", "MC3"):
        gap = iti[f"{MODEL} {name}"].to_numpy() - control[f"{MODEL} {name}"].to_numpy()
        draws = np.random.default_rng(0).integers(0, len(gap), size=(1000, len(gap)))
        low, high = np.quantile(gap[draws].mean(axis=1), [0.025, 0.975])
        assert record["control"][name] == pytest.approx({"value": gap.mean(), "low": low, "high": high})
        shown = record["control"][name]
        assert f"ITI − control: {name} {shown['value']:+.4f} [{shown['low']:+.4f}, {shown['high']:+.4f}]" in lines
    questions = setup_records(setup)[:12]
    assert record["chance"] == pytest.approx({
        "MC1": np.mean([1 / (1 + len(q.incorrect_answers)) for q in questions]),
        "MC2": np.mean([len(q.correct_answers) / (len(q.correct_answers) + len(q.incorrect_answers))
                        for q in questions]),
        "MC3": np.mean([1 / (1 + len(q.incorrect_answers)) for q in questions])})
    assert any(line.startswith("chance (every answer equally likely): MC1 ") for line in lines)


def test_a_single_setting_control_is_that_setting_with_random_directions(setup, tmp_path):
    record = run_validation(config(setup, tmp_path, limit=4, control="random_direction"), progress=False,
                            log=lambda _: None)
    plain = run_validation(config(setup, tmp_path, limit=4), progress=False, log=lambda _: None)
    assert plain["control"] is None and plain["folds"][0]["control"] is None and plain["chance"] is not None
    assert record["name"] != plain["name"]
    for fold, alone in zip(record["folds"], plain["folds"]):
        control = fold["control"]
        assert control["selection"] is None and (control["K"], control["alpha"]) == (fold["K"], fold["alpha"])
        # ITI's numbers as without the control (its rows now share batches with the control's: float rounding).
        assert control["heads"] == fold["heads"]
        assert {k: v for k, v in fold["results"].items() if v is not None} == pytest.approx(
            {k: v for k, v in alone["results"].items() if v is not None}, rel=1e-5)
        mc2 = [pd.read_csv(fold["files"][key])[f"{MODEL} MC2"].tolist() for key in ("answers", "control_answers")]
        assert mc2[0] != mc2[1]


def test_resume_keeps_the_control_files_and_refuses_a_changed_one(control_run):
    cfg, record, _, _ = control_run
    written = {path: Path(path).read_bytes() for fold in record["folds"] for path in fold["files"]["sha256"]}
    lines = []
    again = run_validation(dataclasses.replace(cfg, resume=True), progress=False, log=lines.append)
    assert sum(line.startswith("Fold ") and "kept from" in line for line in lines) == 2
    assert again["folds"] == record["folds"] and again["control"] == record["control"]
    assert all(Path(path).read_bytes() == content for path, content in written.items())
    answers = Path(record["folds"][0]["files"]["control_answers"])
    whole = answers.read_bytes()
    answers.write_bytes(whole.replace(b",0.", b",1.", 1))
    try:
        with pytest.raises(UsageError, match=re.escape(f"fold 0's file {answers} is not the file that was written "
                                                       "there")):
            run_validation(cfg, progress=False, log=lambda _: None)
    finally:
        answers.write_bytes(whole)


def test_the_option_is_a_flag_with_help():
    from iti.cli import build_parser

    text = build_parser(ValidationConfig, "").format_help()
    assert "--control {none,random_direction}" in text
    assert ValidationConfig().control == "none"
