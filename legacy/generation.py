"""Reference greedy decoding: one sequence at a time, no KV cache, a full forward per new token.

API
    greedy_generate(model, prompt_ids, shifts=None, max_new_tokens=50, eos_token_id=None,
                    return_logits=False) -> list[int]  (or (list[int], logits [steps, vocab] float32))
        prompt_ids: the prompt's token ids (BOS included if the tokenizer adds it), no padding.
        Returns the new tokens only; stops after an eos token (kept, as transformers' generate
        does) or after max_new_tokens. eos_token_id: int, list or None (then the model's
        generation_config). The shift (spec §5) is on the last prompt token and on every
        generated token, i.e. positions >= len(prompt_ids) - 1 of each full forward.
"""
from __future__ import annotations

from typing import Sequence

import torch

from iti.models import input_device
from legacy.intervention import shifted


def _eos_ids(model, eos_token_id) -> set[int]:
    if eos_token_id is None:
        eos_token_id = getattr(model.generation_config, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    return {int(eos_token_id)} if isinstance(eos_token_id, int) else {int(t) for t in eos_token_id}


@torch.no_grad()
def greedy_generate(model, prompt_ids: Sequence[int], shifts=None, max_new_tokens: int = 50,
                    eos_token_id: int | Sequence[int] | None = None, return_logits: bool = False):
    eos = _eos_ids(model, eos_token_id)
    tokens = [int(t) for t in prompt_ids]
    new: list[int] = []
    step_logits = []
    with shifted(model, shifts, start=len(tokens) - 1):
        for _ in range(max_new_tokens):
            ids = torch.tensor([tokens + new], device=input_device(model))
            logits = model(input_ids=ids, use_cache=False).logits[0, -1].float().cpu()
            step_logits.append(logits)
            new.append(int(logits.argmax()))
            if new[-1] in eos:
                break
    if return_logits:
        return new, torch.stack(step_logits) if step_logits else torch.empty(0)
    return new
