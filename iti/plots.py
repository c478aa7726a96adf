"""Figures people would rather look at than tables."""
from __future__ import annotations

import numpy as np


def head_accuracy_heatmap(scores: np.ndarray, title: str, label: str = "validation accuracy", ax=None):
    """Layers × heads scores as the paper's Figure 2 draws them: each layer's heads sorted by score, best left.
    Returns the figure (drawn on `ax` when given)."""
    import matplotlib.pyplot as plt

    ordered = -np.sort(-np.asarray(scores), axis=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4, 0.45 * ordered.shape[1] + 2), max(4, 0.22 * ordered.shape[0] + 1)))
    image = ax.imshow(ordered, aspect="auto", origin="lower", cmap="viridis")
    ax.set_xlabel("head (sorted by score within its layer)")
    ax.set_ylabel("layer")
    ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, label=label)
    ax.figure.tight_layout()
    return ax.figure
