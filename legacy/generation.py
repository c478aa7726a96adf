"""Reference greedy decoding: one sequence at a time, by default a full forward per new token (no KV cache).

API
    greedy_generate(model, prompt_ids, shifts=None, max_new_tokens=50, eos_token_id=None,
                    return_logits=False, use_cache=False) -> list[int]  (or (list[int], logits [steps, vocab] float32))
        prompt_ids: the prompt's token ids (BOS included if the tokenizer adds it), no padding.
        Returns the new tokens only; stops after an eos token (kept, as transformers' generate
        does) or after max_new_tokens. eos_token_id: int, list or None (then the model's
        generation_config). The shift (docs/method.md §5) is on the last prompt token and on every
        generated token, i.e. positions >= len(prompt_ids) - 1 of each full forward.
        use_cache: the prompt in one forward, then each new token alone on the model's own KV
        cache (shifted at its one position): the same decoding, fast enough for long prompts.
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
                    eos_token_id: int | Sequence[int] | None = None, return_logits: bool = False,
                    use_cache: bool = False):
    eos = _eos_ids(model, eos_token_id)
    tokens = [int(t) for t in prompt_ids]
    new: list[int] = []
    step_logits = []
    cache = None
    for _ in range(max_new_tokens):
        if cache is None:  # every token so far, shifted from the last prompt token on
            ids, start = tokens + new, len(tokens) - 1
        else:  # the newest token alone, after the cached ones
            ids, start = new[-1:], 0
        with shifted(model, shifts, start=start):
            outputs = model(input_ids=torch.tensor([ids], device=input_device(model)), cache=cache, use_cache=use_cache)
        cache = outputs.cache if use_cache else None
        logits = outputs.logits[0, -1].float().cpu()
        step_logits.append(logits)
        new.append(int(logits.argmax()))
        if new[-1] in eos:
            break
    if return_logits:
        return new, torch.stack(step_logits) if step_logits else torch.empty(0)
    return new
