"""Choosing (K, α) from a validation table, and head shifts from probes trained once."""
import math

import numpy as np
import pytest

from iti.errors import UsageError
from iti.probes import train_probes
from iti.selection import build_head_shifts, choose_setting, head_shifts_from_probes

TABLE = [
    {"K": 8, "alpha": 0.0, "MC2": 0.50, "KL": 0.0},
    {"K": 8, "alpha": 5.0, "MC2": 0.56, "KL": 0.2},
    {"K": 16, "alpha": 5.0, "MC2": 0.56, "KL": 0.3},
    {"K": 8, "alpha": 15.0, "MC2": 0.61, "KL": 0.9},
    {"K": 16, "alpha": 15.0, "MC2": 0.59, "KL": 1.4},
]


def test_best_score_wins():
    assert choose_setting(TABLE, "MC2") == (TABLE[3], None)


def test_a_kl_budget_excludes_and_ties_go_to_the_weaker_shift():
    # Within KL 0.5, K 8 and K 16 at α 5 tie on MC2: the smaller K is taken.
    assert choose_setting(TABLE, "MC2", max_kl=0.5) == (TABLE[1], None)
    tied_alphas = [dict(TABLE[1], alpha=10.0), TABLE[1]]
    assert choose_setting(tied_alphas, "MC2")[0] is TABLE[1]


def test_no_setting_within_the_budget_takes_the_smallest_kl_and_says_so():
    chosen, note = choose_setting(TABLE[1:], "MC2", max_kl=0.1)
    assert chosen is TABLE[1] and "no setting kept KL within --max_kl 0.1" in note


def test_missing_metric_and_empty_table_are_usage_errors():
    with pytest.raises(UsageError, match="--select_metric True\\*Info has no value"):
        choose_setting([dict(row, **{"True*Info": math.nan}) for row in TABLE], "True*Info")
    with pytest.raises(UsageError):
        choose_setting([], "MC2")


def test_probes_trained_once_serve_every_k():
    rng = np.random.default_rng(0)
    num_heads, head_dim = 3, 4
    acts = rng.standard_normal((60, 2, num_heads * head_dim))
    labels = rng.integers(0, 2, 60)
    tuning = rng.standard_normal((30, 2, num_heads * head_dim))
    train, val = np.arange(40), np.arange(40, 60)
    probes = train_probes(acts, labels, train, val, num_heads)
    for k in (1, 4):
        args = (acts, labels, train, val, tuning, num_heads, head_dim, k, 5.0, "center_of_mass", False, "torch", 1, {})
        once = head_shifts_from_probes(probes, *args)
        fresh = build_head_shifts(*args)
        assert once.head_list() == fresh.head_list()
        np.testing.assert_array_equal(once.sigmas, fresh.sigmas)
        np.testing.assert_array_equal(once.directions, fresh.directions)
