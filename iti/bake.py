"""Baking head shifts into the weights (docs/method.md §7).

Adding δ_l to the o_proj input of layer l adds W_o·δ_l to its output, so a baked model carries
W_o·δ_l as the o_proj bias of each edited layer (zero in the others) and saves with the config's
attention-bias switch on: the biases that switch creates (q, k, v and o_proj) all exist, the
unused ones zero, and the folder reloads with a plain `AutoModelForCausalLM.from_pretrained`.
The public edit_weight.py stored δ_l itself as the bias, which is wrong whenever W_o ≠ I.

Qwen2 and Mistral configs have no such switch, but in transformers' modeling code their decoder
is Llama's but for three things: Qwen2's q/k/v projections always have a bias (Llama's follow
attention_bias), Mistral and Qwen2 may limit attention to a sliding window, and Llama reads
head_dim and mlp_bias from its config. So such a model is saved as a LlamaForCausalLM with
attention_bias on (Qwen2's q/k/v biases carried over, Mistral's zero), which computes the same
function; a sliding window shorter than the context cannot be written into a Llama checkpoint,
so that model is refused.

A baked model shifts every position, the prompt's included: it equals the intervention with the
every-position schedule, not the generation schedule.
"""
from __future__ import annotations

import copy
import dataclasses
import errno
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from iti.bake_folders import (
    EDIT_WEIGHT,
    check_output_dir,
    check_space,
    edit_weight_command,
    free_space,
    no_space,
    record_bake,
    space_needed,
)
from iti.config import EditConfig
from iti.constants import EDITED_MODELS_DIR
from iti.errors import UsageError
from iti.features import FeatureSet, require_feature_sets
from iti.files import output_lock, staged_folder
from iti.fingerprint import model_fingerprint
from iti.fitting import fit_head_shifts, recipe_of, seeded_split
from iti.geometry import head_geometry, text_config
from iti.head_shifts import HeadShifts
from iti.identity import identity, readable_name, short_digest
from iti.models import get_o_proj, load_model, model_sites, resolve_model_source
from iti.registry import HF_NAMES
from iti.run_inputs import read_checked_features

# Config flags that, in transformers' modeling code, give o_proj a bias (checked on a meta-device
# copy of the model, never assumed): Llama-like families use attention_bias, Starcoder2 use_bias.
BIAS_SWITCHES = ("attention_bias", "use_bias")
# Families whose o_proj bias follows such a switch (transformers 5 modeling code), or that save as Llama, for messages.
BAKEABLE_FAMILIES = ("llama (Llama 1/2/3, SmolLM2, Alpaca, Vicuna)", "qwen2 (Qwen2/2.5, saved as Llama)",
                     "mistral (without a sliding window, saved as Llama)", "qwen3", "gemma", "gemma2", "gemma3", "olmo",
                     "olmo2", "granite", "cohere", "smollm3", "deepseek_v3", "starcoder2")
RUN_TIME_INSTEAD = ("apply the saved head shifts at run time instead (iti.apply) or export "
                    "them for pyvene (validation/export_head_shifts.py)")


@dataclass(frozen=True)
class LlamaAttentionFamily:
    """A family whose decoder is Llama's up to q/k/v biases and a sliding window (see the module docstring)."""
    label: str
    causal_lm_class: str
    qkv_biases: str
    # Mistral windows every layer when sliding_window is set; Qwen2 only the layers its layer_types mark.
    window_on_every_layer: bool


LLAMA_ATTENTION_FAMILIES = {
    "qwen2": LlamaAttentionFamily("Qwen2", "Qwen2ForCausalLM", "its q/k/v biases carried over", False),
    "mistral": LlamaAttentionFamily("Mistral", "MistralForCausalLM", "q/k/v biases zero", True),
}
LLAMA_CAUSAL_LM = "LlamaForCausalLM"
# Config entries that only describe the sliding window, which a Llama checkpoint has no place for.
_WINDOW_KEYS = ("sliding_window", "use_sliding_window", "max_window_layers", "layer_types")
_FAMILY_KEYS = ("model_type", "architectures", "transformers_version")


@dataclass(frozen=True)
class BakePlan:
    """How a model is baked: the class saved, the config switch turned on, the (zero) biases that appear, and the
    config of the Llama checkpoint it is rebuilt as (None when it keeps its class)."""
    architecture: str
    switch: str | None
    added: dict[str, torch.Size]
    reason: str
    llama_config: object | None = None

    def describe(self) -> str:
        switch = f" with {self.switch}" if self.switch else ""
        return f"saved as {self.architecture}{switch} ({self.reason})"


def _biases_added(model_class, config, present: dict[str, torch.Size], o_proj_biases: set[str]):
    """The biases a `model_class(config)` (built on the meta device) adds to `present`, if it adds every o_proj bias
    and changes nothing else, else None."""
    with torch.device("meta"):
        rebuilt = {name: param.shape for name, param in model_class(config).named_parameters()}
    added = set(rebuilt) - set(present)
    same = all(rebuilt.get(name) == shape for name, shape in present.items())
    if same and o_proj_biases <= added | set(present) and all(name.endswith(".bias") for name in added):
        return {name: rebuilt[name] for name in sorted(added)}
    return None


def _check_no_short_window(text, family: LlamaAttentionFamily) -> None:
    """A window at least as long as the context masks nothing there; a shorter one has no place in a Llama checkpoint.
    The layers windowed are those transformers' modeling code of the family windows."""
    window, context = getattr(text, "sliding_window", None), text.max_position_embeddings
    if window is None or window >= context:
        return
    windowed = (text.num_hidden_layers if family.window_on_every_layer else
                sum(kind == "sliding_attention" for kind in getattr(text, "layer_types", None) or []))
    if windowed:
        raise UsageError(
            f"this {family.label} model attends through a sliding window of {window} tokens on {windowed} of its "
            f"{text.num_hidden_layers} layers, shorter than its context of {context}; a Llama checkpoint cannot "
            f"express that window, so baking would change what the model computes: {RUN_TIME_INSTEAD}")


def _llama_plan(model, family: LlamaAttentionFamily, present: dict[str, torch.Size],
                o_proj_biases: set[str]) -> BakePlan:
    """The model rebuilt as a Llama checkpoint: every setting of its text config kept (RoPE, norms, ids, tying)
    but the window's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if type(model).__name__ != family.causal_lm_class:
        raise UsageError(f"a {family.label} model loaded as {type(model).__name__}, not {family.causal_lm_class}; "
                         "load it with AutoModelForCausalLM to bake it")
    text = text_config(model.config)
    _check_no_short_window(text, family)
    values = {key: value for key, value in text.to_dict().items() if key not in _WINDOW_KEYS + _FAMILY_KEYS}
    # Llama's attention reads head_dim without a fallback, and its MLP takes a bias unless mlp_bias is off.
    values.update(attention_bias=True, mlp_bias=False, head_dim=head_geometry(model.config).head_dim,
                  architectures=[LLAMA_CAUSAL_LM])
    try:
        config = LlamaConfig(**values)
    except ValueError as err:
        raise UsageError(f"this model's config cannot be written as a Llama config ({str(err).splitlines()[0]}); "
                         f"{RUN_TIME_INSTEAD}") from err
    config._attn_implementation = model.config._attn_implementation
    added = _biases_added(LlamaForCausalLM, config, present, o_proj_biases)
    if added is None:
        raise UsageError(f"this {family.label} model's weights do not map one to one onto a Llama checkpoint's; "
                         f"{RUN_TIME_INSTEAD}")
    return BakePlan(LLAMA_CAUSAL_LM, "attention_bias", added,
                    f"{family.label} has no o_proj bias switch; its attention is Llama's, {family.qkv_biases}: "
                    "identical function", config)


def check_bakeable(model) -> BakePlan:
    """How this model can carry an o_proj bias; a UsageError that says why not, naming the families that can."""
    sites = model_sites(model)
    o_proj_biases = {f"{sites.layers}.{layer}.{sites.o_proj}.bias"
                     for layer in range(head_geometry(model.config).num_layers)}
    present = {name: param.shape for name, param in model.named_parameters()}
    if o_proj_biases <= set(present):
        return BakePlan(type(model).__name__, None, {}, "its own architecture: every o_proj already has a bias")
    for switch in BIAS_SWITCHES:  # the model's own class, with the first switch that qualifies
        if hasattr(text_config(model.config), switch):
            config = copy.deepcopy(model.config)
            setattr(text_config(config), switch, True)
            added = _biases_added(type(model), config, present, o_proj_biases)
            if added is not None:
                return BakePlan(type(model).__name__, switch, added,
                                f"its own architecture: {switch} gives every o_proj a bias")
    family = getattr(text_config(model.config), "model_type", type(model).__name__)
    if family in LLAMA_ATTENTION_FAMILIES:
        return _llama_plan(model, LLAMA_ATTENTION_FAMILIES[family], present, o_proj_biases)
    raise UsageError(
        f"model family {family} has no config switch for an o_proj bias, so head shifts cannot be baked into "
        f"its weights; families that can: {', '.join(BAKEABLE_FAMILIES)}; {RUN_TIME_INSTEAD}")


def _rebuilt_as_llama(model, config):
    """A LlamaForCausalLM holding `model`'s weights (shared, not copied); the biases it adds stay on the meta device."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        llama = LlamaForCausalLM(config)
    llama.load_state_dict(model.state_dict(), strict=False, assign=True)
    # RoPE frequencies are buffers computed at construction, which happened on the meta device.
    for name, _ in llama.named_buffers():
        owner, _, leaf = name.rpartition(".")
        setattr(llama.get_submodule(owner), leaf, model.get_buffer(name))
    llama.tie_weights()
    llama.generation_config = copy.deepcopy(model.generation_config)
    return llama.train(model.training).requires_grad_(False)


@torch.no_grad()
def bake_head_shifts(model, shifts: HeadShifts):
    """Give each edited layer's o_proj the bias W_o·δ_l (added to any bias it had) and return the baked model:
    `model` itself, changed in place, or for Qwen2 and Mistral a LlamaForCausalLM sharing its (unchanged) weights."""
    geo = head_geometry(model.config)
    shifts.check_geometry(geo)
    plan = check_bakeable(model)
    # Every refusal comes before the first change, so a refused model is left as it was.
    for layer in range(geo.num_layers):
        if not isinstance(get_o_proj(model, layer), torch.nn.Linear):
            raise UsageError(f"the attention output projection is a {type(get_o_proj(model, layer)).__name__}, not a "
                             "Linear layer; cannot bake")
    if any(p.device.type == "meta" for p in model.parameters()):
        raise UsageError("the model has weights offloaded to disk (device 'meta'); load it fully to bake it")
    biases = _baked_biases(model, shifts)
    baked = model if plan.llama_config is None else _rebuilt_as_llama(model, plan.llama_config)
    for name, shape in plan.added.items():
        module = baked.get_submodule(name.rsplit(".", 1)[0])
        module.bias = torch.nn.Parameter(module.weight.new_zeros(shape), requires_grad=False)
    for layer, bias in biases.items():
        get_o_proj(baked, layer).bias.copy_(bias)  # rounded once, to the bias's dtype
    if plan.switch is not None:
        setattr(text_config(baked.config), plan.switch, True)
    return baked


def _baked_biases(model, shifts: HeadShifts) -> dict[int, torch.Tensor]:
    """Per edited layer, its o_proj bias once baked: W_o·δ in float64 added to any bias it has (rounded once, when
    stored). A UsageError when a shift or a bias is beyond the model's dtype (it would be stored as infinite)."""
    dtype = get_o_proj(model, 0).weight.dtype
    shifts.check_fits(str(dtype), torch.finfo(dtype).max)
    biases = {}
    for layer, offset in shifts.layer_offsets().items():
        o_proj = get_o_proj(model, layer)
        shift = o_proj.weight.double() @ torch.as_tensor(offset, dtype=torch.float64, device=o_proj.weight.device)
        biases[layer] = shift if o_proj.bias is None else o_proj.bias.double() + shift
        if not biases[layer].abs().max() <= torch.finfo(dtype).max:
            raise UsageError(f"alpha {shifts.alpha:g} makes layer {layer}'s baked o_proj bias reach "
                             f"{float(biases[layer].abs().max()):.4g}, beyond the largest {dtype} number; use a "
                             "smaller alpha")
    return biases


def bake_identity(cfg: EditConfig, model_digest: str, dtype: str, features: dict) -> dict:
    """What names a bake (iti.identity): the model as its fingerprint's digest, `--dtype` as the dtype used, and the
    data as the features' record ids (which name the rows they hold, so the dataset file enters through them)."""
    return identity(cfg, {"model_path": model_digest, "dtype": dtype, "features_dir": features,
                          "dataset_path": None, "tqa_path": None})


def bake_dir(cfg: EditConfig, bake: dict) -> Path:
    """The readable settings, then the identity's hash: bakes that differ in any setting never share a folder."""
    return EDITED_MODELS_DIR / f"{readable_name(cfg)}_{short_digest(bake)}"


def save_baked_model(model, tokenizer, shifts: HeadShifts, output_dir: str | os.PathLike,
                     overwrite: bool = False, command: str = f"python {EDIT_WEIGHT}") -> Path:
    """Save a baked model (safetensors), its tokenizer, its head shifts and last its record (bake.json: the files
    and their SHA-256, `command` to make it again) in one folder, which appears whole or not at all; an earlier bake
    is replaced only with `overwrite`, anything else never (check_output_dir). Too little space, found before
    writing or while writing, is a UsageError; the earlier bake is then kept."""
    for layer in sorted(set(shifts.layers.tolist())):
        if get_o_proj(model, layer).bias is None:
            raise UsageError(f"layer {layer}'s o_proj has no bias: bake the head shifts (bake_head_shifts) before saving")
    out = Path(output_dir)
    check_output_dir(out, overwrite, shifts.provenance.identity)
    needed = space_needed(sum(param.numel() * param.element_size() for param in model.parameters()))
    check_space(out, needed)
    try:
        with staged_folder(out, replace=overwrite) as staging:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            shifts.save(staging)
            record_bake(staging, command)
    except Exception as err:
        if not _out_of_space(err):
            raise
        # staged_folder has removed the partial folder by now, so the free space is what another try would have.
        raise UsageError(no_space(out, needed, free_space(out))) from None
    return out


def _out_of_space(err: Exception) -> bool:
    """A full disk or quota: an OSError, or safetensors' error while serializing, which keeps only the OS's text."""
    codes = (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, OSError):
        return err.errno in codes
    return type(err).__name__ == "SafetensorError" and any(f"(os error {code})" in str(err) for code in codes)


@dataclass(frozen=True)
class Bake:
    """What bake_model made: the folder, the head shifts baked into it, and how the model was saved."""
    folder: Path
    shifts: HeadShifts
    plan: BakePlan


def bake_model(cfg: EditConfig) -> Bake:
    """validation/edit_weight.py's work: probe every head on all questions of the probing set (a seeded
    train/validation split, no test fold), fit the K best heads' shifts, bake them and save the folder."""
    source = resolve_model_source(cfg.model_name, cfg.model_prefix, cfg.model_path, (cfg.seed, cfg.num_heads, cfg.alpha))
    probing = FeatureSet(Path(cfg.features_dir), cfg.output_name, cfg.dataset_name, cfg.limit, cfg.model_path,
                         cfg.dataset_path, cfg.prompt_format)
    tuning = dataclasses.replace(probing, dataset=cfg.tuning_dataset,
                                 dataset_path=cfg.dataset_path if cfg.tuning_dataset == cfg.dataset_name else None)
    require_feature_sets([probing, tuning])
    model, tokenizer = load_model(source, cfg.device, cfg.dtype, cfg.trust_remote_code)
    geometry = head_geometry(model.config)
    geometry.check_num_heads(cfg.num_heads)
    plan = check_bakeable(model)
    fingerprint = model_fingerprint(model, tokenizer)
    features = read_checked_features(cfg, probing, tuning, geometry, tokenizer, fingerprint, source)
    bake = bake_identity(cfg, short_digest(fingerprint), str(model.dtype), features.provenance.features)
    output_dir = Path(cfg.output_dir) if cfg.output_dir else bake_dir(cfg, bake)
    with output_lock(output_dir, "bake"):  # a second bake into this folder refuses until this one ends
        check_output_dir(output_dir, cfg.overwrite, bake)
        # The hub id of the model being edited, when there is one (for the model card).
        base_model = (None if Path(source).exists() else source) if cfg.model_path else HF_NAMES.get(cfg.output_name)
        made = dataclasses.replace(features.provenance, base_model=base_model, made_by=EDIT_WEIGHT, identity=bake)
        features = dataclasses.replace(features, provenance=made)
        shifts, _ = fit_head_shifts(features, seeded_split(features.question_ids, cfg.val_ratio, cfg.seed),
                                    recipe_of(cfg, cfg.num_heads, cfg.alpha))
        save_baked_model(bake_head_shifts(model, shifts), tokenizer, shifts, output_dir, cfg.overwrite,
                         edit_weight_command(cfg))
    return Bake(output_dir, shifts, plan)
