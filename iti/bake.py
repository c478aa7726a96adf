"""Baking head shifts into the weights (ITI_SPEC.md section 7).

Adding δ_l to the o_proj input of layer l adds W_o·δ_l to its output, so a baked model carries
W_o·δ_l as the o_proj bias of each edited layer (zero in the others) and saves with the config's
attention-bias switch on: the biases that switch creates (q, k, v and o_proj) all exist, the
unused ones zero, and the folder reloads with a plain `AutoModelForCausalLM.from_pretrained`.
The public edit_weight.py stored δ_l itself as the bias, which is wrong whenever W_o ≠ I.

A baked model shifts every position, the prompt's included: it equals the intervention with the
every-position schedule, not the generation schedule.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from iti.errors import UsageError
from iti.files import staged_folder
from iti.head_shifts import METADATA_FILE, TENSORS_FILE, HeadShifts
from iti.models import get_o_proj, head_geometry, model_sites

# Config flags that, in transformers' modeling code, give o_proj a bias (checked on a meta-device
# copy of the model, never assumed): Llama-like families use attention_bias, Starcoder2 use_bias.
BIAS_SWITCHES = ("attention_bias", "use_bias")
# Families whose o_proj bias follows such a switch (transformers 5 modeling code), for messages.
BAKEABLE_FAMILIES = ("llama (Llama 1/2/3, SmolLM2, Alpaca, Vicuna)", "qwen3", "gemma", "gemma2", "gemma3", "olmo",
                     "olmo2", "granite", "cohere", "smollm3", "deepseek_v3", "starcoder2")


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _parameter_names(module: torch.nn.Module) -> set[str]:
    return {name for name, _ in module.named_parameters()}


def _bias_plan(model) -> tuple[str | None, dict[str, torch.Size]]:
    """(switch, biases it adds): the config flag to turn on and the shapes of the parameters that appear.

    (None, {}) when every layer's o_proj already has a bias. Each candidate switch is tried on a
    meta-device copy of the model, which costs no memory; a switch qualifies only if it gives
    every o_proj a bias and changes nothing but adding biases.
    """
    num_layers = head_geometry(model.config).num_layers
    sites = model_sites(model)
    o_proj_biases = {f"{sites.layers}.{layer}.{sites.o_proj}.bias" for layer in range(num_layers)}
    present = _parameter_names(model)
    if o_proj_biases <= present:
        return None, {}
    for switch in BIAS_SWITCHES:
        if not hasattr(_text_config(model.config), switch):
            continue
        config = copy.deepcopy(model.config)
        setattr(_text_config(config), switch, True)
        with torch.device("meta"):
            skeleton = type(model)(config)
        shapes = {name: param.shape for name, param in skeleton.named_parameters()}
        added = set(shapes) - present
        if o_proj_biases <= added | present and present <= set(shapes) and all(n.endswith(".bias") for n in added):
            return switch, {name: shapes[name] for name in sorted(added)}
    family = getattr(_text_config(model.config), "model_type", type(model).__name__)
    raise UsageError(
        f"model family {family} has no config switch for an o_proj bias, so head shifts cannot be baked into "
        f"its weights; families that can: {', '.join(BAKEABLE_FAMILIES)}; for others apply the saved head shifts "
        "at run time (iti.intervention.load_shifted_model)")


def check_bakeable(model) -> None:
    """UsageError, naming the families that work, if this model's o_proj cannot carry a bias."""
    _bias_plan(model)


def _linear_weight(module: torch.nn.Module) -> torch.Tensor:
    """W_o as [out, in], so that the output is W_o·x (+ bias)."""
    if isinstance(module, torch.nn.Linear):
        return module.weight
    raise UsageError(f"the attention output projection is a {type(module).__name__}, not a Linear layer; cannot bake")


@torch.no_grad()
def bake_head_shifts(model, shifts: HeadShifts):
    """Give each edited layer's o_proj the bias W_o·δ_l (added to any bias it had); returns the model, changed in place."""
    geo = head_geometry(model.config)
    shifts.check_geometry(geo.num_layers, geo.num_heads, geo.head_dim)
    switch, added = _bias_plan(model)
    # Every refusal comes before the first change, so a refused model is left as it was.
    weights = {layer: _linear_weight(get_o_proj(model, layer)) for layer in range(geo.num_layers)}
    if any(p.device.type == "meta" for p in model.parameters()):
        raise UsageError("the model has weights offloaded to disk (device 'meta'); load it fully to bake it")
    for name, shape in added.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        like = next(module.parameters())
        module.bias = torch.nn.Parameter(torch.zeros(shape, dtype=like.dtype, device=like.device), requires_grad=False)
    for layer, offset in shifts.layer_offsets().items():
        o_proj, weight = get_o_proj(model, layer), weights[layer]
        # W_o·δ in float64, rounded once to the model's dtype.
        shift = weight.double() @ torch.as_tensor(offset, dtype=torch.float64, device=weight.device)
        o_proj.bias.copy_((o_proj.bias.double() + shift).to(o_proj.bias.dtype))
    if switch is not None:
        setattr(_text_config(model.config), switch, True)
    return model


def is_bake(folder: Path) -> bool:
    """A folder that save_baked_model wrote: its head-shift files are there."""
    return (folder / TENSORS_FILE).is_file() and (folder / METADATA_FILE).is_file()


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """UsageError unless a bake may go to `output_dir`: a new path, or an earlier bake with `overwrite`.

    A folder that is not a bake is never replaced, whatever the flags: it may hold anything.
    """
    out = Path(output_dir)
    if not out.exists():
        return
    if not out.is_dir() or not is_bake(out):
        raise UsageError(f"--output_dir {out} exists and is not a baked model (no {TENSORS_FILE} and {METADATA_FILE}); "
                         "it is left as it is: give a new folder")
    if not overwrite:
        raise UsageError(f"--output_dir {out} holds an earlier bake; add --overwrite to replace it, or give a new folder")


def save_baked_model(model, tokenizer, shifts: HeadShifts, output_dir: str | os.PathLike,
                     overwrite: bool = False) -> Path:
    """Save a baked model (safetensors), its tokenizer and its head shifts in one folder, atomically.

    Everything is written to a temporary folder beside `output_dir` and renamed into place, so the
    folder is either the previous one or the complete new one; an earlier bake is replaced only
    with `overwrite`, anything else never (check_output_dir).
    """
    for layer in sorted(set(shifts.layers.tolist())):
        if get_o_proj(model, layer).bias is None:
            raise UsageError(f"layer {layer}'s o_proj has no bias: bake the head shifts (bake_head_shifts) before saving")
    out = Path(output_dir)
    check_output_dir(out, overwrite)
    with staged_folder(out, replace=overwrite) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        shifts.save(staging)
    return out
