"""Shift directions per selected head and the spread σ along them (docs/method.md §4)."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np

from iti.errors import UsageError
from iti.probes import Head, ProbeResult, head_dim_of, layer_heads


def _head_blocks(acts: np.ndarray, rows: np.ndarray | slice, heads: Sequence[Head],
                 num_heads: int) -> Iterator[tuple[list[int], np.ndarray]]:
    """Per layer of `heads`: their positions in `heads` and their activations on `rows` as float64 [n, k, d],
    each layer of the activations read once."""
    for layer, head in heads:
        if not (0 <= layer < acts.shape[1] and 0 <= head < num_heads):
            raise UsageError(f"head ({layer}, {head}) is outside the activations' {acts.shape[1]} layers x "
                             f"{num_heads} heads")
    by_layer: dict[int, list[int]] = defaultdict(list)
    for position, (layer, _) in enumerate(heads):
        by_layer[layer].append(position)
    for layer, positions in by_layer.items():
        block = layer_heads(acts, rows, layer, num_heads)[:, [heads[p][1] for p in positions]]
        yield positions, block.astype(np.float64)


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; a zero row has no direction, so it is refused."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    if (norms == 0).any():
        raise UsageError("a direction is the zero vector; check that both labels occur among the rows used")
    return vectors / norms


def mean_differences(acts: np.ndarray, labels: np.ndarray, rows: np.ndarray, heads: Sequence[Head],
                     num_heads: int) -> np.ndarray:
    """[K, d]: mean of the true rows minus mean of the false rows, per head, not normalised (unit() of it is the
    center-of-mass direction)."""
    rows = np.asarray(rows, dtype=np.int64)
    y = np.asarray(labels)[rows]
    if not ((y == 1).any() and (y == 0).any()):
        raise UsageError("center-of-mass directions need both true and false rows among the rows given")
    out = np.empty((len(heads), head_dim_of(acts, num_heads)))
    for positions, block in _head_blocks(acts, rows, heads, num_heads):
        out[positions] = block[y == 1].mean(axis=0) - block[y == 0].mean(axis=0)
    return out


def probe_directions(probe_result: ProbeResult, heads: Sequence[Head]) -> np.ndarray:
    """[K, d] unit probe weight vectors of the given heads."""
    num_layers, num_heads, _ = probe_result.coefs.shape
    pairs = np.asarray(heads, dtype=np.int64).reshape(-1, 2)
    if ((pairs < 0) | (pairs >= (num_layers, num_heads))).any():
        raise UsageError(f"a head lies outside the probes' {num_layers} layers x {num_heads} heads")
    return unit(probe_result.coefs[pairs[:, 0], pairs[:, 1]])


def random_directions(k: int, d: int, seed: int) -> np.ndarray:
    """[k, d] unit vectors, standard normal before normalising (the `--use_random_dir` direction)."""
    return unit(np.random.default_rng(seed).standard_normal((k, d)))


def projection_stds(tuning_acts: np.ndarray, heads: Sequence[Head], directions: np.ndarray,
                    num_heads: int) -> np.ndarray:
    """[K]: population std (ddof=0, np.std) of all tuning rows projected on each head's direction."""
    d = head_dim_of(tuning_acts, num_heads)
    if directions.shape != (len(heads), d):
        raise UsageError(f"directions have shape {directions.shape}; expected ({len(heads)}, {d}), one per head")
    out = np.empty(len(heads))
    for positions, block in _head_blocks(tuning_acts, slice(None), heads, num_heads):
        out[positions] = np.einsum("nkd,kd->nk", block, directions[positions]).std(axis=0)
    return out

