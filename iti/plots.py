"""Figures people would rather look at than tables (scripts choose the Agg backend; a notebook keeps its own)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from iti.files import atomic_write
from iti.front import front_flags
from iti.metrics import BY_NAME, missing


def head_accuracy_heatmap(scores: np.ndarray, title: str, label: str = "validation accuracy", ax=None):
    """Layers × heads scores as the paper's Figure 2 draws them: each layer's heads sorted by score, best left.
    Returns the figure (drawn on `ax` when given)."""
    import matplotlib.pyplot as plt

    ordered = -np.sort(-np.asarray(scores), axis=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4, 0.45 * ordered.shape[1] + 2), max(4, 0.22 * ordered.shape[0] + 1)))
    image = ax.imshow(ordered, aspect="auto", origin="lower", cmap="viridis")
    ax.set(xlabel="head (sorted by score within its layer)", ylabel="layer", title=title)
    ax.figure.colorbar(image, ax=ax, label=label)
    ax.figure.tight_layout()
    return ax.figure


# The α curves of a sweep: (metric, panel title).
SWEEP_PANELS = (("True*Info", "True*Info"), ("MC2", "MC2"), ("CE", "CE loss"), ("KL", "KL wrt original"))


def save_figure(fig, path: Path) -> Path:
    """The figure as a PNG under a temporary name, renamed into place."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def one_setting_rows(table):
    """The rows of iti.collect's table that ran one (K, α) (not a grid chosen from per fold), K and α as numbers."""
    return table[~table["K"].str.contains("/") & ~table["alpha"].str.contains("/")].astype({"K": int, "alpha": float})


def sweep_curves(table, path: Path) -> list[str]:
    """One panel per metric with values; each K's means over seeds against α (bars: std over seeds), from the
    baseline (α = 0 or K = 0, the same unshifted model for every K) at α = 0, also a dashed line. `table`:
    iti.collect's; rows that chose K or α per fold are left out. Returns the metrics plotted."""
    table = one_setting_rows(table)
    panels = [(key, label) for key, label in SWEEP_PANELS if table[key].notna().any()]
    if not panels:
        return []
    baseline = table[(table["alpha"] == 0) | (table["K"] == 0)]
    shifted = table[(table["alpha"] != 0) & (table["K"] > 0)].sort_values("alpha")
    # Figures made outside pyplot: a script's figures are freed with the figure, and a notebook shows none.
    fig = Figure(figsize=(4.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        base = baseline[key].mean() if baseline[key].notna().any() else None
        for k, group in shifted.groupby("K"):
            alphas, values, spread = list(group["alpha"]), list(group[key]), list(group[f"{key} std"].fillna(0))
            if base is not None:
                alphas, values, spread = [0.0] + alphas, [base] + values, [0.0] + spread
            ax.errorbar(alphas, values, yerr=spread, marker="o", capsize=3, label=f"K={k}")
        if base is not None:
            ax.axhline(base, color="gray", linestyle="--", label="baseline")
        ax.set(xlabel="α", title=label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    return [key for key, _ in panels]


def category_differences(frame, metric: str, path_of) -> list[Path]:
    """One horizontal bar chart per setting (K, α) of `frame` (iti.collect.category_table): each category's
    difference from the baseline, sorted; `path_of(K, α)` names each file."""
    paths = []
    for (k, alpha), group in frame.groupby(["K", "alpha"], sort=True):
        group = group.sort_values(f"Δ{metric}")
        fig = Figure(figsize=(6.5, 0.22 * len(group) + 1.4))
        ax = fig.subplots()
        values = group[f"Δ{metric}"].to_numpy()
        # The question count beside each name: a category of a few questions moves by a lot on one answer.
        labels = [f"{category} ({count})" for category, count in zip(group["category"], group["questions"])]
        ax.barh(labels, values, color=["tab:green" if v >= 0 else "tab:red" for v in values])
        ax.axvline(0, color="gray", linewidth=0.8)
        ax.set_xlabel(f"{metric}: ITI minus baseline (category mean; questions in brackets)")
        ax.set_title(f"K={k}, α={alpha}: per category", fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
        fig.tight_layout()
        paths.append(save_figure(fig, path_of(k, alpha)))
    return paths


# The trade-off figure's two kinds of settings: (table key, key of its choice, colour, legend name).
TRADEOFF_KINDS = (("iti", "chosen", "tab:blue", "ITI"), ("control", "control_chosen", "tab:orange", "control"))


def tradeoff_figure(path: Path, metric: str, folds: list[dict], max_kl: float | None = None) -> Path:
    """One panel per entry of `folds`: `metric` against KL, every setting a point (ITI's and, when given, the
    control's in another colour), each kind's front (iti.front) a step line (the best score any KL up to x buys),
    its choice ringed, and the budget `max_kl` a dashed line. Each entry: {"fold": index, or None for means over
    folds, "iti": table rows, "control": rows or None, "chosen": row or None, "control_chosen": row or None};
    rows without a KL or a score are left out. Returns `path`."""
    fig = Figure(figsize=(4.8 * len(folds), 3.9))
    axes = fig.subplots(1, len(folds), squeeze=False)[0]
    better = "higher" if BY_NAME[metric].higher_is_better else "lower"
    for ax, fold in zip(axes, folds):
        for kind, chosen, colour, name in TRADEOFF_KINDS:
            if fold.get(kind):
                _draw_settings(ax, metric, fold[kind], fold.get(chosen), colour, name, kind)
        if max_kl is not None:
            ax.axvline(max_kl, color="gray", linestyle="--", linewidth=0.9, label=f"budget KL ≤ {max_kl:g}")
        title = f"fold {fold['fold']}" if fold.get("fold") is not None else "means over folds (and seeds)"
        ax.set(xlabel="KL wrt the original model", ylabel=f"{metric} ({better} is better)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def _draw_settings(ax, metric: str, rows: list[dict], chosen: dict | None, colour: str, name: str, kind: str) -> None:
    """One kind's settings as points (gid `{kind} settings`), its front as a step line, its choice ringed."""
    measured = [row for row in rows if not missing(row.get(metric)) and not missing(row.get("KL"))]
    ax.scatter([row["KL"] for row in measured], [row[metric] for row in measured], color=colour, s=18,
               label=f"{name} settings", gid=f"{kind} settings", zorder=3)
    front = sorted((row["KL"], row[metric]) for row, on in zip(measured, front_flags(measured, metric)) if on)
    if front:
        ax.step(*zip(*front), where="post", color=colour, linewidth=1.2, label=f"{name} front")
    if chosen is not None and not missing(chosen.get("KL")):
        ax.scatter([chosen["KL"]], [chosen[metric]], s=150, facecolors="none", edgecolors=colour, linewidths=1.8,
                   label=f"{name} choice", gid=f"{kind} choice", zorder=4)


def sweep_tradeoff(table, metric: str, path: Path) -> Path | None:
    """tradeoff_figure of a sweep's settings (iti.collect's table): each run of one (K, α) a point, its `metric`
    against its KL (each a mean over folds, then seeds), the front drawn, nothing chosen; None when no row has both."""
    rows = [{"K": row["K"], "alpha": row["alpha"], metric: row[metric], "KL": row["KL"]}
            for row in one_setting_rows(table).to_dict("records")]
    if all(missing(row[metric]) or missing(row["KL"]) for row in rows):
        return None
    return tradeoff_figure(path, metric, [{"fold": None, "iti": rows, "control": None, "chosen": None,
                                           "control_chosen": None}])
