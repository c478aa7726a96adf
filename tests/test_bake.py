"""Baked weights (docs/method.md §7): o_proj bias = W_o·δ_l, equal to the every-position intervention, clean reload.

Every family that bakes (tests.conftest.FAMILIES) is checked in float64 after a save and a plain
AutoModelForCausalLM reload; Qwen2 and Mistral come back as Llama checkpoints with their settings.
"""
from __future__ import annotations

import copy
import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError, safe_open

from iti.bake import bake_head_shifts, check_bakeable, save_baked_model
from iti.errors import UsageError
from iti.head_shifts import HeadShifts
from iti.intervention import ShiftedModel
from iti.geometry import head_geometry
from tests.conftest import (FAMILIES, PROMPTS, family_config, logit_tolerance, make_shifts, make_tiny_model,
                            model_from_config, pad, right_padded_batch)

BAKEABLE = ("llama", "wide_heads")
HEADS = [(0, 1), (2, 0), (2, 3)]


@pytest.fixture(scope="module", params=BAKEABLE)
def model_and_shifts(request, tokenizer):
    model = make_tiny_model(request.param, len(tokenizer))
    return model, make_shifts(model, HEADS, alpha=4.0, seed=1)


def test_baked_logits_equal_every_position_intervention(model_and_shifts, tokenizer):
    model, shifts = model_and_shifts
    baked = bake_head_shifts(copy.deepcopy(model), shifts)
    sequences = [tokenizer(p)["input_ids"] for p in PROMPTS]
    ids, mask = pad(sequences, tokenizer.pad_token_id, "right")
    with torch.no_grad():
        expected = ShiftedModel(model, shifts)(ids, mask).logits
        got = baked(input_ids=ids, attention_mask=mask).logits
        plain = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=1e-4, atol=1e-4)
    assert (got[real] - plain[real]).abs().max() > 1e-2


def test_bias_is_W_o_times_delta_by_hand(model_and_shifts):
    model, shifts = model_and_shifts
    baked = bake_head_shifts(copy.deepcopy(model), shifts)
    d = shifts.head_dim
    for layer, block in enumerate(baked.model.layers):
        attn = block.self_attn
        w = model.model.layers[layer].self_attn.o_proj.weight.double().numpy()
        expected = np.zeros(w.shape[0])
        for l, h, theta, sigma in zip(shifts.layers, shifts.heads, shifts.directions, shifts.sigmas):
            if l == layer:
                expected += w[:, h * d:(h + 1) * d] @ (shifts.alpha * sigma * theta.astype(np.float64))
        np.testing.assert_allclose(attn.o_proj.bias.numpy(), expected, rtol=1e-5, atol=1e-6)
        assert (np.abs(expected).max() > 0) == (layer in shifts.layers)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            assert torch.equal(proj.bias, torch.zeros_like(proj.bias))
        torch.testing.assert_close(attn.o_proj.weight, model.model.layers[layer].self_attn.o_proj.weight,
                                   rtol=0, atol=0)
    assert baked.config.attention_bias is True


def test_saved_folder_reloads_cleanly(model_and_shifts, tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, shifts = model_and_shifts
    baked = bake_head_shifts(copy.deepcopy(model), shifts)
    out = save_baked_model(baked, tokenizer, shifts, tmp_path / "edited")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited"]
    reloaded, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    assert {"missing_keys", "unexpected_keys", "mismatched_keys"} <= set(info)
    assert {k: list(v) for k, v in info.items() if v} == {}
    config = json.loads((out / "config.json").read_text())
    assert config["attention_bias"] is True and "auto_map" not in config
    ids = torch.tensor([tokenizer(PROMPTS[0])["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, baked(input_ids=ids).logits, rtol=0, atol=0)
    loaded = HeadShifts.load(out)
    assert loaded.head_list() == shifts.head_list() and np.array_equal(loaded.directions, shifts.directions)
    assert AutoTokenizer.from_pretrained(out)(PROMPTS[0])["input_ids"] == ids[0].tolist()
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))


def test_save_replaces_an_earlier_bake_only_with_overwrite_and_a_failed_save_keeps_it(model_and_shifts, tokenizer,
                                                                                       tmp_path):
    model, shifts = model_and_shifts
    target = tmp_path / "edited"
    first = bake_head_shifts(copy.deepcopy(model), shifts)
    save_baked_model(first, tokenizer, shifts, target)
    other = shifts.scaled(1.0)
    second = bake_head_shifts(copy.deepcopy(model), other)
    with pytest.raises(UsageError, match="holds an earlier bake; add --overwrite"):
        save_baked_model(second, tokenizer, other, target)
    assert HeadShifts.load(target).alpha == shifts.alpha
    save_baked_model(second, tokenizer, other, target, overwrite=True)
    assert HeadShifts.load(target).alpha == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited"]

    class Broken(HeadShifts):
        def save(self, directory):
            raise OSError("disk full")

    broken = Broken(**{f: getattr(shifts, f) for f in ("layers", "heads", "directions", "sigmas", "probe_accuracies",
                                                      "alpha", "num_layers", "num_heads", "head_dim")})
    with pytest.raises(OSError, match="disk full"):
        save_baked_model(first, tokenizer, broken, target, overwrite=True)
    assert HeadShifts.load(target).alpha == 1.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited"]


def test_a_folder_that_is_not_a_bake_is_never_replaced(model_and_shifts, tokenizer, tmp_path):
    model, shifts = model_and_shifts
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("a week of work")
    for overwrite in (False, True):
        with pytest.raises(UsageError, match="exists and is not a baked model"):
            save_baked_model(bake_head_shifts(copy.deepcopy(model), shifts), tokenizer, shifts, target, overwrite)
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and (target / "notes.txt").read_text() == "a week of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def test_baking_twice_adds_the_shifts(model_and_shifts):
    model, shifts = model_and_shifts
    once = bake_head_shifts(copy.deepcopy(model), shifts)
    twice = bake_head_shifts(bake_head_shifts(copy.deepcopy(model), shifts), shifts)
    for a, b in zip(once.model.layers, twice.model.layers):
        torch.testing.assert_close(b.self_attn.o_proj.bias, 2 * a.self_attn.o_proj.bias, rtol=1e-6, atol=1e-7)


def test_unbaked_model_is_not_saved(model_and_shifts, tokenizer, tmp_path):
    model, shifts = model_and_shifts
    with pytest.raises(UsageError, match="bake the head shifts"):
        save_baked_model(model, tokenizer, shifts, tmp_path / "edited")
    assert list(tmp_path.iterdir()) == []


def test_shifts_of_another_geometry_are_refused(tokenizer):
    model = make_tiny_model("llama", len(tokenizer))
    other = make_tiny_model("wide_heads", len(tokenizer))
    with pytest.raises(UsageError, match="head shifts were made for"):
        bake_head_shifts(model, make_shifts(other, HEADS))


SAVED_AS_LLAMA = {"qwen2": "Qwen2", "mistral": "Mistral"}
FAMILY_HEADS = [(0, 1), (1, 0), (1, 3)]


def bake_save_reload(model, shifts, tokenizer, folder):
    """Bake a copy of `model`, save it, reload it with a plain AutoModelForCausalLM; returns (baked, reloaded)."""
    from transformers import AutoModelForCausalLM

    baked = bake_head_shifts(copy.deepcopy(model), shifts)
    save_baked_model(baked, tokenizer, shifts, folder)
    reloaded, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True, dtype=torch.float64)
    assert {"missing_keys", "unexpected_keys", "mismatched_keys"} <= set(info)
    assert {k: list(v) for k, v in info.items() if v} == {}, "the saved checkpoint must load with no weight left over"
    return baked, reloaded.eval()


def assert_equals_every_position_intervention(model, shifts, reloaded):
    ids, mask = right_padded_batch(model.config.get_text_config().vocab_size)
    with torch.no_grad():
        expected = ShiftedModel(model, shifts)(ids, mask, shift_mask=torch.ones_like(ids)).logits
        got = reloaded(input_ids=ids, attention_mask=mask).logits
        plain = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    tolerance = logit_tolerance(model, expected[real])
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=tolerance)
    assert (got[real] - plain[real]).abs().max() > 1e4 * tolerance, "the shifts must change the logits"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_bakes_into_a_checkpoint_equal_to_the_every_position_intervention(family, tokenizer, tmp_path):
    model = model_from_config(family_config(family), dtype=torch.float64)
    shifts = make_shifts(model, FAMILY_HEADS, alpha=4.0, seed=1)
    baked, reloaded = bake_save_reload(model, shifts, tokenizer, tmp_path / "edited")
    saved_as = "LlamaForCausalLM" if family in SAVED_AS_LLAMA else type(model).__name__
    assert type(baked).__name__ == type(reloaded).__name__ == saved_as
    assert_equals_every_position_intervention(model, shifts, reloaded)


@pytest.mark.parametrize("family", sorted(SAVED_AS_LLAMA))
def test_qwen2_and_mistral_become_llama_checkpoints_with_their_settings(family, tokenizer, tmp_path):
    model = model_from_config(family_config(family), dtype=torch.float64)
    model.generation_config.update(do_sample=True, temperature=0.7, top_p=0.8, eos_token_id=[5, 7])
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    shifts = make_shifts(model, FAMILY_HEADS, alpha=4.0, seed=1)
    out = tmp_path / "edited"
    baked, reloaded = bake_save_reload(model, shifts, tokenizer, out)

    source = model.config.to_dict()
    saved = json.loads((out / "config.json").read_text())
    assert saved["architectures"] == ["LlamaForCausalLM"] and saved["model_type"] == "llama"
    assert saved["attention_bias"] is True and saved["mlp_bias"] is False
    assert saved["head_dim"] == head_geometry(model.config).head_dim
    for key in ("rope_parameters", "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings", "hidden_size",
                "intermediate_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "vocab_size",
                "hidden_act", "bos_token_id", "eos_token_id", "pad_token_id"):
        assert saved[key] == source[key], key
    assert not {"sliding_window", "use_sliding_window", "layer_types", "max_window_layers"} & set(saved)
    saved_generation = json.loads((out / "generation_config.json").read_text())
    assert {k: saved_generation[k] for k in ("do_sample", "temperature", "top_p", "eos_token_id")} == {
        "do_sample": True, "temperature": 0.7, "top_p": 0.8, "eos_token_id": [5, 7]}
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out).chat_template == tokenizer.chat_template

    with safe_open(str(out / "model.safetensors"), framework="pt") as weights:
        names = set(weights.keys())
        for layer, block in enumerate(model.model.layers):
            attn = block.self_attn
            for proj in ("q_proj", "k_proj", "v_proj"):
                bias = weights.get_tensor(f"model.layers.{layer}.self_attn.{proj}.bias")
                source_bias = getattr(attn, proj).bias
                expected = source_bias if source_bias is not None else torch.zeros_like(bias)
                torch.testing.assert_close(bias, expected, rtol=0, atol=0)
            w = attn.o_proj.weight.numpy()
            delta = np.zeros(w.shape[1])
            for l, h, theta, sigma in zip(shifts.layers, shifts.heads, shifts.directions, shifts.sigmas):
                if l == layer:
                    delta[h * shifts.head_dim:(h + 1) * shifts.head_dim] = shifts.alpha * sigma * theta.astype(float)
            # Head shifts hold δ in float32: each entry is off by up to half a float32 ulp of itself.
            bound = np.abs(w) @ np.abs(delta) * np.finfo(np.float32).eps / 2 + 1e-15
            bias = weights.get_tensor(f"model.layers.{layer}.self_attn.o_proj.bias").numpy()
            assert np.all(np.abs(bias - w @ delta) <= bound)
            assert (np.abs(w @ delta).max() > 0) == (layer in shifts.layers)
    biases = {f"model.layers.{l}.self_attn.{p}.bias" for l in range(2) for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    assert names == (set(before) - tied) | biases
    assert (reloaded.lm_head.weight is reloaded.model.embed_tokens.weight) == model.config.tie_word_embeddings

    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before), \
        "baking as Llama must leave the source model unchanged"
    message = check_bakeable(model).describe()
    assert message.startswith(f"saved as LlamaForCausalLM with attention_bias ({SAVED_AS_LLAMA[family]} has no o_proj "
                              "bias switch") and "identical function" in message


def test_a_window_as_long_as_the_context_masks_nothing_and_bakes(tokenizer, tmp_path):
    model = model_from_config(family_config("mistral", sliding_window=64), dtype=torch.float64)
    shifts = make_shifts(model, FAMILY_HEADS, alpha=4.0, seed=1)
    _, reloaded = bake_save_reload(model, shifts, tokenizer, tmp_path / "edited")
    assert_equals_every_position_intervention(model, shifts, reloaded)


@pytest.mark.parametrize("family, window, phrase", [
    ("qwen2", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
     "this Qwen2 model attends through a sliding window of 8 tokens on 1 of its 2 layers, shorter than its context "
     "of 64; a Llama checkpoint cannot express that window"),
    ("mistral", dict(sliding_window=8),
     "this Mistral model attends through a sliding window of 8 tokens on 2 of its 2 layers, shorter than its context "
     "of 64; a Llama checkpoint cannot express that window"),
    ("phi3", None, "model family phi3 has no config switch for an o_proj bias"),
])
def test_what_cannot_bake_is_refused_with_the_reason_and_left_alone(family, window, phrase):
    from transformers import Phi3Config

    config = family_config(family, **window) if window else Phi3Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=None)
    model = model_from_config(config)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with pytest.raises(UsageError) as err:
        bake_head_shifts(model, make_shifts(model, [(0, 0)]))
    message = str(err.value)
    assert phrase in message and "\n" not in message
    assert "iti.apply" in message and "export_head_shifts.py" in message
    with pytest.raises(UsageError):
        check_bakeable(model)
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert model.model.layers[0].self_attn.o_proj.bias is None, "a refused bake must leave the model alone"


@pytest.mark.parametrize("apply", [ShiftedModel, bake_head_shifts], ids=["applied", "baked"])
def test_a_shift_beyond_the_models_dtype_is_refused_and_changes_nothing(apply):
    model = model_from_config(family_config("llama"), dtype=torch.float16)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    shifts = make_shifts(model, alpha=60000.0, sigmas=[2.0, 2.0, 2.0])
    with pytest.raises(UsageError, match=r"alpha 60000 shifts a head by up to .* beyond the largest torch.float16 "
                                         r"number \(65504\); use \|alpha\| at most"):
        apply(model, shifts)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert apply(model, make_shifts(model, alpha=600.0, sigmas=[2.0, 2.0, 2.0])) is not None


# ----------------------------------------------------------------------------- what a bake records, and a full disk

def test_a_bake_with_a_flipped_byte_is_refused_at_load(model_and_shifts, tokenizer, tmp_path):
    from iti.models import load_model

    model, shifts = model_and_shifts
    baked = bake_head_shifts(copy.deepcopy(model), shifts)
    folder = save_baked_model(baked, tokenizer, shifts, tmp_path / "baked",
                              command="python validation/edit_weight.py --num_heads 3")
    load_model(str(folder), device="cpu", dtype="float32")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x40  # inside some tensor: the header, and so safetensors, sees nothing wrong
    weights.write_bytes(bytes(data))
    with safe_open(str(weights), framework="pt") as damaged:
        assert any(not torch.equal(damaged.get_tensor(name), baked.state_dict()[name]) for name in damaged.keys())
    with pytest.raises(UsageError, match=f"baked model file {weights} is not the file that was written there.*bake it "
                                         "again with `python validation/edit_weight.py --num_heads 3`"):
        load_model(str(folder), device="cpu")


def fill_disk(monkeypatch, free: int, fails_as: str | None) -> None:
    """`free` bytes free as `shutil.disk_usage` reports it; with `fails_as`, a weights save that writes part of its
    file, then fails as a full disk does: safetensors' serializing error ("safetensors", which transformers' save
    passes on) or a plain OSError ("os")."""
    import transformers.modeling_utils

    usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(path)._replace(free=free))
    errors = {"safetensors": SafetensorError("Error while serializing: I/O error: No space left on device "
                                             "(os error 28)"),
              "os": OSError(errno.ENOSPC, "No space left on device")}

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise errors[fails_as]

    if fails_as is not None:
        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", save_file)


def weight_bytes(folder) -> int:
    """The bytes of a saved bake's weights, counted from its file's tensors: what the space check must ask for."""
    with safe_open(str(folder / "model.safetensors"), framework="pt") as saved:
        return sum(saved.get_tensor(name).numel() * saved.get_tensor(name).element_size() for name in saved.keys())


@pytest.mark.parametrize("dtype, overwrite, fails_as", [
    (torch.float32, False, "safetensors"), (torch.float16, False, "os"), (torch.float32, True, "safetensors")])
def test_a_full_disk_is_one_line_saying_the_space_needed_and_keeps_an_earlier_bake(model_and_shifts, tokenizer,
                                                                                  tmp_path, monkeypatch, dtype,
                                                                                  overwrite, fails_as):
    from iti.bake_folders import readable_size

    model, shifts = model_and_shifts
    baked = bake_head_shifts(copy.deepcopy(model), shifts).to(dtype)
    needed = weight_bytes(save_baked_model(baked, tokenizer, shifts, tmp_path / "reference")) + 64 * 2**20
    target = tmp_path / "baked"
    if overwrite:
        save_baked_model(bake_head_shifts(copy.deepcopy(model), shifts.scaled(1.0)), tokenizer, shifts, target)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for free, fails in ((needed - 1, None), (needed, fails_as)):  # refused before writing; the disk fills while writing
        with monkeypatch.context() as patches:
            fill_disk(patches, free, fails)
            with pytest.raises(UsageError) as refused:
                save_baked_model(baked, tokenizer, shifts, target, overwrite)
        assert str(refused.value) == (f"the bake {target} needs about {readable_size(needed)} (the weights at their "
                                      f"dtype and 67.1 MB for tokenizer, config and head shifts), its file system has "
                                      f"{readable_size(free)} free: free some space there or give another --output_dir")
        assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before, "nothing left, nothing lost"
