"""Directions and spreads against plain loops over rows, written without the package's code."""
from __future__ import annotations

import numpy as np
import pytest

from iti.directions import (
    mean_differences,
    probe_directions,
    projection_stds,
    random_directions,
    unit,
)
from iti.errors import UsageError
from iti.probes import ProbeResult

L, H, D = 3, 4, 8
HEADS = [(2, 1), (0, 3), (2, 0), (1, 1)]  # two heads share layer 2, out of order on purpose


@pytest.fixture(scope="module")
def acts():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((50, L, H * D)) * 2 + 1).astype(np.float32)


@pytest.fixture(scope="module")
def labels():
    return np.random.default_rng(1).integers(0, 2, 50)


def head_vector(acts, row, layer, head):
    return acts[row, layer, head * D:(head + 1) * D].astype(np.float64)


def test_center_of_mass_matches_a_loop(acts, labels):
    rows = np.arange(5, 45)
    got = unit(mean_differences(acts, labels, rows, HEADS, H))
    raw = mean_differences(acts, labels, rows, HEADS, H)
    for i, (layer, head) in enumerate(HEADS):
        sums, counts = {0: np.zeros(D), 1: np.zeros(D)}, {0: 0, 1: 0}
        for row in rows:
            sums[labels[row]] += head_vector(acts, row, layer, head)
            counts[labels[row]] += 1
        expected = sums[1] / counts[1] - sums[0] / counts[0]
        np.testing.assert_allclose(raw[i], expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(got[i], expected / np.sqrt(np.sum(expected ** 2)), rtol=1e-10, atol=1e-12)


def test_probe_directions_are_normalised_weights():
    coefs = np.random.default_rng(2).standard_normal((L, H, D))
    result = ProbeResult(np.zeros((L, H)), coefs, np.zeros((L, H)))
    got = probe_directions(result, HEADS)
    for i, (layer, head) in enumerate(HEADS):
        w = coefs[layer, head]
        np.testing.assert_allclose(got[i], w / np.sqrt(np.sum(w ** 2)), rtol=1e-12)
    with pytest.raises(UsageError):
        probe_directions(result, [(L, 0)])


def test_random_directions_are_unit_seeded_and_spread():
    a = random_directions(2000, D, seed=7)
    assert a.shape == (2000, D)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(a, random_directions(2000, D, seed=7))
    assert not np.array_equal(a, random_directions(2000, D, seed=8))
    # Uniform on the sphere: the mean vector vanishes and each coordinate's second moment is 1/D.
    assert np.abs(a.mean(axis=0)).max() < 0.05
    np.testing.assert_allclose((a ** 2).mean(axis=0), 1 / D, atol=0.02)


def test_projection_stds_match_np_std_of_dot_products(acts):
    directions = random_directions(len(HEADS), D, seed=3)
    got = projection_stds(acts, HEADS, directions, H)
    for i, (layer, head) in enumerate(HEADS):
        projections = [float(np.dot(head_vector(acts, row, layer, head), directions[i])) for row in range(len(acts))]
        mean = sum(projections) / len(projections)
        population_std = np.sqrt(sum((p - mean) ** 2 for p in projections) / len(projections))
        assert got[i] == pytest.approx(population_std, rel=1e-10)


def test_projection_stds_work_on_a_memmap(tmp_path, acts):
    np.save(tmp_path / "tuning.npy", acts)
    mapped = np.load(tmp_path / "tuning.npy", mmap_mode="r")
    directions = random_directions(len(HEADS), D, seed=3)
    np.testing.assert_array_equal(projection_stds(mapped, HEADS, directions, H),
                                  projection_stds(acts, HEADS, directions, H))


def test_bad_inputs_raise_usage_error(acts, labels):
    with pytest.raises(UsageError):
        unit(mean_differences(acts, labels, np.flatnonzero(labels == 1), HEADS, H))
    with pytest.raises(UsageError):
        unit(mean_differences(acts, labels, np.arange(50), [(0, H)], H))
    with pytest.raises(UsageError):
        projection_stds(acts, HEADS, random_directions(len(HEADS), D + 1, seed=0), H)
    with pytest.raises(UsageError):
        projection_stds(acts, HEADS, random_directions(len(HEADS), D, seed=0), 5)
    same = np.repeat(acts[:1], 50, axis=0)
    with pytest.raises(UsageError, match="zero vector"):
        unit(mean_differences(same, labels, np.arange(50), HEADS, H))
