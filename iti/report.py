"""The probe report of one fold (docs/method.md §9): what a shared ITI artifact states about its probes.

Per head: accuracy and ROC AUC of its probe on the validation rows and on the test rows. The top
head (highest validation accuracy, ties broken as head selection breaks them) with its AUC. The best
single layer: a logistic probe (same settings as the head probes) on each layer's residual stream,
the embedding output excluded, ranked by validation accuracy; layer i is the stream after decoder
layer i, the numbering heads use. And the numbers of training, validation and test items and rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from iti.probes import ProbeResult, layer_heads, top_heads, train_probes


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN when a class is absent."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _scored(acts: np.ndarray, probes: ProbeResult, num_heads: int, labels: np.ndarray, val_rows: np.ndarray,
            test_rows: np.ndarray) -> dict[str, np.ndarray]:
    """Per probe in flattened order, the accuracy of `logit > 0` and the ROC AUC on the validation rows and on the
    test rows (when there are any); one layer of a memmap is read at a time."""
    table = {}
    for part, rows in (("val", val_rows), ("test", test_rows)):
        if len(rows):
            scores = np.concatenate([
                np.einsum("nhd,hd->hn", layer_heads(acts, rows, layer, num_heads).astype(np.float64),
                          probes.coefs[layer]) + probes.intercepts[layer][:, None]
                for layer in range(acts.shape[1])])
            table[f"{part}_accuracy"] = ((scores > 0) == labels[rows].astype(bool)).mean(axis=1)
            table[f"{part}_auc"] = np.array([roc_auc(labels[rows], row) for row in scores])
    return table


@dataclass
class ProbeReport:
    heads: pd.DataFrame   # one row per (layer, head): val/test accuracy and AUC
    layers: pd.DataFrame  # one row per layer: val/test accuracy and AUC of its residual-stream probe
    counts: dict[str, int]

    def top_head(self) -> dict:
        num_heads = int(self.heads["head"].max()) + 1
        layer, head = top_heads(self.heads.val_accuracy.to_numpy().reshape(-1, num_heads), 1)[0]
        return _row(self.heads, layer * num_heads + head)

    def best_layer(self) -> dict | None:
        """The first layer of highest validation accuracy (None without layer-wise features)."""
        return None if self.layers.empty else _row(self.layers, int(np.argmax(self.layers.val_accuracy.to_numpy())))

    def summary(self, selected: list[tuple[int, int]] | None = None) -> dict:
        """What the run's JSON and a model card show; `selected` heads add their mean accuracies."""
        out = {**self.counts, "top_head": self.top_head(), "best_layer": self.best_layer()}
        if selected:
            chosen = self.heads.set_index(["layer", "head"]).loc[list(selected)]
            out["selected_heads"] = {key: float(chosen[key].mean()) for key in chosen.columns}
        return out


def _row(frame: pd.DataFrame, index: int) -> dict:
    """One row as plain Python numbers, each column keeping its own type (ints stay ints)."""
    return {key: frame[key].iloc[index].item() for key in frame.columns}


def layer_probe_table(layer_acts: np.ndarray, labels: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                      test_rows: np.ndarray, backend: str, seed: int, device: str = "cpu",
                      progress: bool = True) -> pd.DataFrame:
    """One probe per decoder layer's residual stream (layer-wise features without the embedding output);
    accuracy and AUC on the validation rows and, when there are any, the test rows."""
    streams = layer_acts[:, 1:, :]
    probes = train_probes(streams, labels, train_rows, val_rows, num_heads=1, backend=backend, device=device,
                          seed=seed, progress=progress)
    scored = _scored(streams, probes, 1, labels, val_rows, test_rows)
    return pd.DataFrame({"layer": np.arange(streams.shape[1]), **scored})


def probe_report(acts: np.ndarray, labels: np.ndarray, item_ids: np.ndarray, probes: ProbeResult, num_heads: int,
                 train_rows: np.ndarray, val_rows: np.ndarray, test_rows: np.ndarray,
                 layer_table: pd.DataFrame | None = None) -> ProbeReport:
    """The fold's report from its head probes (trained on `train_rows`) and, when given, its layer probes."""
    labels = np.asarray(labels)
    num_layers = acts.shape[1]
    table = {"layer": np.repeat(np.arange(num_layers), num_heads), "head": np.tile(np.arange(num_heads), num_layers),
             **_scored(acts, probes, num_heads, labels, val_rows, test_rows)}
    counts = {}
    for part, rows in (("train", train_rows), ("val", val_rows), ("test", test_rows)):
        counts[f"{part}_items"] = int(len(np.unique(item_ids[rows])))
        counts[f"{part}_rows"] = int(len(rows))
    return ProbeReport(pd.DataFrame(table), layer_table if layer_table is not None else pd.DataFrame(), counts)


REPORT_COLUMNS = ("fold", "training items (rows)", "val accuracy", "test accuracy", "alpha", "heads",
                  "best layer (val acc)", "top head (val AUC)")


def report_table(rows: list[dict], alpha: float, num_heads: int) -> str:
    """The shared artifact's table (markdown): per fold ("-" for a baked model's single split), training samples,
    the selected heads' mean probe validation and test accuracy, α, K (a fold's own where it chose them), the best
    single layer and the top head with its AUC."""
    lines = ["| " + " | ".join(REPORT_COLUMNS) + " |", "|" + "---|" * len(REPORT_COLUMNS)]
    for summary in rows:
        selected = summary.get("selected_heads") or summary["top_head"]
        best = summary.get("best_layer")
        top = summary["top_head"]
        cells = [
            str(summary.get("fold", "-")), f"{summary['train_items']} ({summary['train_rows']})",
            _fmt(selected.get("val_accuracy")), _fmt(selected.get("test_accuracy")),
            f"{summary.get('alpha', alpha):g}", str(summary.get("K", num_heads)),
            f"{best['layer']} ({_fmt(best['val_accuracy'])})" if best else "-",
            f"L{top['layer']}H{top['head']} ({_fmt(top.get('val_auc'))})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{value:.3f}"
