"""The metrics registry: each metric's scoring function against hand-computed cases, the registry's derived
tables, and the decorator's rules."""
import math
from types import SimpleNamespace

import pytest

from iti import metrics
from iti.metrics import BY_NAME, METRIC_OPTIONS, METRICS, PER_QUESTION, PER_QUESTION_OR_DERIVED, register_metric


@pytest.mark.parametrize("true, false, best, expected", [
    ([-1.0, -2.0], [-3.0], -1.0,
     (1.0, (math.exp(-1) + math.exp(-2)) / (math.exp(-1) + math.exp(-2) + math.exp(-3)), 1.0)),
    ([-5.0, -1.0, -2.5], [-2.0, -4.0], -5.0,
     (0.0, (math.exp(-5) + math.exp(-1) + math.exp(-2.5))
      / (math.exp(-5) + math.exp(-1) + math.exp(-2.5) + math.exp(-2) + math.exp(-4)), 1 / 3)),
    # A tie is not a win (strict >), as in TruthfulQA's MC_calcs.
    ([-2.0], [-2.0, -7.0], -2.0, (0.0, math.exp(-2) / (2 * math.exp(-2) + math.exp(-7)), 0.0)),
    # Long answers: exp underflows to 0/0 in float64; the shares are still 1/(1+e^-1) and its complement.
    ([-2000.0], [-2001.0], -2000.0, (1.0, 1 / (1 + math.exp(-1)), 1.0)),
])
def test_mc_formulas_by_hand(true, false, best, expected):
    answers = SimpleNamespace(true_scores=true, false_scores=false, best_score=best)
    assert BY_NAME["MC1"].score(answers) == expected[0]
    assert BY_NAME["MC2"].score(answers) == pytest.approx(expected[1], rel=1e-12)
    assert BY_NAME["MC3"].score(answers) == pytest.approx(expected[2], rel=1e-12)


@pytest.mark.parametrize("name", ["True", "Info"])
def test_judged_metrics_count_p_yes_from_one_half(name):
    score = BY_NAME[name].score
    assert [score(p) for p in (0.0, 0.4999, 0.5, 0.93)] == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize("name", ["CE", "KL"])
def test_per_run_metrics_are_the_mean_over_documents(name):
    values = [0.1, 2.5, 3.25, 1e-9]
    assert BY_NAME[name].score(values) == pytest.approx(sum(values) / 4, rel=1e-15)
    assert math.isnan(BY_NAME[name].score([]))


def test_every_metric_is_scored_or_derived_and_the_tables_follow_the_registry():
    for metric in METRICS:
        assert (metric.score is None) == bool(metric.product_of) == (metric.option is None), metric.name
        assert all(BY_NAME[factor].per_question for factor in metric.product_of)
    assert [m.name for m in METRICS] == ["True*Info", "True", "Info", "MC1", "MC2", "MC3", "CE", "KL"]
    assert METRIC_OPTIONS == ("judge", "info", "mc", "ce", "kl")
    assert PER_QUESTION == ("True", "Info", "MC1", "MC2", "MC3")
    assert PER_QUESTION_OR_DERIVED == ("True*Info",) + PER_QUESTION
    assert [m.name for m in METRICS if not m.higher_is_better] == ["CE", "KL"]


def test_the_decorator_registers_and_returns_the_function(monkeypatch):
    monkeypatch.setattr(metrics, "_REGISTERED", list(metrics._REGISTERED))

    def brevity(answer: str) -> float:
        return 1.0 / len(answer)

    assert register_metric("Brevity", "Brevity", "mc", higher_is_better=True)(brevity) is brevity
    assert metrics._REGISTERED[-1] == metrics.Metric("Brevity", "Brevity", "mc", brevity)
    with pytest.raises(ValueError, match="metric MC1 is registered twice"):
        register_metric("MC1", "MC1", "mc")(brevity)


def test_products_and_means_over_folds():
    folds = [{"True": 0.5, "Info": 0.8, "MC1": 0.2, "MC2": 0.4, "MC3": 0.1, "CE": 2.0, "KL": 0.1},
             {"True": 0.7, "Info": 0.6, "MC1": 0.4, "MC2": 0.6, "MC3": 0.3, "CE": 3.0, "KL": 0.3}]
    means = metrics.mean_over_folds(folds)
    assert means["MC2"] == pytest.approx(0.5) and means["CE"] == pytest.approx(2.5)
    # The product of the means, not the mean of the per-fold products (the public workflow's way).
    assert means["True*Info"] == pytest.approx(0.6 * 0.7)
