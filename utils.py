"""The public honest_llama workflow's probe helpers, under their names, over iti.probes / iti.directions.

For scripts written against the public `utils.py`: same arguments, same return values. The
"separated" inputs are per-question lists of arrays [n_choices, L, H, d] (head-wise features
after einops 'b l (h d) -> b l h d'). Differences from the public helpers:
- equal accuracies are ranked as the public reversed argsort ranks them (iti.probes.top_heads; that
  order of ties depends on the NumPy build and CPU, as the public one's does);
- `use_random_dir` draws heads from a generator seeded with `seed`, not numpy's global state;
- get_separated_activations returns exactly one part per question (np.split at the total
  row count also gave a trailing empty part) and can take each row's question index instead
  of loading TruthfulQA.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from iti.directions import mean_differences, projection_stds, random_directions, unit
from iti.errors import UsageError
from iti.probes import (
    Head,
    fit_sklearn_probes,
    flattened_idx_to_layer_head,
    layer_head_to_flattened_idx,
    random_heads,
    top_heads,
)

__all__ = [
    "flattened_idx_to_layer_head",
    "get_com_directions",
    "get_interventions_dict",
    "get_separated_activations",
    "get_top_heads",
    "layer_head_to_flattened_idx",
    "train_probes",
]


def _stack(
    question_sets: Sequence[np.ndarray], separated_head_wise_activations: Sequence[np.ndarray],
    separated_labels: Sequence[Sequence[int]], num_layers: int, num_heads: int,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Rows of the given question sets, in order, as [N, L, H*d] with labels and each set's row indices."""
    parts = [separated_head_wise_activations[int(q)] for qs in question_sets for q in qs]
    acts = np.concatenate(parts, axis=0)
    if acts.ndim != 4 or acts.shape[1:3] != (num_layers, num_heads):
        raise UsageError(
            f"separated activations have per-row shape {acts.shape[1:]}, expected ({num_layers}, {num_heads}, d); "
            "rearrange the head-wise features with 'b l (h d) -> b l h d'"
        )
    labels = np.concatenate([np.asarray(separated_labels[int(q)]) for qs in question_sets for q in qs])
    bounds = np.cumsum([0] + [sum(len(separated_labels[int(q)]) for q in qs) for qs in question_sets])
    rows = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(question_sets))]
    return acts.reshape(acts.shape[0], num_layers, -1), labels, rows


def train_probes(
    seed: int, train_set_idxs: np.ndarray, val_set_idxs: np.ndarray,
    separated_head_wise_activations: Sequence[np.ndarray], separated_labels: Sequence[Sequence[int]],
    num_layers: int, num_heads: int,
) -> tuple[list[LogisticRegression], np.ndarray]:
    """(probes, all_head_accs_np): fitted scikit-learn probes and validation accuracies, flat [L*H]."""
    acts, labels, (train_rows, val_rows) = _stack(
        (train_set_idxs, val_set_idxs), separated_head_wise_activations, separated_labels, num_layers, num_heads
    )
    probes, result = fit_sklearn_probes(acts, labels, train_rows, val_rows, num_heads, seed)
    return probes, result.val_accuracies.ravel()


def get_top_heads(
    train_idxs: np.ndarray, val_idxs: np.ndarray, separated_activations: Sequence[np.ndarray],
    separated_labels: Sequence[Sequence[int]], num_layers: int, num_heads: int, seed: int,
    num_to_intervene: int, use_random_dir: bool = False,
) -> tuple[list[Head], list[LogisticRegression]]:
    """(top_heads, probes): the num_to_intervene most accurate heads (or random ones) and all probes."""
    probes, accs = train_probes(seed, train_idxs, val_idxs, separated_activations, separated_labels, num_layers, num_heads)
    if use_random_dir:
        return random_heads(num_layers, num_heads, num_to_intervene, seed), probes
    return top_heads(accs.reshape(num_layers, num_heads), num_to_intervene), probes


def get_com_directions(
    num_layers: int, num_heads: int, train_set_idxs: np.ndarray, val_set_idxs: np.ndarray,
    separated_head_wise_activations: Sequence[np.ndarray], separated_labels: Sequence[Sequence[int]],
) -> np.ndarray:
    """[L*H, d]: true mean minus false mean over train+val rows, per head, NOT normalised (as the public one)."""
    acts, labels, (rows,) = _stack(
        (np.concatenate([train_set_idxs, val_set_idxs]),),
        separated_head_wise_activations, separated_labels, num_layers, num_heads,
    )
    heads = [flattened_idx_to_layer_head(i, num_heads) for i in range(num_layers * num_heads)]
    return mean_differences(acts, labels, rows, heads, num_heads)


def get_separated_activations(
    labels: Sequence[int], head_wise_activations: np.ndarray, question_ids: np.ndarray | None = None,
    tqa_path: str | None = None,
) -> tuple[list[np.ndarray], list[list[int]], np.ndarray]:
    """(separated activations, separated labels, idxs_to_split_at) of tqa_mc2 rows, per question.

    Row counts per question come from `question_ids` (each row's question index, rows grouped
    question by question) or else from TruthfulQA's mc2 choices, whose labels must then match.
    """
    labels = [int(v) for v in labels]
    if len(labels) != len(head_wise_activations):
        raise UsageError(f"{len(labels)} labels but {len(head_wise_activations)} activation rows; load matching files")
    counts = _mc2_counts(labels, tqa_path) if question_ids is None else _counts_of(question_ids, len(labels))
    idxs_to_split_at = np.cumsum(counts)
    starts = idxs_to_split_at - counts
    separated_labels = [labels[a:b] for a, b in zip(starts, idxs_to_split_at)]
    return np.split(head_wise_activations, idxs_to_split_at[:-1]), separated_labels, idxs_to_split_at


def _counts_of(question_ids: np.ndarray, num_rows: int) -> np.ndarray:
    ids = np.asarray(question_ids, dtype=np.int64)
    if ids.shape != (num_rows,) or (ids < 0).any() or (np.diff(ids) < 0).any():
        raise UsageError("question_ids must give each row's question index, non-decreasing, one per row")
    return np.bincount(ids)


def _mc2_counts(labels: list[int], tqa_path: str | None) -> np.ndarray:
    """Choices per question of TruthfulQA's mc2 task, after checking the labels are exactly its labels."""
    from iti.data import load_truthfulqa

    questions = load_truthfulqa(tqa_path).multiple_choice
    expected = [int(label) for q in questions for label in q.mc2_labels]
    if labels != expected:
        raise UsageError(
            f"these {len(labels)} labels are not TruthfulQA's {len(expected)} mc2 labels in MC order; "
            "use the tqa_mc2 features or pass question_ids"
        )
    return np.array([len(q.mc2_labels) for q in questions])


def get_interventions_dict(
    top_heads: Sequence[Head], probes: Sequence[LogisticRegression], tuning_activations: np.ndarray, num_heads: int,
    use_center_of_mass: bool, use_random_dir: bool, com_directions: np.ndarray | None, seed: int = 42,
    module_name: str = "model.layers.{}.self_attn.o_proj",
) -> dict[str, list[tuple[int, np.ndarray, float]]]:
    """{o_proj module name: [(head, unit direction [d], proj_val_std), ...] in head order} for the given heads.

    As the public helper: the shift goes on the input of that module (pyvene component
    `model.layers[l].self_attn.o_proj.input`); the direction is the center of mass
    (com_directions [L*H, d]) if use_center_of_mass, else a random normal vector if
    use_random_dir (from a generator seeded with `seed`, not numpy's global state), else the
    probe's coef_; proj_val_std is np.std of the tuning activations [N, L, H, d] projected on it.
    """
    acts = np.asarray(tuning_activations)
    if acts.ndim != 4 or acts.shape[2] != num_heads:
        raise UsageError(
            f"tuning activations have shape {acts.shape}, expected [rows, layers, {num_heads}, head_dim]; "
            "rearrange the head-wise features with 'b l (h d) -> b l h d'"
        )
    heads = [(int(layer), int(head)) for layer, head in top_heads]
    flat = [layer_head_to_flattened_idx(layer, head, num_heads) for layer, head in heads]
    if use_center_of_mass:
        if com_directions is None:
            raise UsageError("use_center_of_mass needs com_directions; compute them with get_com_directions")
        raw = np.stack([np.asarray(com_directions[i], dtype=np.float64).reshape(-1) for i in flat])
    elif use_random_dir:
        raw = random_directions(len(heads), acts.shape[3], seed)
    else:
        raw = np.stack([np.asarray(probes[i].coef_, dtype=np.float64).reshape(-1) for i in flat])
    directions = unit(raw)
    sigmas = projection_stds(acts.reshape(*acts.shape[:2], -1), heads, directions, num_heads)
    interventions: dict[str, list[tuple[int, np.ndarray, float]]] = {}
    for (layer, head), direction, sigma in zip(heads, directions, sigmas):
        interventions.setdefault(module_name.format(layer), []).append((head, direction, float(sigma)))
    for entries in interventions.values():
        entries.sort(key=lambda entry: entry[0])
    return interventions
