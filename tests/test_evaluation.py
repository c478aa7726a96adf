"""Evaluator: every registered metric scores the outputs of its option's pass, one answer-frame column per
per-question metric (in the public answer files' order) and its mean over the questions; MC against legacy's
one forward per answer, True/Info against a judge's probabilities thresholded by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

import iti.evaluation
from iti.evaluation import EvalSpec, Evaluator
from iti.mc import mc_references
from iti.metrics import METRICS, Metric
from iti.prompts import Prompting, question_prompt
from legacy.mc import mc_question


@pytest.fixture(scope="module")
def records(tqa):
    return tqa.generation_in_mc_order()[:3]


def test_mc_columns_and_means_against_one_forward_per_answer(tiny, records):
    model, tokenizer = tiny
    spec = EvalSpec(frozenset({"mc"}), "tiny", batch_size=4)
    frame, results = Evaluator(model, tokenizer, Prompting("none"), spec).evaluate(None, records, progress=False)
    assert list(frame.columns)[-3:] == ["tiny MC1", "tiny MC2", "tiny MC3"]
    for row, record in enumerate(records):
        ref = mc_references(record)
        expected = mc_question(model, tokenizer, question_prompt(record.question, "none") + "\nA: ", ref.true,
                               ref.false, ref.best)
        assert frame.loc[row, "tiny MC2"] == pytest.approx(expected["MC2"], abs=1e-4)
        assert frame.loc[row, "tiny MC3"] == pytest.approx(expected["MC3"])
        if abs(max(expected["scores_false"]) - expected["scores_true"][ref.true.index(ref.best)]) > 1e-3:
            assert frame.loc[row, "tiny MC1"] == expected["MC1"]
    for name in ("MC1", "MC2", "MC3"):
        assert results[name] == pytest.approx(np.mean(frame[f"tiny {name}"]), rel=1e-12)
    assert all(math.isnan(results[name]) for name in ("True*Info", "True", "Info", "CE", "KL"))


class FixedJudges:
    """A judge panel whose P(" yes") per answer is given."""

    def __init__(self, scores: dict[str, np.ndarray]):
        self.scores = scores

    def score(self, questions, answers, evaluated_model=None, progress=True):
        assert len(answers) == len(questions)
        return self.scores


def test_judged_columns_threshold_the_probabilities_and_multiply_the_means(tiny, records):
    model, tokenizer = tiny
    truth, info = np.array([0.2, 0.5, 0.9]), np.array([0.7, 0.6, 0.1])
    spec = EvalSpec(frozenset({"judge", "info"}), "tiny", batch_size=4, max_new_tokens=2)
    evaluator = Evaluator(model, tokenizer, Prompting("none"), spec, judges=FixedJudges({"truth": truth, "info": info}))
    frame, results = evaluator.evaluate(None, records, progress=False)
    assert list(frame.columns)[-5:] == ["tiny", "tiny GPT-judge", "tiny GPT-judge acc", "tiny GPT-info",
                                        "tiny GPT-info acc"]
    assert frame["tiny GPT-judge acc"].tolist() == [0.0, 1.0, 1.0]
    assert frame["tiny GPT-info acc"].tolist() == [1.0, 1.0, 0.0]
    assert results["True"] == pytest.approx(2 / 3) and results["Info"] == pytest.approx(2 / 3)
    assert results["True*Info"] == pytest.approx(4 / 9)
    assert math.isnan(results["MC2"])


def test_a_registered_metric_is_scored_with_no_other_change(tiny, records, monkeypatch):
    """Adding a metric is one registry entry: the evaluation scores it on its option's pass."""
    model, tokenizer = tiny
    longest = Metric("Longest", "longest true answer", "mc", lambda answers: max(answers.true_scores))
    monkeypatch.setattr(iti.evaluation, "METRICS", (*METRICS, longest))
    spec = EvalSpec(frozenset({"mc"}), "tiny", batch_size=4)
    frame, results = Evaluator(model, tokenizer, Prompting("none"), spec).evaluate(None, records, progress=False)
    assert frame["tiny longest true answer"].tolist() == frame["tiny lprob max"].tolist()
    assert results["Longest"] == pytest.approx(frame["tiny lprob max"].mean(), rel=1e-12)
