"""fit_head_shifts against hand loops and scikit-learn: heads, directions, σ, provenance, splits."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from iti.errors import UsageError
from iti.fitting import Features, Recipe, Split, fit_head_shifts, seeded_split
from iti.head_shifts import ShiftProvenance
from iti.probes import random_heads

L, H, D = 4, 3, 8


@pytest.fixture(scope="module")
def features():
    """Two informative heads ((1, 2) and (3, 0)) among noise; one row per question."""
    rng = np.random.default_rng(3)
    n = 400
    labels = rng.integers(0, 2, n)
    acts = rng.standard_normal((n, L, H * D)).astype(np.float32)
    for layer, head, strength in ((1, 2, 3.0), (3, 0, 2.5)):
        acts[:, layer, head * D:(head + 1) * D] += (strength * labels[:, None] * np.eye(D)[layer]).astype(np.float32)
    tuning = (rng.standard_normal((120, L, H * D)) * 3).astype(np.float32)
    return Features(acts, labels, np.arange(n), tuning, np.arange(120), H,
                    provenance=ShiftProvenance(model_name="synthetic"))


SPLIT = Split(np.arange(300), np.arange(300, 400))


def test_center_of_mass(features):
    shifts, _ = fit_head_shifts(features, SPLIT, Recipe(2, 15.0, "center_of_mass"))
    assert sorted(shifts.head_list()) == [(1, 2), (3, 0)]
    rows = np.arange(400)
    for i, (layer, head) in enumerate(shifts.head_list()):
        block = features.acts[rows, layer, head * D:(head + 1) * D].astype(np.float64)
        diff = block[features.labels == 1].mean(0) - block[features.labels == 0].mean(0)
        np.testing.assert_allclose(shifts.directions[i], diff / np.linalg.norm(diff), rtol=1e-5, atol=1e-6)
        projections = features.tuning_acts[:, layer, head * D:(head + 1) * D].astype(np.float64) @ shifts.directions[i]
        assert shifts.sigmas[i] == pytest.approx(np.std(projections), rel=1e-5)
    assert shifts.probe_accuracies.min() > 0.8 and shifts.alpha == 15.0
    provenance = shifts.provenance.as_dict()
    report = provenance.pop("probe_report")
    assert provenance == {"model_name": "synthetic", "K": 2, "method": "center_of_mass", "probe_backend": "torch",
                          "seed": 42, "train_questions": 300, "val_questions": 100}
    assert report["train_rows"] == 300 and report["val_rows"] == 100


def test_sigma_from_the_questions_named(features):
    split = Split(SPLIT.train, SPLIT.val, sigma=np.arange(50))
    shifts, _ = fit_head_shifts(features, split, Recipe(2, 15.0))
    for i, (layer, head) in enumerate(shifts.head_list()):
        projections = features.tuning_acts[:50, layer, head * D:(head + 1) * D].astype(np.float64) @ shifts.directions[i]
        assert shifts.sigmas[i] == pytest.approx(np.std(projections), rel=1e-5)


def test_probe_direction_is_sklearns_weight(features):
    shifts, _ = fit_head_shifts(features, SPLIT, Recipe(2, 15.0, "probe", probe_backend="sklearn"))
    for i, (layer, head) in enumerate(shifts.head_list()):
        clf = LogisticRegression(random_state=42, max_iter=1000).fit(
            features.acts[SPLIT.train, layer, head * D:(head + 1) * D], features.labels[SPLIT.train])
        w = clf.coef_[0] / np.linalg.norm(clf.coef_[0])
        np.testing.assert_allclose(shifts.directions[i], w, rtol=1e-5, atol=1e-6)


def test_random_heads_and_directions(features):
    shifts, _ = fit_head_shifts(features, SPLIT, Recipe(3, 15.0, "random", seed=9))
    assert shifts.head_list() == random_heads(L, H, 3, seed=9)
    np.testing.assert_allclose(np.linalg.norm(shifts.directions, axis=1), 1.0, rtol=1e-6)
    with pytest.raises(UsageError):
        Recipe(2, 15.0, "mean")
    narrow = Features(features.acts, features.labels, features.question_ids, features.tuning_acts[:, :, :D],
                      features.tuning_question_ids, H)
    with pytest.raises(UsageError, match="differ in layers or width"):
        fit_head_shifts(narrow, SPLIT, Recipe(2, 15.0))


def test_seeded_split_draws_the_share_of_questions():
    split = seeded_split(np.repeat(np.arange(50), 3), 0.2, seed=4)
    assert len(split.train) == 40 and len(split.val) == 10
    assert sorted(np.r_[split.train, split.val]) == list(range(50))
    again = seeded_split(np.arange(50), 0.2, seed=4)
    np.testing.assert_array_equal(split.train, again.train)


def test_shifts_take_the_features_geometry_and_refuse_rows_that_do_not_split(features):
    shifts, _ = fit_head_shifts(features, SPLIT, Recipe(2, 15.0))
    assert (shifts.num_layers, shifts.num_heads, shifts.head_dim) == (L, H, D)
    for wrong in (dataclasses.replace(features, num_heads=5),
                  dataclasses.replace(features, tuning_acts=features.tuning_acts[:, :, :D])):
        with pytest.raises(UsageError, match="not a multiple of num_heads=5|differ in layers or width"):
            fit_head_shifts(wrong, SPLIT, Recipe(2, 15.0))


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_progress_false_silences_every_probe_bar(features, backend, capsys):
    """iti.fit(progress=False) hands its flag down here: neither the head probes nor the layer probes draw a bar."""
    layered = dataclasses.replace(features, layer_acts=np.concatenate([features.acts[:, :1, :D]] * 3, axis=1))
    recipe = Recipe(2, 15.0, probe_backend=backend)
    quiet, _ = fit_head_shifts(layered, SPLIT, recipe, progress=False)
    assert capsys.readouterr().err == ""
    shown, _ = fit_head_shifts(layered, SPLIT, recipe)
    assert capsys.readouterr().err.count("train_probes") >= 2
    np.testing.assert_array_equal(quiet.directions, shown.directions)


@pytest.mark.parametrize("method", ["center_of_mass", "probe", "random"])
def test_one_probe_fit_gives_every_k_and_alpha_of_its_own_fit(features, method, monkeypatch):
    """A sweep's shifts (iti.validate): the probes trained once, then each (K, α) built from them, largest K first,
    equal bit for bit to a fit of that setting alone (heads, directions, σ, accuracies, provenance naming K); the
    fewer heads of a smaller K are the best of the larger K's, in order (random heads are drawn per K)."""
    import iti.fitting

    fitted = []
    real = iti.fitting.train_probes
    monkeypatch.setattr(iti.fitting, "train_probes", lambda *a, **k: fitted.append(1) or real(*a, **k))
    fit = iti.fitting.fit_probes(features, SPLIT, Recipe(6, 15.0, method), progress=False)
    built = {(k, alpha): fit.head_shifts(k, alpha) for k in (6, 2) for alpha in (0.0, 15.0)}
    assert len(fitted) == 1
    for (k, alpha), shifts in built.items():
        alone, _ = fit_head_shifts(features, SPLIT, Recipe(k, alpha, method), progress=False)
        for name in ("layers", "heads", "directions", "sigmas", "probe_accuracies"):
            np.testing.assert_array_equal(getattr(shifts, name), getattr(alone, name))
        assert shifts.alpha == alone.alpha == alpha and shifts.provenance == alone.provenance
        assert shifts.provenance.K == k
    if method != "random":
        assert built[2, 15.0].head_list() == built[6, 15.0].head_list()[:2]
