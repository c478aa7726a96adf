"""Independent reference computations for tests: plain forward hooks, one prompt at a time.

Written without the package's extraction or intervention code, so a test comparing the two
checks the package against something it does not share.
"""
from __future__ import annotations

import torch


def o_proj_modules(model) -> list[torch.nn.Module]:
    return [layer.self_attn.o_proj for layer in model.model.layers]


@torch.no_grad()
def last_token_o_proj_inputs(model, tokenizer, prompt: str) -> torch.Tensor:
    """[L, heads·d]: the o_proj input of every layer at the prompt's last token, one forward, no padding."""
    captured = []
    handles = [m.register_forward_pre_hook(lambda mod, args: captured.append(args[0][0, -1].clone()))
               for m in o_proj_modules(model)]
    try:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        model(input_ids=ids)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(captured)


@torch.no_grad()
def last_token_hidden_states(model, tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model(input_ids=ids, output_hidden_states=True)
    return torch.stack([h[0, -1] for h in out.hidden_states])
