"""The intervention: head shifts added to the o_proj input of the selected heads, through pyvene.

Each edited layer gets one pyvene intervention on `<layer>.<o_proj>.input` that adds the layer's
offset δ_l (all its selected heads' α·σ·θ, laid out in [heads·head_dim]) at the positions of the
schedule (docs/method.md §5), which travel with each call as data:

- scoring answers, CE and KL: a [batch, seq] mask of the positions to shift (answer tokens; every
  real token), so each padded row has its own positions and padding gets nothing; it is handed to
  every intervention through pyvene's per-call `subspaces` argument;
- generation with a KV cache: no mask, meaning the last position of every forward, i.e. the prompt's
  last token, then each new token (prompts left-padded so that every row ends at the last position).

ShiftedModel serves the scripts; the library path (iti.apply) installs the same offsets as AppliedShifts.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import torch

from iti.errors import UsageError
from iti.head_shifts import HeadShifts
from iti.intervenable import IntervenableModel, pv
from iti.geometry import head_geometry
from iti.models import get_o_proj, input_device, model_sites

# Where AppliedShifts adds δ: "all" every position (as a baked model, and lm-eval's steered model); "generation"
# the paper's schedule (docs/method.md §5).
POSITIONS = ("all", "generation")


def layer_offsets_on(model, shifts: HeadShifts) -> dict[int, torch.Tensor]:
    """δ_l of each edited layer, on its o_proj's device and in its dtype, once the shifts are known to be made for
    this model's geometry and to be numbers of its dtype (UsageError otherwise)."""
    geo = head_geometry(model.config)
    shifts.check_geometry(geo)
    dtype = model.get_input_embeddings().weight.dtype
    shifts.check_fits(str(dtype), torch.finfo(dtype).max)
    offsets = {}
    for layer, offset in sorted(shifts.layer_offsets().items()):
        weight = get_o_proj(model, layer).weight
        offsets[layer] = torch.as_tensor(offset).to(weight.device, weight.dtype)
    return offsets


class LayerShift(pv.SourcelessIntervention):
    """Adds one layer's offset δ_l to the o_proj input at the positions its call names."""

    def __init__(self, offset: torch.Tensor):
        super().__init__(keep_last_dim=True)
        self.register_buffer("offset", offset)

    def forward(self, base, source=None, subspaces=None):
        """`subspaces`: this call's [batch, seq] mask of the positions to shift; None: the last position."""
        offset = self.offset.to(base.dtype)
        if subspaces is None:
            base[:, -1] += offset
            return base
        return base + subspaces.to(base.device, base.dtype).unsqueeze(-1) * offset


class ShiftedModel:
    """A causal LM with head shifts applied through pyvene; without shifts (None or no heads) the plain model."""

    def __init__(self, model, shifts: HeadShifts | None):
        self.model = model
        self.shifts = shifts
        self._intervenable = None
        if shifts is not None and len(shifts.layers) > 0:
            sites = model_sites(model)
            components = [{"component": f"{sites.o_proj_of(layer)}.input", "intervention": LayerShift(offset)}
                          for layer, offset in layer_offsets_on(model, shifts).items()]
            self._intervenable = IntervenableModel(components, model)

    @property
    def active(self) -> bool:
        return self._intervenable is not None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 shift_mask: torch.Tensor | None = None, **model_kwargs):
        """One forward. `shift_mask` [batch, seq] marks the positions to shift; default: every real token."""
        device = input_device(self.model)
        inputs = {"input_ids": input_ids.to(device), **model_kwargs}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask.to(device)
        if not self.active:
            return self.model(**inputs)
        if shift_mask is None:
            shift_mask = attention_mask[:, -input_ids.shape[1]:] if attention_mask is not None \
                else torch.ones_like(input_ids)
        masks = [shift_mask.to(device)] * len(self._intervenable.interventions)
        _, outputs = self._intervenable(inputs, subspaces=masks)
        return outputs

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **generate_kwargs) -> torch.Tensor:
        """Decode from left-padded prompts; the shift goes on the last prompt token and each new token."""
        device = input_device(self.model)
        inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        if not self.active:
            return self.model.generate(**inputs, **generate_kwargs)
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generation needs left-padded prompts (every row's last token real)")
        _, sequences = self._intervenable.generate(inputs, intervene_on_prompt=True, **generate_kwargs)
        return sequences


def shifts_at(head_shifts: HeadShifts | str | Path, alpha: float | None = None) -> HeadShifts:
    """Head shifts, or those saved in a folder, at their own strength or at `alpha`."""
    shifts = head_shifts if isinstance(head_shifts, HeadShifts) else HeadShifts.load(head_shifts)
    return shifts if alpha is None else shifts.scaled(alpha)


class AppliedShifts:
    """Head shifts installed on a model's own forward until `remove()` (or the end of a `with` block): forward
    pre-hooks add δ_l to the o_proj input of each edited layer, so `model(...)` and `model.generate(...)` keep
    Hugging Face's interface, with any padding. pyvene cannot do this: an IntervenableModel hooks the model only
    around each call made through it, and strips every hook of the model (ours too) before and after.

    `positions`: "all" shifts every position. "generation" is the paper's schedule: in a forward with no cache
    (or an empty one, as generate's first step), each row's last real token, found from the attention mask, so
    prompts may be padded on either side; in a forward on a filled cache, every new token.
    """

    def __init__(self, model, shifts: HeadShifts, positions: str = "all"):
        if positions not in POSITIONS:
            raise UsageError(f"positions {positions!r} is not one of {', '.join(POSITIONS)}")
        offsets = layer_offsets_on(model, shifts)  # every check before the first hook
        self.positions = positions
        # Under "generation", the [batch, seq] positions to shift in the forward under way (None between forwards).
        self._scheduled: torch.Tensor | None = None
        self._handles = [get_o_proj(model, layer).register_forward_pre_hook(self._adder(offset))
                         for layer, offset in offsets.items()]
        if positions == "generation" and offsets:
            self._signature = inspect.signature(model.forward)
            self._handles.append(model.register_forward_pre_hook(self._schedule, with_kwargs=True))
            self._handles.append(model.register_forward_hook(self._forget, always_call=True))

    def remove(self) -> None:
        """Take the shifts off: the model computes exactly as before they were applied."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> AppliedShifts:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def _adder(self, offset: torch.Tensor):
        def add(module, args):
            inputs = args[0]
            if self.positions == "all":
                return (inputs + offset, *args[1:])
            if self._scheduled is None:
                raise UsageError("head shifts applied with positions='generation' take their positions from the "
                                 "model's own call; call the model, not one of its layers")
            scheduled = self._scheduled.to(inputs.device, inputs.dtype).unsqueeze(-1)
            return (inputs + scheduled * offset, *args[1:])
        return add

    def _schedule(self, model, args, kwargs) -> None:
        call = self._signature.bind_partial(*args, **kwargs).arguments
        tokens = call.get("input_ids")
        if tokens is None:
            tokens = call["inputs_embeds"]
        batch, width = tokens.shape[:2]
        cache = call.get("cache")
        if cache is not None and cache.get_seq_length() > 0:
            self._scheduled = torch.ones(batch, width, dtype=torch.bool)
            return
        mask = call.get("attention_mask")
        if mask is None:
            last = torch.full((batch,), width - 1)
        elif mask.dim() == 2:
            last = width - 1 - mask.flip(-1).cpu().argmax(-1)
        else:
            raise UsageError("positions='generation' finds each row's last token from a [batch, seq] attention mask; "
                             f"this call's mask has shape {tuple(mask.shape)}")
        self._scheduled = torch.zeros(batch, width, dtype=torch.bool)
        self._scheduled[torch.arange(batch), last] = True

    def _forget(self, model, args, output) -> None:
        self._scheduled = None
