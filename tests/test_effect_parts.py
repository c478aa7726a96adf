"""The truth and length parts of a run's effect (iti.effect_parts): the coefficients against numpy's least squares
on answers demeaned by hand, the bootstrap against a loop over resampled answers, a planted effect recovered, MC's
token counts against a word tokenizer counted by hand, and a tiny validate_2fold run's files and record."""
import json
import re

import numpy as np
import pandas as pd
import pytest

from iti.effect_parts import ScoredAnswers, effect_parts, parts_of_frame
from tests.conftest import make_tiny_model, model_from_config, tiny_config, write_features

MODEL = "tiny"


def by_hand(answers: ScoredAnswers) -> tuple[np.ndarray, np.ndarray]:
    """(regressors [answers, 2]: token count, truth; change), each demeaned within its question by a loop."""
    x, d = np.zeros((len(answers.question), 2)), np.zeros(len(answers.question))
    change = answers.shifted - answers.unshifted
    for q in set(answers.question.tolist()):
        rows = [i for i, question in enumerate(answers.question) if question == q]
        for i in rows:
            x[i, 0] = answers.tokens[i] - sum(answers.tokens[j] for j in rows) / len(rows)
            x[i, 1] = answers.truth[i] - sum(answers.truth[j] for j in rows) / len(rows)
            d[i] = change[i] - sum(change[j] for j in rows) / len(rows)
    return x, d


def random_answers(questions: int, seed: int, change=None) -> ScoredAnswers:
    """Questions of 2 to 7 answers, at least one true and one false each; the change random unless given
    (a function of tokens, truth and question)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 8, questions)
    question = np.repeat(np.arange(questions), sizes)
    truth = np.concatenate([rng.permutation([1.0] + [0.0] + list(rng.integers(0, 2, n - 2).astype(float)))
                            for n in sizes])
    tokens = rng.integers(1, 40, len(question)).astype(float)
    unshifted = rng.normal(-20, 5, len(question))
    delta = rng.normal(0, 3, len(question)) if change is None else change(tokens, truth, question, rng)
    return ScoredAnswers(question, unshifted + delta, unshifted, tokens, truth)


def test_coefficients_equal_numpy_least_squares():
    answers = random_answers(9, seed=3)
    x, d = by_hand(answers)
    expected = np.linalg.lstsq(x, d, rcond=None)[0]
    parts = effect_parts(answers, resamples=10)
    assert [parts["length"]["coef"], parts["truth"]["coef"]] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert (parts["questions"], parts["answers"]) == (9, len(answers.question))


def test_a_question_wide_change_counts_for_nothing():
    """Adding a constant per question (and a shuffled question order) leaves the parts as they were."""
    answers = random_answers(12, seed=4)
    offsets = np.random.default_rng(0).normal(0, 50, 12)
    moved = ScoredAnswers(answers.question, answers.shifted + offsets[answers.question], answers.unshifted,
                          answers.tokens, answers.truth)
    base, again = effect_parts(answers, resamples=200), effect_parts(moved, resamples=200)
    for part in ("length", "truth"):
        assert again[part] == pytest.approx(base[part], rel=1e-9, abs=1e-9)


def test_bootstrap_equals_a_loop_over_resampled_answers():
    """Each resample's fit from weighted per-question sums equals the least squares fit of its drawn questions'
    answers, stacked (a question drawn twice counts twice), with the percentiles taken by numpy."""
    answers, resamples, seed = random_answers(15, seed=5), 40, 7
    x, d = by_hand(answers)
    draws = np.random.default_rng(seed).integers(0, 15, size=(resamples, 15))
    fits = []
    for draw in draws:
        rows = np.concatenate([np.flatnonzero(answers.question == q) for q in draw])
        fits.append(np.linalg.lstsq(x[rows], d[rows], rcond=None)[0])
    low, high = np.percentile(np.array(fits), [2.5, 97.5], axis=0)
    parts = effect_parts(answers, resamples=resamples, seed=seed)
    for i, part in enumerate(("length", "truth")):
        assert (parts[part]["low"], parts[part]["high"]) == pytest.approx((low[i], high[i]), rel=1e-9, abs=1e-12)


def test_planted_effect_is_recovered_inside_the_intervals():
    def planted(tokens, truth, question, rng):
        return 0.3 * tokens + 2.0 * truth + rng.normal(0, 1.0, len(tokens)) + 5.0 * question

    parts = effect_parts(random_answers(300, seed=6, change=planted))
    for part, value in (("length", 0.3), ("truth", 2.0)):
        assert parts[part]["low"] < value < parts[part]["high"]
        assert parts[part]["low"] > 0  # the planted effect is resolved from zero
    # A change of pure noise: both intervals hold 0.
    noise = effect_parts(random_answers(300, seed=6))
    assert all(noise[part]["low"] < 0 < noise[part]["high"] for part in ("length", "truth"))


def test_bootstrap_is_seeded():
    answers = random_answers(30, seed=8)
    first, again, other = effect_parts(answers, seed=1), effect_parts(answers, seed=1), effect_parts(answers, seed=2)
    assert first == again
    assert first["truth"]["coef"] == other["truth"]["coef"] and first["truth"]["low"] != other["truth"]["low"]


def test_frames_without_the_new_columns_have_no_parts():
    frame = pd.DataFrame({"tiny lprob scores-true": ["[-1.0]"], "tiny lprob scores-false": ["[-2.0, -3.0]"]})
    assert parts_of_frame(frame, "tiny") is None


def word_tokenizer(words: list[str]):
    """A fast tokenizer of whole words and runs of punctuation (whitespace dropped), with character offsets."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{word: i + 1 for i, word in enumerate(dict.fromkeys(words))}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[UNK]")


def test_mc_token_counts_equal_a_hand_count_of_words():
    """MC reports per answer the tokens it scored: with a word tokenizer, the answer's words and runs of
    punctuation (its period included), counted by a regular expression."""
    from iti.data import GenerationQuestion
    from iti.intervention import ShiftedModel
    from iti.mc import evaluate_mc
    from iti.prompts import Prompting

    record = GenerationQuestion("Is it raining?", "c", "Yes, it rains", ["Yes, it rains", "It is... wet outside"],
                                ["No", "Never ever, not once"])
    pieces = re.compile(r"\w+|[^\w\s]+")
    tokenizer = word_tokenizer(pieces.findall(" ".join(record.correct_answers + record.incorrect_answers)))
    model = model_from_config(tiny_config("llama", len(tokenizer)))
    result = evaluate_mc(ShiftedModel(model, None), tokenizer, [record], Prompting("none"), progress=False)[0]
    assert result.true_tokens == [len(pieces.findall(a + ".")) for a in record.correct_answers] == [5, 6]
    assert result.false_tokens == [len(pieces.findall(a + ".")) for a in record.incorrect_answers] == [2, 6]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer, tqa_path):
    """A tiny model and features of its own making on the first 6 questions; a shifted run (K 4, α 5) and an
    unshifted one (K 0) of MC on them, and what the shifted run logged."""
    from iti.data import build_prompt_set
    from iti.validate import ValidationConfig, run_validation

    root = tmp_path_factory.mktemp("effect_parts")
    model = make_tiny_model("llama", len(tokenizer))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rng = np.random.default_rng(0)
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        prompt_set = build_prompt_set(dataset, tqa_path, limit=6)
        write_features(root / "features", MODEL, prompt_set, rng.standard_normal((len(prompt_set), 3, 48)), model,
                       tokenizer, 6)
    logged = []

    def run(num_heads: int, log) -> dict:
        return run_validation(ValidationConfig(
            model_name=MODEL, model_path=str(root / "model"), features_dir=str(root / "features"),
            results_dir=str(root / "results"), tqa_path=str(tqa_path), limit=6, num_heads=num_heads, alpha=5.0,
            metrics=("mc",), device="cpu", batch_size=4), progress=False, log=log)

    return run(4, logged.append), run(0, lambda _: None), logged


def answer_lists(frame: pd.DataFrame, name: str) -> list[list]:
    """Per question, the true answers' values then the false answers'."""
    return [json.loads(t) + json.loads(f) for t, f in zip(frame[f"{MODEL} {name}-true"], frame[f"{MODEL} {name}-false"])]


def test_a_run_records_its_parts_from_its_answer_files(runs):
    shifted, unshifted, logged = runs
    frames = [pd.read_csv(fold["files"]["answers"]) for fold in shifted["folds"]]
    plain = [pd.read_csv(fold["files"]["answers"]) for fold in unshifted["folds"]]
    rows, base = pd.concat(frames, ignore_index=True), pd.concat(plain, ignore_index=True)
    # The unshifted scores beside the shifted ones are the unshifted run's (float32 sums, batched differently).
    recorded = answer_lists(rows, "unshifted lprob scores")
    expected = answer_lists(base, "lprob scores")
    np.testing.assert_allclose(np.concatenate(recorded), np.concatenate(expected), rtol=0, atol=2e-4)
    scores = answer_lists(rows, "lprob scores")
    assert np.abs(np.concatenate(scores) - np.concatenate(recorded)).max() > 1e-2  # the shift moved them
    question, change, tokens, truth = [], [], [], []
    for q, (row_scores, row_base, row_tokens, true) in enumerate(zip(
            scores, recorded, answer_lists(rows, "tokens"), rows[f"{MODEL} lprob scores-true"])):
        question += [q] * len(row_scores)
        change += list(np.subtract(row_scores, row_base))
        tokens += row_tokens
        truth += [1.0] * len(json.loads(true)) + [0.0] * (len(row_scores) - len(json.loads(true)))
    assert all(isinstance(count, int) and count > 0 for count in tokens)
    answers = ScoredAnswers(np.array(question), np.array(change), np.zeros(len(change)), np.array(tokens, float),
                            np.array(truth))
    x, d = by_hand(answers)
    coefficients = np.linalg.lstsq(x, d, rcond=None)[0]
    parts = shifted["effect_parts"]
    assert [parts["length"]["coef"], parts["truth"]["coef"]] == pytest.approx(coefficients, rel=1e-9, abs=1e-12)
    assert (parts["questions"], parts["answers"]) == (6, len(question))
    assert all(parts[p]["low"] <= parts[p]["coef"] <= parts[p]["high"] for p in ("length", "truth"))
    assert any(line.startswith("truth part: ") and "; length part: " in line for line in logged)
    with open(shifted["json_path"]) as handle:
        assert json.load(handle)["effect_parts"] == parts
    assert unshifted["effect_parts"] is None


def test_unshifted_scores_reuse_an_unshifted_setting_or_are_scored_beside(tokenizer, tqa, monkeypatch):
    """Settings with an unshifted one among them: its scores are every frame's unshifted scores, and MC scores no
    other setting. Without one: one more setting, MC only, whose scores equal the unshifted setting's."""
    import iti.evaluation
    from iti.evaluation import EvalSpec, Evaluator
    from iti.prompts import Prompting
    from tests.conftest import make_shifts

    model = make_tiny_model("llama", len(tokenizer))
    records = tqa.generation_in_mc_order()[:2]
    spec = EvalSpec(frozenset({"mc"}), MODEL, batch_size=4, unshifted_scores=True)
    evaluator = Evaluator(model, tokenizer, Prompting("none"), spec)
    scored, real = [], iti.evaluation.evaluate_mc_per_setting
    monkeypatch.setattr(iti.evaluation, "evaluate_mc_per_setting",
                        lambda shifted, *args, **kwargs: scored.append(len(shifted.settings)) or real(shifted, *args,
                                                                                                    **kwargs))
    shifts = make_shifts(model, alpha=6.0)
    (with_plain, _), (plain, _) = evaluator.evaluate_settings([shifts, None], records, progress=False)
    (alone, _), = evaluator.evaluate_settings([shifts], records, progress=False)
    (unasked, _), = evaluator.evaluate_settings([shifts], records, spec.only({"mc"}), progress=False)
    assert scored == [2, 2, 1]
    unshifted = answer_lists(plain, "lprob scores")
    for frame in (with_plain, plain):
        assert answer_lists(frame, "unshifted lprob scores") == unshifted
    np.testing.assert_allclose(np.concatenate(answer_lists(alone, "unshifted lprob scores")),
                               np.concatenate(unshifted), rtol=0, atol=2e-4)
    np.testing.assert_allclose(np.concatenate(answer_lists(alone, "lprob scores")),
                               np.concatenate(answer_lists(with_plain, "lprob scores")), rtol=0, atol=2e-4)
    assert f"{MODEL} unshifted lprob scores-true" not in unasked
    assert answer_lists(alone, "tokens") == answer_lists(unasked, "tokens") == answer_lists(plain, "tokens")
