"""The intervention: head shifts added to the o_proj input of the selected heads, through pyvene.

Each edited layer gets one pyvene intervention on `<layer>.<o_proj>.input` that adds the layer's
offset δ_l (all its selected heads' α·σ·θ, laid out in [heads·head_dim]) at the positions of the
schedule (docs/method.md §5). One ShiftedModel may hold several settings of head shifts (issue 29: a K × α grid
in one batch): each intervention keeps every setting's δ_l as a row of one table, and each row of a batch names
its setting. Positions and settings travel with each call as data, as the table row to add at each position:

- scoring answers, CE and KL: a [batch, seq] table row per position: 0 (unshifted) outside the positions to shift
  (answer tokens; every real token), 1 + the row's setting at them, so each padded row has its own positions and
  padding gets nothing; it is handed to every intervention through pyvene's per-call `subspaces` argument;
- generation with a KV cache: a [batch] table row per batch row (1 + its setting), added at the last position of
  every forward, i.e. the prompt's last token, then each new token (prompts left-padded so that every row ends
  there).

Row 0 of the table is zeros and a row of a setting holds its δ_l exactly (zeros where it leaves the layer alone),
so a row of a batch computes bit for bit what it computes in the same batch under a ShiftedModel of its setting
alone (x + 0 = x); a setting of one ShiftedModel is the one-setting case of the same code.

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
    """Adds to one layer's o_proj input the row of its offset table that its call names for each position."""

    def __init__(self, offsets: torch.Tensor):
        """`offsets`: [1 + settings, width]: zeros, then each setting's δ_l (zeros for a setting not shifting this
        layer)."""
        super().__init__(keep_last_dim=True)
        self.register_buffer("offsets", offsets)

    def forward(self, base, source=None, subspaces=None):
        """`subspaces`: this call's table rows (ShiftedModel): [batch, seq] one per position; [batch] one per row,
        for its last position."""
        offsets = self.offsets.to(base.dtype)
        rows = subspaces.to(offsets.device)
        if rows.dim() == 1:
            base[:, -1] += offsets[rows]
            return base
        return base + offsets[rows]


def _offset_table(model, layer: int, per_setting: list[dict[int, torch.Tensor]]) -> torch.Tensor:
    """LayerShift's table of one layer: a zero row, then each setting's δ_l or zeros."""
    weight = get_o_proj(model, layer).weight
    zeros = torch.zeros(head_geometry(model.config).width, device=weight.device, dtype=weight.dtype)
    return torch.stack([zeros, *(offsets.get(layer, zeros) for offsets in per_setting)])


class ShiftedModel:
    """A causal LM under head shifts applied through pyvene: `shifts` one setting, or a list of settings, each row
    of a batch under the setting its call names. A setting without shifts (None or no heads) is the plain model:
    a call whose rows all have such settings runs the model alone."""

    def __init__(self, model, shifts: HeadShifts | None | list[HeadShifts | None]):
        self.model = model
        self.settings = list(shifts) if isinstance(shifts, (list, tuple)) else [shifts]
        self._shifting = torch.tensor([s is not None and len(s.layers) > 0 for s in self.settings], dtype=torch.bool)
        per_setting = [layer_offsets_on(model, s) if shifting else {}
                       for s, shifting in zip(self.settings, self._shifting.tolist())]
        layers = sorted(set().union(*per_setting))
        self._intervenable = None
        if layers:
            sites = model_sites(model)
            components = [{"component": f"{sites.o_proj_of(layer)}.input",
                           "intervention": LayerShift(_offset_table(model, layer, per_setting))} for layer in layers]
            self._intervenable = IntervenableModel(components, model)

    @property
    def active(self) -> bool:
        return self._intervenable is not None

    def shifts_setting(self, setting: int) -> bool:
        """Whether rows of this setting are shifted at all (else they are the plain model's)."""
        return bool(self._shifting[setting])

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 shift_mask: torch.Tensor | None = None, settings: torch.Tensor | None = None, **model_kwargs):
        """One forward. `shift_mask` [batch, seq] marks the positions to shift; default: every real token.
        `settings` [batch]: each row's setting (index into the settings); default: the only one."""
        device = input_device(self.model)
        inputs = {"input_ids": input_ids.to(device), **model_kwargs}
        if attention_mask is not None:
            inputs["attention_mask"] = attention_mask.to(device)
        rows = self._row_settings(settings, input_ids.shape[0])
        if not bool(self._shifting[rows].any()):
            return self.model(**inputs)
        if shift_mask is None:
            shift_mask = attention_mask[:, -input_ids.shape[1]:] if attention_mask is not None \
                else torch.ones_like(input_ids)
        table_rows = shift_mask.cpu().long() * (rows + 1).unsqueeze(1)
        _, outputs = self._intervenable(inputs, subspaces=self._per_intervention(table_rows.to(device)))
        return outputs

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, settings: torch.Tensor | None = None,
                 **generate_kwargs) -> torch.Tensor:
        """Decode from left-padded prompts; the shift goes on the last prompt token and each new token. `settings`
        as for a forward."""
        device = input_device(self.model)
        inputs = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        rows = self._row_settings(settings, input_ids.shape[0])
        if not bool(self._shifting[rows].any()):
            return self.model.generate(**inputs, **generate_kwargs)
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("generation needs left-padded prompts (every row's last token real)")
        _, sequences = self._intervenable.generate(inputs, intervene_on_prompt=True,
                                                   subspaces=self._per_intervention((rows + 1).to(device)),
                                                   **generate_kwargs)
        return sequences

    def _row_settings(self, settings: torch.Tensor | None, batch: int) -> torch.Tensor:
        if settings is None:
            if len(self.settings) != 1:
                raise ValueError(f"this model holds {len(self.settings)} settings: name each row's")
            return torch.zeros(batch, dtype=torch.long)
        rows = torch.as_tensor(settings, dtype=torch.long).cpu()
        if rows.shape != (batch,):
            raise ValueError(f"settings has shape {tuple(rows.shape)}; expected one per row ({batch})")
        return rows

    def _per_intervention(self, table_rows: torch.Tensor) -> list[torch.Tensor]:
        return [table_rows] * len(self._intervenable.interventions)


def only_setting(per_setting: list):
    """The one setting's results of a function that returns them per setting (the single-setting functions)."""
    if len(per_setting) != 1:
        raise ValueError(f"results of {len(per_setting)} settings; call the per-setting function")
    return per_setting[0]


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
