"""From activations to HeadShifts: probes, head choice, directions, σ (ITI_SPEC.md section 4)."""
from __future__ import annotations

import math

import numpy as np

from iti.directions import center_of_mass_directions, probe_directions, projection_stds, random_directions
from iti.errors import UsageError
from iti.head_shifts import HeadShifts
from iti.probes import ProbeResult, random_heads, top_heads, train_probes

METHODS = ("center_of_mass", "probe", "random")


def build_head_shifts(
    acts: np.ndarray,
    labels: np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    tuning_acts: np.ndarray,
    num_heads: int,
    head_dim: int,
    k: int,
    alpha: float,
    method: str,
    use_random_heads: bool,
    backend: str,
    seed: int,
    provenance: dict,
    device: str = "cpu",
) -> HeadShifts:
    """Train per-head probes, pick k heads (top accuracy or random), then directions and σ.

    `acts`/`labels` are the probing features (tqa_mc2); `tuning_acts` only set σ.
    Random heads and random directions both draw from `seed`, each from its own generator.
    """
    check_features(acts, tuning_acts, num_heads, head_dim, method)
    probes = train_probes(acts, labels, train_rows, val_rows, num_heads, backend=backend, device=device, seed=seed)
    return head_shifts_from_probes(probes, acts, labels, train_rows, val_rows, tuning_acts, num_heads, head_dim, k,
                                   alpha, method, use_random_heads, backend, seed, provenance)


def check_features(acts: np.ndarray, tuning_acts: np.ndarray, num_heads: int, head_dim: int, method: str) -> None:
    if method not in METHODS:
        raise UsageError(f"unknown direction method {method!r}; use one of {', '.join(METHODS)}")
    if acts.ndim != 3 or acts.shape[2] != num_heads * head_dim:
        raise UsageError(
            f"activations of shape {acts.shape} do not match {num_heads} heads x head_dim {head_dim}; "
            "take head_dim from the model config"
        )
    if tuning_acts.ndim != 3 or tuning_acts.shape[1:] != acts.shape[1:]:
        raise UsageError(
            f"tuning activations {tuning_acts.shape} and probing activations {acts.shape} differ in "
            "layers or width; extract both from the same model"
        )


def head_shifts_from_probes(
    probes: ProbeResult,
    acts: np.ndarray,
    labels: np.ndarray,
    train_rows: np.ndarray,
    val_rows: np.ndarray,
    tuning_acts: np.ndarray,
    num_heads: int,
    head_dim: int,
    k: int,
    alpha: float,
    method: str,
    use_random_heads: bool,
    backend: str,
    seed: int,
    provenance: dict,
) -> HeadShifts:
    """The k heads, their directions and σ from probes already trained on these rows (so that one
    fold's probes serve every K it tries)."""
    num_layers = acts.shape[1]
    heads = random_heads(num_layers, num_heads, k, seed) if use_random_heads else top_heads(probes.val_accuracies, k)
    if method == "center_of_mass":
        rows = np.concatenate([np.asarray(train_rows), np.asarray(val_rows)])
        directions = center_of_mass_directions(acts, labels, rows, heads, num_heads)
    elif method == "probe":
        directions = probe_directions(probes, heads)
    else:
        directions = random_directions(k, head_dim, seed)
    pairs = np.asarray(heads, dtype=np.int64).reshape(-1, 2)
    return HeadShifts(
        layers=pairs[:, 0],
        heads=pairs[:, 1],
        directions=directions,
        sigmas=projection_stds(tuning_acts, heads, directions, num_heads),
        probe_accuracies=probes.val_accuracies[pairs[:, 0], pairs[:, 1]],
        alpha=alpha,
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        provenance={
            **provenance,
            "K": k,
            "method": method,
            "use_random_heads": use_random_heads,
            "probe_backend": backend,
            "seed": seed,
        },
    )


def choose_setting(table: list[dict], metric: str, max_kl: float | None = None) -> tuple[dict, str | None]:
    """The row of `table` (one per (K, α) tried, each with `metric` and, under a budget, "KL") with the
    best `metric` among those with KL ≤ `max_kl`; equal scores go to the weaker intervention (smaller
    α, then smaller K). With no row inside the budget, the row of smallest KL, and a note saying so."""
    if not table:
        raise UsageError("no (K, alpha) setting to choose from; give --num_heads and --alpha values")
    within = table if max_kl is None else [row for row in table if row["KL"] <= max_kl]
    if not within:
        smallest = min(table, key=lambda row: (row["KL"], row["alpha"], row["K"]))
        return smallest, (f"no setting kept KL within --max_kl {max_kl:g}; took the smallest KL "
                          f"({smallest['KL']:.4g}: K {smallest['K']}, alpha {smallest['alpha']:g})")
    if any(math.isnan(row[metric]) for row in within):
        raise UsageError(f"--select_metric {metric} has no value on the validation questions; "
                         "add the metrics it needs to --metrics")
    return min(within, key=lambda row: (-row[metric], row["alpha"], row["K"])), None
