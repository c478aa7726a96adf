"""The root utils.py shim against the public workflow's helpers, re-written here as plain loops."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from iti.errors import UsageError
from legacy.selection import public_top_heads

# Loaded by path: utils.py lives at the repository root, which pytest does not always put on sys.path.
_spec = importlib.util.spec_from_file_location("iti_root_utils", Path(__file__).resolve().parents[1] / "utils.py")
utils = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(utils)

L, H, D = 3, 4, 8
CHOICES = [3, 5, 2, 4, 6, 3, 4, 5, 2, 6, 4, 3, 5, 4, 3, 4, 5, 6, 2, 4]  # rows per question


@pytest.fixture(scope="module")
def separated():
    rng = np.random.default_rng(0)
    question_ids = np.repeat(np.arange(len(CHOICES)), CHOICES)
    labels = rng.integers(0, 2, len(question_ids))
    acts = rng.standard_normal((len(question_ids), L, H, D)).astype(np.float32)
    acts[:, 2, 1] += 2.0 * labels[:, None] * np.eye(D, dtype=np.float32)[0]
    parts, sep_labels, split_at = utils.get_separated_activations(labels, acts, question_ids=question_ids)
    return acts, labels, parts, sep_labels, split_at


def public_train_probes(seed, train_idxs, val_idxs, parts, sep_labels):
    """The public workflow's train_probes, loop for loop."""
    x_train = np.concatenate([parts[i] for i in train_idxs], axis=0)
    x_val = np.concatenate([parts[i] for i in val_idxs], axis=0)
    y_train = np.concatenate([sep_labels[i] for i in train_idxs], axis=0)
    y_val = np.concatenate([sep_labels[i] for i in val_idxs], axis=0)
    accs, models = [], []
    for layer in range(L):
        for head in range(H):
            clf = LogisticRegression(random_state=seed, max_iter=1000).fit(x_train[:, layer, head, :], y_train)
            accs.append(np.mean(clf.predict(x_val[:, layer, head, :]) == y_val))
            models.append(clf)
    return models, np.array(accs)


TRAIN, VAL = np.array([0, 2, 3, 5, 7, 8, 10, 12, 13, 15, 17, 19]), np.array([1, 4, 9, 14, 18])


def test_separated_activations_by_question_ids(separated):
    acts, labels, parts, sep_labels, split_at = separated
    assert len(parts) == len(CHOICES) == len(sep_labels)
    np.testing.assert_array_equal(split_at, np.cumsum(CHOICES))
    start = 0
    for q, n in enumerate(CHOICES):
        np.testing.assert_array_equal(parts[q], acts[start:start + n])
        assert sep_labels[q] == labels[start:start + n].tolist()
        start += n
    with pytest.raises(UsageError):
        utils.get_separated_activations(labels, acts, question_ids=np.arange(len(labels))[::-1])


def test_separated_activations_from_truthfulqa(tqa_path):
    from iti.data import load_truthfulqa

    mc = load_truthfulqa(tqa_path).multiple_choice
    labels = [label for q in mc for label in q.mc2_labels]
    acts = np.arange(len(labels), dtype=np.float32).reshape(-1, 1, 1, 1)
    parts, sep_labels, split_at = utils.get_separated_activations(labels, acts, tqa_path=tqa_path)
    assert len(labels) == 5882 and len(parts) == 817
    assert [len(p) for p in parts] == [len(q.mc2_labels) for q in mc]
    assert sep_labels == [list(q.mc2_labels) for q in mc] and split_at[-1] == 5882
    flipped = list(labels)
    flipped[10] = 1 - flipped[10]
    with pytest.raises(UsageError, match="mc2 labels"):
        utils.get_separated_activations(flipped, acts, tqa_path=tqa_path)


def test_train_probes_matches_the_public_loop(separated):
    _, _, parts, sep_labels, _ = separated
    models, accs = utils.train_probes(7, TRAIN, VAL, parts, sep_labels, L, H)
    expected_models, expected_accs = public_train_probes(7, TRAIN, VAL, parts, sep_labels)
    assert accs.shape == (L * H,)
    np.testing.assert_array_equal(accs, expected_accs)
    for ours, theirs in zip(models, expected_models):
        np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-6, atol=1e-8)


def test_get_top_heads(separated):
    _, _, parts, sep_labels, _ = separated
    _, accs = public_train_probes(7, TRAIN, VAL, parts, sep_labels)
    top, models = utils.get_top_heads(TRAIN, VAL, parts, sep_labels, L, H, 7, 5)
    assert top == public_top_heads(accs.reshape(L, H), 5) and top[0] == (2, 1)
    assert len(models) == L * H
    random_top, _ = utils.get_top_heads(TRAIN, VAL, parts, sep_labels, L, H, 7, 5, use_random_dir=True)
    assert len(set(random_top)) == 5 and all(0 <= l < L and 0 <= h < H for l, h in random_top)


def test_get_com_directions_matches_the_public_loop(separated):
    _, _, parts, sep_labels, _ = separated
    got = utils.get_com_directions(L, H, TRAIN, VAL, parts, sep_labels)
    assert got.shape == (L * H, D)
    usable = np.concatenate([TRAIN, VAL])
    y = np.concatenate([sep_labels[i] for i in usable])
    for layer in range(L):
        for head in range(H):
            x = np.concatenate([parts[i][:, layer, head, :] for i in usable], axis=0)
            expected = np.mean(x[y == 1], axis=0) - np.mean(x[y == 0], axis=0)
            np.testing.assert_allclose(got[layer * H + head], expected, rtol=1e-5, atol=1e-6)


def test_flattened_index_helpers_are_reexported():
    assert utils.layer_head_to_flattened_idx(2, 3, 4) == 11
    assert utils.flattened_idx_to_layer_head(11, 4) == (2, 3)


def test_wrong_geometry_raises_usage_error(separated):
    _, _, parts, sep_labels, _ = separated
    with pytest.raises(UsageError, match="b l h d"):
        utils.train_probes(7, TRAIN, VAL, parts, sep_labels, L, H + 1)
