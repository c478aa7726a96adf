"""Reference CE loss and KL wrt the original model: one sample per forward, shift at every position.

API
    sample_ce(model, input_ids, shifts=None) -> float
        Mean next-token cross-entropy over the sample's n-1 predictions (token t+1 from
        positions <= t), with the shift at every position.
    sample_kl(model, input_ids, shifts) -> float
        docs/method.md §6: Σ over all n positions and the vocabulary of p_orig·log(p_orig / p_shifted),
        divided by n.
    ce_kl(model, samples, shifts, progress=True) -> (mean CE, mean KL) over samples
        samples: token-id lists (already cut, e.g. to the first 128 tokens).
"""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from legacy.intervention import shifted_logits


def _logits(model, input_ids: Sequence[int], shifts) -> torch.Tensor:
    return shifted_logits(model, input_ids, shifts, start=0).double().cpu()


@torch.no_grad()
def sample_ce(model, input_ids: Sequence[int], shifts=None) -> float:
    logits = _logits(model, input_ids, shifts)
    targets = torch.tensor(list(input_ids)[1:])
    return float(torch.nn.functional.cross_entropy(logits[:-1], targets))


@torch.no_grad()
def sample_kl(model, input_ids: Sequence[int], shifts) -> float:
    log_p = torch.log_softmax(_logits(model, input_ids, None), dim=-1)
    log_q = torch.log_softmax(_logits(model, input_ids, shifts), dim=-1)
    return float((log_p.exp() * (log_p - log_q)).sum() / len(input_ids))


def ce_kl(model, samples: Sequence[Sequence[int]], shifts, progress: bool = True) -> tuple[float, float]:
    ces, kls = [], []
    for ids in tqdm(samples, desc="legacy CE/KL", disable=not progress):
        ces.append(sample_ce(model, ids, shifts))
        kls.append(sample_kl(model, ids, shifts))
    return sum(ces) / len(ces), sum(kls) / len(kls)
