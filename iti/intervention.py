"""The intervention: head shifts added to the o_proj input of the selected heads, through pyvene.

Each edited layer gets one pyvene intervention on `<layer>.<o_proj>.input` that adds the layer's
offset δ_l (all its selected heads' α·σ·θ, laid out in [heads·head_dim]) at the positions of the
schedule (docs/method.md §5), which travel with each call as data:

- scoring answers, CE and KL: a [batch, seq] mask of the positions to shift (answer tokens; every
  real token), so each padded row has its own positions and padding gets nothing; it is handed to
  every intervention through pyvene's per-call `subspaces` argument;
- generation with a KV cache: no mask, meaning the last position of every forward, i.e. the prompt's
  last token, then each new token (prompts left-padded so that every row ends at the last position).
"""
from __future__ import annotations

from pathlib import Path

import torch

from iti.head_shifts import HeadShifts
from iti.intervenable import IntervenableModel, pv
from iti.models import head_geometry, input_device, model_sites


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
    """A causal LM with a set of head shifts applied through pyvene.

    `shifted(...)` runs a forward with the shift at the given positions; `generate(...)` decodes
    with the generation schedule. Without shifts (None or no heads) both run the plain model.
    """

    def __init__(self, model, shifts: HeadShifts | None):
        self.model = model
        self.shifts = shifts
        self._intervenable = None
        if shifts is not None and len(shifts.layers) > 0:
            geo = head_geometry(model.config)
            shifts.check_geometry(geo)
            sites = model_sites(model)
            dtype = model.get_input_embeddings().weight.dtype
            shifts.check_fits(str(dtype), torch.finfo(dtype).max)
            components = []
            for layer, offset in sorted(shifts.layer_offsets().items()):
                o_proj = model.get_submodule(f"{sites.layers}.{layer}.{sites.o_proj}")
                tensor = torch.as_tensor(offset).to(o_proj.weight.device, o_proj.weight.dtype)
                components.append({"component": f"{sites.o_proj_of(layer)}.input",
                                   "intervention": LayerShift(tensor)})
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


def load_shifted_model(model, head_shifts: HeadShifts | str | Path, alpha: float | None = None,
                       model_source: str | None = None, allow_other_model: bool = False) -> ShiftedModel:
    """Put a saved set of head shifts (a folder from edit_weight/validate_2fold) on a model, optionally at another α.

    Given `model_source` (the hub id or path the model was loaded from), shifts made for another model are refused.
    """
    shifts = head_shifts if isinstance(head_shifts, HeadShifts) else HeadShifts.load(head_shifts)
    if model_source is not None:
        shifts.check_model(model_source, allow_other_model)
    if alpha is not None:
        shifts = shifts.scaled(alpha)
    return ShiftedModel(model, shifts)
