"""Reference intervention: forward pre-hooks that add δ_l to the o_proj input of edited layers.

API
    head_offsets(shifts) -> dict[int, torch.Tensor]
        shifts: HeadShifts or None; δ_l [heads·head_dim] as float32 tensors.
    shifted(model, shifts, start=0)   (context manager)
        While open, every forward of `model` on ONE unpadded sequence (batch of 1) gets δ_l
        added to layer l's o_proj input at positions >= start. No hooks when shifts is None.
    shifted_logits(model, input_ids, shifts, start=0, **forward_kwargs) -> logits [positions, vocab]
        One forward of one unpadded sequence (no cache) under `shifted`, in the model's dtype.

pyvene strips every hook from a model around each of its calls: open `shifted` only around
plain forwards, never around a pyvene call.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from iti.head_shifts import HeadShifts
from iti.models import get_o_proj, input_device


def head_offsets(shifts: HeadShifts | None) -> dict[int, torch.Tensor]:
    """δ_l per edited layer, built head by head from α, σ and θ (not from HeadShifts.layer_offsets)."""
    if shifts is None:
        return {}
    d = shifts.head_dim
    offsets: dict[int, torch.Tensor] = {}
    for layer, head, theta, sigma in zip(shifts.layers, shifts.heads, shifts.directions, shifts.sigmas):
        delta = offsets.setdefault(int(layer), torch.zeros(shifts.num_heads * d, dtype=torch.float64))
        delta[head * d:(head + 1) * d] += shifts.alpha * float(sigma) * torch.as_tensor(theta, dtype=torch.float64)
    return {layer: delta.float() for layer, delta in offsets.items()}


def _adder(delta: torch.Tensor, start: int):
    def hook(module, args):
        x = args[0]
        if x.shape[0] != 1:
            raise ValueError("the legacy intervention runs one unpadded sequence at a time (batch of 1)")
        # A new tensor, so the caller's activations are never changed in place.
        x = x.clone()
        x[:, start:] += delta.to(x.device, x.dtype)
        return (x, *args[1:])
    return hook


@contextmanager
def shifted(model, shifts: HeadShifts | None, start: int = 0):
    handles = []
    try:
        for layer, delta in head_offsets(shifts).items():
            handles.append(get_o_proj(model, layer).register_forward_pre_hook(_adder(delta, start)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def shifted_logits(model, input_ids, shifts, start: int = 0, **forward_kwargs) -> torch.Tensor:
    with shifted(model, shifts, start=start):
        ids = torch.tensor([[int(t) for t in input_ids]], device=input_device(model))
        return model(input_ids=ids, use_cache=False, **forward_kwargs).logits[0]
