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


def public_top_heads(accuracies, k: int) -> list[tuple[int, int]]:
    """The public ranking of heads, as its utils.get_top_heads describes it: flatten the [layers, heads]
    accuracies layer by layer, sort them with NumPy's default argsort (ascending), read that order
    backwards and keep the first k; flattened index i is head (i // heads, i % heads)."""
    import numpy as np

    accuracies = np.asarray(accuracies)
    ascending = list(np.argsort(accuracies.reshape(-1)))
    best_first = ascending[::-1][:k]
    return [(int(i) // accuracies.shape[1], int(i) % accuracies.shape[1]) for i in best_first]


def public_split_draws(num_questions: int, num_fold: int, val_ratio: float, seed: int):
    """The public validate_2fold's random draws, written out from its documented order, on NumPy's
    global legacy generator (state restored afterwards):
      1. np.random.seed(seed), once, before anything else draws;
      2. the questions are cut into num_fold contiguous parts (np.array_split);
      3. per fold i, in order: development = the other parts in order; training questions =
         np.random.choice(development, int(len(development) * (1 - val_ratio)), replace=False),
         kept in drawn order; validation = the development questions not drawn, in order;
      4. still in fold i, its evaluation: CE, then KL, each first shuffles OpenWebText with the
         `datasets` library without a seed (which takes one np.random.random() to seed itself), then
         picks its 100 samples with np.random.choice(100, 100, replace=False).
    Returns [(train, val, test)] per fold."""
    import numpy as np

    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        parts = np.array_split(np.arange(num_questions), num_fold)
        splits = []
        for i in range(num_fold):
            development = np.concatenate([parts[j] for j in range(num_fold) if j != i])
            train = np.random.choice(development, size=int(len(development) * (1 - val_ratio)), replace=False)
            val = np.array([q for q in development if q not in set(train.tolist())])
            splits.append((train, val, parts[i]))
            for _evaluation in ("CE", "KL"):
                np.random.random()
                np.random.choice(100, 100, replace=False)
        return splits
    finally:
        np.random.set_state(saved)
