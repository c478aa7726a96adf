"""Bootstrap intervals against a direct resampling loop; paired differences against a hand computation."""
import numpy as np
import pytest

from iti.errors import UsageError
from iti.statistics import Interval, intervals, paired_differences


def loop_percentile_interval(statistic, num_questions: int, seed: int, resamples: int = 1000) -> tuple[float, float]:
    """One draw of the questions at a time, the statistic recomputed on it, then the 2.5th and 97.5th percentiles."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        picked = rng.integers(0, num_questions, size=num_questions)
        values.append(statistic(picked))
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def test_intervals_match_a_resampling_loop():
    rng = np.random.default_rng(5)
    mc2 = rng.random(37)
    true = (rng.random(37) < 0.6).astype(float)
    info = (rng.random(37) < 0.8).astype(float)
    got = intervals({"MC2": mc2, "True": true, "Info": info}, seed=11)

    assert got["MC2"].value == pytest.approx(mc2.mean())
    assert (got["MC2"].low, got["MC2"].high) == pytest.approx(loop_percentile_interval(lambda q: mc2[q].mean(), 37, 11))
    # True*Info: the product of the two means, both taken on the same draw.
    assert got["True*Info"].value == pytest.approx(true.mean() * info.mean())
    expected = loop_percentile_interval(lambda q: true[q].mean() * info[q].mean(), 37, 11)
    assert (got["True*Info"].low, got["True*Info"].high) == pytest.approx(expected)
    assert got["MC2"].low < mc2.mean() < got["MC2"].high


def test_paired_difference_by_hand():
    # A small answer file: four questions scored by an ITI run and its baseline.
    treated = {"MC2": np.array([0.5, 0.7, 0.2, 0.9]), "MC1": np.array([1.0, 0.0, 0.0, 1.0])}
    baseline = {"MC2": np.array([0.4, 0.7, 0.1, 0.6]), "MC1": np.array([0.0, 0.0, 0.0, 1.0])}
    got = paired_differences(treated, baseline, seed=3)
    # (0.1 + 0 + 0.1 + 0.3) / 4 and (1 + 0 + 0 + 0) / 4
    assert got["MC2"].value == pytest.approx(0.125)
    assert got["MC1"].value == pytest.approx(0.25)
    per_question = np.array([0.1, 0.0, 0.1, 0.3])
    assert (got["MC2"].low, got["MC2"].high) == pytest.approx(
        loop_percentile_interval(lambda q: per_question[q].mean(), 4, 3))
    # Every resample of four questions has a mean difference between the smallest and the largest.
    assert 0.0 <= got["MC2"].low <= got["MC2"].high <= 0.3


def test_constant_difference_has_no_spread():
    base = np.linspace(0, 1, 9)
    got = paired_differences({"MC2": base + 0.05}, {"MC2": base})["MC2"]
    assert got == Interval(pytest.approx(0.05), pytest.approx(0.05), pytest.approx(0.05))


def test_only_metrics_both_runs_have_and_same_questions():
    got = paired_differences({"MC2": np.ones(3), "True": np.ones(3)}, {"MC2": np.zeros(3)})
    assert set(got) == {"MC2"}
    with pytest.raises(UsageError, match="same questions"):
        paired_differences({"MC2": np.ones(3)}, {"MC2": np.ones(4)})
    with pytest.raises(UsageError, match="one length"):
        intervals({"MC2": np.ones(3), "MC1": np.ones(2)})


@pytest.mark.parametrize("low, high, excludes", [(0.01, 0.2, True), (-0.2, -0.01, True), (-0.01, 0.2, False),
                                                 (0.0, 0.2, False)])
def test_an_interval_says_whether_it_excludes_zero(low, high, excludes):
    interval = Interval((low + high) / 2, low, high)
    assert interval.excludes_zero() is excludes
    assert ("excludes 0" in interval.verdict()) is excludes
