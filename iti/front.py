"""The settings worth their price (ITI_SPEC §11): in a table of (K, α) settings, each with its selection metric and
its KL wrt the original model, those that no other setting beats on the metric at no more KL.

A setting is on the front when no other setting of the same table has a better metric (in the metric's direction,
iti.metrics) and a lower-or-equal KL, or an equal metric and a lower KL. Settings with the same metric and KL are
on it together or off it together. A setting whose metric or KL was not measured is neither on the front nor
counted against the others.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from iti.metrics import BY_NAME, missing

Row = Mapping[str, object]


def front_flags(table: Sequence[Row], metric: str) -> list[bool | None]:
    """Per row of `table` (each with `metric` and "KL"), whether it is on the front; None for a row lacking either
    value (not measured: its price is unknown)."""
    sign = 1.0 if BY_NAME[metric].higher_is_better else -1.0
    # Scores oriented so that larger is better, whatever the metric's direction.
    points = [None if missing(row.get(metric)) or missing(row.get("KL")) else (sign * row[metric], row["KL"])
              for row in table]
    measured = [point for point in points if point is not None]
    return [None if point is None else not any(_dominates(other, point) for other in measured) for point in points]


def _dominates(other: tuple[float, float], point: tuple[float, float]) -> bool:
    """Whether `other` (score, KL) beats `point`: a better score at no more KL, or the same score at less KL."""
    (score, kl), (own_score, own_kl) = other, point
    return (score > own_score and kl <= own_kl) or (score == own_score and kl < own_kl)


def with_front(table: Sequence[Row], metric: str) -> list[dict]:
    """The rows of `table`, each with its "front" flag (front_flags)."""
    return [{**row, "front": flag} for row, flag in zip(table, front_flags(table, metric))]
