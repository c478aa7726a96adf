"""Folds, head bookkeeping and the two probe backends, checked against hand-made answers and scikit-learn."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

import iti.probes as probes
from benchmarks.probe_backends import compare_backends
from iti.errors import UsageError
from iti.folds import all_fold_splits, rows_of_questions, train_val_split
from iti.probes import (
    check_finite_activations,
    flattened_idx_to_layer_head,
    layer_head_to_flattened_idx,
    newton_logistic,
    random_heads,
    top_heads,
    train_probes,
)
from legacy.selection import public_split_draws, public_top_heads

L, H, D = 4, 6, 16
# Heads with a planted signal (validation accuracy about 0.7-0.85, noise heads about 0.5).
PLANTED = [(1, 2), (3, 0), (0, 5), (2, 2), (3, 4)]
STRENGTHS = [3.0, 2.6, 2.2, 1.9, 1.6]


def planted_data(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    acts = rng.standard_normal((n, L, H * D)).astype(np.float32) * 1.5 + 0.3
    for (layer, head), strength in zip(PLANTED, STRENGTHS):
        direction = rng.standard_normal(D)
        direction /= np.linalg.norm(direction)
        acts[:, layer, head * D:(head + 1) * D] += (strength * (labels[:, None] - 0.5) * direction).astype(np.float32)
    return acts, labels


@pytest.fixture(scope="module")
def data():
    acts, labels = planted_data()
    return acts, labels, np.arange(0, 450), np.arange(450, 600)


@pytest.fixture(scope="module")
def both(data):
    acts, labels, tr, va = data
    return (train_probes(acts, labels, tr, va, H, backend="torch"),
            train_probes(acts, labels, tr, va, H, backend="sklearn", seed=3))


# ----------------------------------------------------------------------------- folds

def test_fold_parts_are_contiguous_near_equal_and_hand_checked():
    splits = all_fold_splits(10, 3, 0.2, seed=0)
    assert [s[2].tolist() for s in splits] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    # dev sizes 6, 7, 7 -> int(dev * 0.8) training questions = 4, 5, 5
    assert [len(s[0]) for s in splits] == [4, 5, 5]
    assert [len(s[1]) for s in splits] == [2, 2, 2]


def test_one_generator_seeded_once_in_fold_order():
    rng = np.random.default_rng(42)
    dev0, dev1 = np.arange(409, 817), np.arange(0, 409)
    train0 = np.sort(rng.choice(dev0, size=int(408 * 0.8), replace=False))
    train1 = np.sort(rng.choice(dev1, size=int(409 * 0.8), replace=False))
    (tr0, va0, te0), (tr1, va1, te1) = all_fold_splits(817, 2, 0.2, seed=42)
    np.testing.assert_array_equal(tr0, train0)
    np.testing.assert_array_equal(tr1, train1)
    np.testing.assert_array_equal(va0, sorted(set(dev0) - set(train0)))
    np.testing.assert_array_equal(te0, np.arange(0, 409))
    np.testing.assert_array_equal(te1, np.arange(409, 817))
    # A fresh generator for fold 1 would draw other questions: the seed is used once per run.
    fresh = np.sort(np.random.default_rng(42).choice(dev1, size=int(409 * 0.8), replace=False))
    assert not np.array_equal(tr1, fresh)


@pytest.mark.parametrize("num_questions,num_fold", [(817, 2), (817, 5), (13, 4)])
def test_folds_partition_the_questions(num_questions, num_fold):
    splits = all_fold_splits(num_questions, num_fold, 0.2, seed=1)
    for train, val, test in splits:
        assert set(train).isdisjoint(val) and set(train).isdisjoint(test) and set(val).isdisjoint(test)
        assert sorted([*train, *val, *test]) == list(range(num_questions))
        assert list(train) == sorted(train) and list(val) == sorted(val)
        dev = num_questions - len(test)
        assert len(train) == int(dev * 0.8)
    again = all_fold_splits(num_questions, num_fold, 0.2, seed=1)
    assert all(np.array_equal(a, b) for s, t in zip(splits, again) for a, b in zip(s, t))


@pytest.mark.parametrize("num_questions,num_fold,seed", [(817, 2, 42), (60, 2, 1), (817, 3, 2)])
def test_public_split_stream_follows_the_public_draw_order(num_questions, num_fold, seed):
    ours = all_fold_splits(num_questions, num_fold, 0.2, seed, split_rng="public")
    theirs = public_split_draws(num_questions, num_fold, 0.2, seed)
    for (train, val, test), (p_train, p_val, p_test) in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(train, p_train)  # drawn order too: the split files list it
        np.testing.assert_array_equal(val, p_val)
        np.testing.assert_array_equal(test, p_test)
    # The evaluation draws between folds matter: without them fold 1 would train on other questions.
    rng = np.random.RandomState(seed)
    rng.choice(np.concatenate(np.array_split(np.arange(num_questions), num_fold)[1:]),
               size=len(ours[0][0]), replace=False)
    development = np.concatenate([p for j, p in enumerate(np.array_split(np.arange(num_questions), num_fold)) if j != 1])
    assert not np.array_equal(rng.choice(development, size=len(ours[1][0]), replace=False), ours[1][0])


def test_public_split_stream_leaves_the_global_generator_alone():
    np.random.seed(7)
    expected = np.random.random()
    np.random.seed(7)
    all_fold_splits(50, 2, 0.2, 3, split_rng="public")
    assert np.random.random() == expected
    with pytest.raises(UsageError, match="split generator"):
        all_fold_splits(50, 2, 0.2, 3, split_rng="mt")


@pytest.mark.parametrize("args", [(10, 1, 0.2), (3, 4, 0.2), (10, 2, 0.0), (10, 2, 1.0), (3, 2, 0.2)])
def test_bad_fold_arguments_raise_usage_error(args):
    num_questions, num_fold, val_ratio = args
    with pytest.raises(UsageError):
        all_fold_splits(num_questions, num_fold, val_ratio, seed=0)


@pytest.mark.parametrize("num_questions, num_fold, val_ratio, needed, ratio", [
    (2, 2, 0.2, 4, None), (3, 2, 0.2, 4, None), (8, 2, 0.8, 12, 0.75), (7, 3, 0.9, 17, 0.75),
])
def test_too_few_questions_for_the_folds_says_how_many_are_needed(num_questions, num_fold, val_ratio, needed, ratio):
    development = num_questions - -(-num_questions // num_fold)
    message = (f"{num_questions} questions in {num_fold} folds leave a fold {development} development question"
               f"{'s' if development > 1 else ''}, none to train on at --val_ratio {val_ratio}: that takes at least "
               f"{needed} questions; use more questions" + (f" or a --val_ratio of at most {ratio}" if ratio else ""))
    with pytest.raises(UsageError, match=re.escape(message) + "$"):
        all_fold_splits(num_questions, num_fold, val_ratio, seed=0)
    # What it names works, and is the least that does: `needed` questions fill the folds, one fewer does not.
    for train, val, _ in all_fold_splits(needed, num_fold, val_ratio, seed=0):
        assert len(train) >= 1 and len(val) >= 1
    with pytest.raises(UsageError, match="none to train on"):
        all_fold_splits(needed - 1, num_fold, val_ratio, seed=0)
    if ratio:
        for train, val, _ in all_fold_splits(num_questions, num_fold, ratio, seed=0):
            assert len(train) >= 1 and len(val) >= 1


def test_too_few_questions_to_split_says_how_many_are_needed():
    with pytest.raises(UsageError, match=re.escape("--val_ratio 0.95 leaves none of 10 questions to train on: that "
                                                   "takes at least 20; use more questions or a --val_ratio of at "
                                                   "most 0.89") + "$"):
        train_val_split(np.arange(10), 0.95, np.random.default_rng(0))


def test_rows_of_questions():
    ids = np.array([0, 0, 1, 1, 1, 2, 3, 3])
    assert rows_of_questions(ids, [1, 3]).tolist() == [2, 3, 4, 6, 7]
    assert rows_of_questions(ids, np.array([], dtype=int)).tolist() == []


# ----------------------------------------------------------------------------- heads

def test_flattened_index_round_trip():
    for layer in range(3):
        for head in range(5):
            idx = layer_head_to_flattened_idx(layer, head, 5)
            assert idx == layer * 5 + head
            assert flattened_idx_to_layer_head(idx, 5) == (layer, head)


def test_top_heads_best_first_ties_as_the_public_ranking():
    accs = np.array([[0.5, 0.9, 0.7], [0.9, 0.7, 0.1]])
    top = top_heads(accs, 4)
    assert set(top[:2]) == {(0, 1), (1, 0)} and set(top[2:]) == {(0, 2), (1, 1)}
    assert top == public_top_heads(accs, 4)
    assert top_heads(accs, 0) == []
    # The bundled model's geometry with 40 validation rows: 270 heads on 41 possible accuracies.
    tied = np.random.default_rng(0).integers(20, 30, size=(30, 9)) / 40
    top = top_heads(tied, 8)
    assert top == public_top_heads(tied, 8)
    chosen = sorted((tied[head] for head in top), reverse=True)
    assert [tied[head] for head in top] == chosen  # best first
    threshold = chosen[-1]
    assert {h for h in np.ndindex(tied.shape) if tied[h] > threshold} <= set(top)
    for k in (-1, 7):
        with pytest.raises(UsageError):
            top_heads(accs, k)


def test_random_heads_distinct_in_range_and_seeded():
    heads = random_heads(4, 6, 10, seed=5)
    assert len(set(heads)) == 10 and all(0 <= l < 4 and 0 <= h < 6 for l, h in heads)
    assert heads == random_heads(4, 6, 10, seed=5)
    assert heads != random_heads(4, 6, 10, seed=6)
    assert sorted(random_heads(4, 6, 24, seed=0)) == [(l, h) for l in range(4) for h in range(6)]
    with pytest.raises(UsageError):
        random_heads(4, 6, 25, seed=0)


# ----------------------------------------------------------------------------- probes

def test_torch_and_sklearn_pick_the_same_heads(both):
    fast, reference = both
    k = len(PLANTED)
    assert set(top_heads(fast.val_accuracies, k)) == set(PLANTED)
    assert top_heads(fast.val_accuracies, k) == top_heads(reference.val_accuracies, k)
    # lbfgs stops at tol 1e-4, Newton at the optimum: a borderline row may flip, rarely more.
    assert np.abs(fast.val_accuracies - reference.val_accuracies).max() <= 2 / 150 + 1e-12
    assert np.abs(fast.val_accuracies - reference.val_accuracies).mean() <= 0.003


def test_torch_coefficients_match_sklearn(both):
    fast, reference = both
    gap = np.linalg.norm(fast.coefs - reference.coefs, axis=-1) / np.linalg.norm(reference.coefs, axis=-1)
    assert gap.max() < 1e-2
    np.testing.assert_allclose(fast.intercepts, reference.intercepts, atol=1e-2 * np.abs(reference.intercepts).max())


def test_newton_reaches_the_optimum_of_sklearns_objective(data, both):
    """At the optimum of sum(log-loss) + |w|^2/2 the gradient is zero: X^T(p - y) + w = 0, sum(p - y) = 0."""
    acts, labels, tr, _ = data
    fast, _ = both
    y = labels[tr]
    for layer in range(L):
        for head in range(H):
            x = acts[tr, layer, head * D:(head + 1) * D].astype(np.float64)
            w, b = fast.coefs[layer, head], fast.intercepts[layer, head]
            p = 1 / (1 + np.exp(-(x @ w + b)))
            assert np.abs(x.T @ (p - y) + w).max() < 1e-8
            assert abs(np.sum(p - y)) < 1e-8


def test_newton_matches_tightly_converged_sklearn():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 8)) * 3
    y = (x @ rng.standard_normal(8) + rng.standard_normal(300) * 4 > 0).astype(float)
    clf = LogisticRegression(tol=1e-12, max_iter=100000).fit(x, y)
    design = torch.cat([torch.as_tensor(x), torch.ones(300, 1, dtype=torch.float64)], -1)[None]
    theta = newton_logistic(design, torch.as_tensor(y))[0].numpy()
    np.testing.assert_allclose(theta[:-1], clf.coef_[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(theta[-1], clf.intercept_[0], rtol=1e-5, atol=1e-7)


def test_separable_and_saturated_problems_converge():
    """Perfectly separable data: only the L2 term keeps the optimum finite; Newton must still converge."""
    x = np.concatenate([np.full((50, 2), 30.0), np.full((50, 2), -30.0)])
    y = np.r_[np.ones(50), np.zeros(50)]
    design = torch.cat([torch.as_tensor(x), torch.ones(100, 1, dtype=torch.float64)], -1)[None]
    theta = newton_logistic(design, torch.as_tensor(y))[0].numpy()
    clf = LogisticRegression(tol=1e-12, max_iter=100000).fit(x, y)
    np.testing.assert_allclose(theta[:-1], clf.coef_[0], rtol=1e-4, atol=1e-6)


def test_chunks_across_layer_boundaries_and_memmap_agree(tmp_path, data, both, monkeypatch):
    acts, labels, tr, va = data
    path = tmp_path / "acts.npy"
    np.save(path, acts)
    mapped = np.load(path, mmap_mode="r")
    # Budget for 5 heads per chunk: chunks straddle the 6-head layers.
    monkeypatch.setattr(probes, "_CPU_CHUNK_BYTES", 5 * 3 * 8 * len(tr) * (D + 1))
    chunked = train_probes(mapped, labels, tr, va, H, backend="torch")
    whole, _ = both
    np.testing.assert_array_equal(chunked.val_accuracies, whole.val_accuracies)
    np.testing.assert_allclose(chunked.coefs, whole.coefs, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(chunked.intercepts, whole.intercepts, rtol=1e-9, atol=1e-12)


def test_accuracy_is_counted_on_validation_rows(data, both):
    acts, labels, _, va = data
    fast, _ = both
    layer, head = PLANTED[-1]
    x = acts[va, layer, head * D:(head + 1) * D].astype(np.float64)
    predicted = (x @ fast.coefs[layer, head] + fast.intercepts[layer, head] > 0).astype(int)
    assert fast.val_accuracies[layer, head] == np.mean(predicted == labels[va])


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_nan_activations_raise_usage_error(data, backend):
    acts, labels, tr, va = data
    bad = acts.copy()
    bad[tr[3], 2, 5] = np.nan
    with pytest.raises(UsageError, match="NaN.*get_activations"):
        train_probes(bad, labels, tr, va, H, backend=backend)


def test_check_finite_activations_names_the_rows():
    acts = np.zeros((600, 2, 4), dtype=np.float32)
    check_finite_activations(acts)
    acts[300, 1, 2] = np.inf
    with pytest.raises(UsageError, match="rows 256..511"):
        check_finite_activations(acts)


@pytest.mark.parametrize("case", ["labels_not_binary", "one_class", "rows_out_of_range", "empty_val",
                                  "width", "labels_length", "backend", "device"])
def test_bad_probe_inputs_raise_usage_error(data, case):
    acts, labels, tr, va = data
    kwargs = dict(acts=acts, labels=labels, train_rows=tr, val_rows=va, num_heads=H)
    if case == "labels_not_binary":
        kwargs["labels"] = labels * 2
    elif case == "one_class":
        kwargs["train_rows"] = np.flatnonzero(labels == 1)
    elif case == "rows_out_of_range":
        kwargs["val_rows"] = np.array([599, 600])
    elif case == "empty_val":
        kwargs["val_rows"] = np.array([], dtype=int)
    elif case == "width":
        kwargs["num_heads"] = 5
    elif case == "labels_length":
        kwargs["labels"] = labels[:-1]
    elif case == "backend":
        kwargs["backend"] = "jax"
    else:
        kwargs["device"] = "gpu"
    with pytest.raises(UsageError):
        train_probes(**kwargs)


def test_compare_backends_reports_agreement(data):
    acts, labels, tr, va = data
    report = compare_backends(acts, labels, tr, va, H, k=len(PLANTED))
    assert report.heads == L * H and report.k == len(PLANTED) and report.top_k_overlap == len(PLANTED)
    assert report.mean_abs_acc_diff <= 0.003 and report.max_abs_acc_diff <= 2 / 150 + 1e-12
    assert report.torch_seconds > 0 and report.sklearn_seconds > 0


def test_newton_falls_back_to_float64_when_the_float32_hessian_is_not_positive_definite():
    """Wide rows of large, nearly equal values (as residual streams are): the float32 Hessian at the start
    is not positive definite; the solver still reaches the optimum (gradient of the objective ~ 0)."""
    rng = np.random.default_rng(0)
    n, d = 40, 300
    x = torch.ones(1, n, d + 1, dtype=torch.float64)
    x[0, :, :d] = torch.as_tensor(rng.standard_normal(d) * 3e3 + rng.standard_normal((n, d)) * 30)
    y = torch.as_tensor((rng.random(n) < 0.5).astype(float))
    penalty = torch.ones(d + 1, dtype=torch.float64)
    penalty[-1] = 0
    start = (x.float() * 0.25).mT @ x.float()
    start = start.double() + torch.diag(penalty + 1e-10)
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(start)
    theta = newton_logistic(x, y)[0]
    gradient = x[0].mT @ (torch.sigmoid(x[0] @ theta) - y) + penalty * theta
    assert gradient.abs().max() < 1e-5
