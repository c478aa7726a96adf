"""Batches of token sequences: the one pad-id rule, padding on either side, longest-first batches.

Padded positions are masked out everywhere, so the pad id never changes a result; it only has to
be a valid token id. The rule: the tokenizer's pad token, else its end-of-sequence token, else 0.
"""
from __future__ import annotations

import numpy as np
import torch


def pad_token_id(tokenizer) -> int:
    """The id that fills padded positions (also `generate`'s pad_token_id)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def pad_batch(sequences: list[list[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), both [len(sequences), longest]. Right padding keeps every real token's position id,
    so a padded row equals the row alone (scoring); left padding puts every last token last (generation)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', not {side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        columns = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, columns] = torch.tensor(seq, dtype=torch.long)
        mask[row, columns] = 1
    return ids, mask


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Row indices in batches, longest first: padding stays small and an out-of-memory shows on the first batch."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
