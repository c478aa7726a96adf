"""Reference extraction: one prompt per forward, the o_proj inputs read by forward pre-hooks.

API
    prompt_activations(model, tokenizer, prompt) -> (head_wise [L, heads·head_dim], layer_wise [L+1, hidden])
        both float32 numpy, read at the prompt's last token (BOS as the tokenizer adds it).
    get_activations(model, tokenizer, prompts, progress=True) -> (head_wise [N, L, G], layer_wise [N, L+1, hidden])
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from iti.geometry import head_geometry
from iti.models import get_o_proj, input_device


@torch.no_grad()
def prompt_activations(model, tokenizer, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    num_layers = head_geometry(model.config).num_layers
    captured: dict[int, torch.Tensor] = {}

    def capture(layer):
        def hook(module, args):
            captured[layer] = args[0][0, -1].float().cpu()
        return hook

    handles = [get_o_proj(model, layer).register_forward_pre_hook(capture(layer)) for layer in range(num_layers)]
    try:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(input_device(model))
        outputs = model(input_ids=ids, output_hidden_states=True, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    head_wise = torch.stack([captured[layer] for layer in range(num_layers)])
    layer_wise = torch.stack([h[0, -1].float().cpu() for h in outputs.hidden_states])
    return head_wise.numpy(), layer_wise.numpy()


def get_activations(model, tokenizer, prompts: list[str], progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rows = [prompt_activations(model, tokenizer, p) for p in tqdm(prompts, desc="legacy activations", disable=not progress)]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])
