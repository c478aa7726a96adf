"""Baked weights (spec §7): o_proj bias = W_o·δ_l, equal to the every-position intervention, clean reload."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from iti.bake import bake_head_shifts, check_bakeable, save_baked_model
from iti.errors import UsageError
from iti.head_shifts import HeadShifts
from iti.intervention import ShiftedModel
from tests.conftest import make_tiny_model
from tests.test_intervention import PROMPTS, make_shifts, pad

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


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_family_without_o_proj_bias_switch_is_refused(family, tokenizer):
    from transformers import AutoModelForCausalLM, MistralConfig

    if family == "qwen2":
        model = make_tiny_model("gqa", len(tokenizer))
    else:
        model = AutoModelForCausalLM.from_config(MistralConfig(
            vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2))
    with pytest.raises(UsageError) as err:
        bake_head_shifts(model, make_shifts(model, [(0, 0)]))
    message = str(err.value)
    assert f"model family {family} has no config switch for an o_proj bias" in message and "llama" in message
    assert "\n" not in message
    with pytest.raises(UsageError):
        check_bakeable(model)
    assert model.model.layers[0].self_attn.o_proj.bias is None, "a refused bake must leave the model alone"
