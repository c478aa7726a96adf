"""Reference head ranking and question splits, the public workflow's way, written out from its description.

API
    public_top_heads(accuracies [layers, heads], k) -> [(layer, head)] best first
        Flatten the accuracies layer by layer, sort them with NumPy's default argsort (ascending),
        read that order backwards and keep the first k; flattened index i is head (i // heads, i % heads).
    public_split_draws(num_questions, num_fold, val_ratio, seed) -> [(train, val, test)] per fold
        The public validate_2fold's random draws on NumPy's global legacy generator (its state is
        restored afterwards), in its order:
          1. np.random.seed(seed), once, before anything else draws;
          2. the questions are cut into num_fold contiguous parts (np.array_split);
          3. per fold i, in order: development = the other parts in order; training questions =
             np.random.choice(development, int(len(development) * (1 - val_ratio)), replace=False),
             kept in drawn order; validation = the development questions not drawn, in order;
          4. still in fold i, its evaluation: CE, then KL, each first shuffles OpenWebText with the
             `datasets` library without a seed (which takes one np.random.random() to seed itself),
             then picks its 100 samples with np.random.choice(100, 100, replace=False).
"""
from __future__ import annotations

import numpy as np


def public_top_heads(accuracies, k: int) -> list[tuple[int, int]]:
    accuracies = np.asarray(accuracies)
    ascending = list(np.argsort(accuracies.reshape(-1)))
    best_first = ascending[::-1][:k]
    return [(int(i) // accuracies.shape[1], int(i) % accuracies.shape[1]) for i in best_first]


def public_split_draws(num_questions: int, num_fold: int, val_ratio: float,
                       seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        parts = np.array_split(np.arange(num_questions), num_fold)
        splits = []
        for i in range(num_fold):
            development = np.concatenate([parts[j] for j in range(num_fold) if j != i])
            train = np.random.choice(development, size=int(len(development) * (1 - val_ratio)), replace=False)
            val = np.array([q for q in development if q not in set(train.tolist())])
            splits.append((train, val, parts[i]))
            for _evaluation in ("CE", "KL"):
                np.random.random()
                np.random.choice(100, 100, replace=False)
        return splits
    finally:
        np.random.set_state(saved)
