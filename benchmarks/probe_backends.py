"""The two probe backends on one split: do the batched torch probes pick the heads scikit-learn's pick, and how fast?"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np

from benchmarks.timing import timed
from iti.probes import top_heads, train_probes


@dataclass(frozen=True)
class BackendComparison:
    """How the batched torch probes agree with scikit-learn's on one split, and both wall times."""

    heads: int
    k: int
    top_k_overlap: int
    mean_abs_acc_diff: float
    max_abs_acc_diff: float
    torch_seconds: float
    sklearn_seconds: float


def sklearn_threads(limit: int):
    """scikit-learn's BLAS/OpenMP thread pools limited to `limit` threads (0: the libraries' default)."""
    if not limit:
        return nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=limit)


def compare_backends(acts: np.ndarray, labels: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                     num_heads: int, k: int = 48, device: str = "cpu", seed: int = 42,
                     threads: int = 0) -> BackendComparison:
    """Fit both backends on the same split, each warmed up once on a small input (one layer; one head for
    scikit-learn); the top-k overlap (k at most the number of heads), the accuracy gaps and the timings.
    `threads` limits scikit-learn's thread pools (0: the libraries' default)."""
    small = np.ascontiguousarray(acts[:, :1])
    train_probes(small, labels, train_rows, val_rows, num_heads, backend="torch", device=device, seed=seed)
    fast, torch_seconds = timed(lambda: train_probes(acts, labels, train_rows, val_rows, num_heads, backend="torch",
                                                     device=device, seed=seed), device)
    with sklearn_threads(threads):
        train_probes(small[:, :, :acts.shape[2] // num_heads], labels, train_rows, val_rows, 1, backend="sklearn",
                     seed=seed)
        reference, sklearn_seconds = timed(lambda: train_probes(acts, labels, train_rows, val_rows, num_heads,
                                                                backend="sklearn", seed=seed), "cpu")
    k = min(k, fast.val_accuracies.size)
    overlap = len(set(top_heads(fast.val_accuracies, k)) & set(top_heads(reference.val_accuracies, k)))
    gap = np.abs(fast.val_accuracies - reference.val_accuracies)
    return BackendComparison(fast.val_accuracies.size, k, overlap, float(gap.mean()), float(gap.max()), torch_seconds,
                             sklearn_seconds)
