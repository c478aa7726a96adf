"""A baked checkpoint in llama.cpp: llama.cpp's own converter keeps the o_proj (and q/k/v) biases, and
the f32 GGUF gives the next-token logits transformers gives, far from the unbaked model's.

Runs where llama_cpp is importable and llama.cpp's converter is in place, both made by
tests/llama_cpp/install_llama_cpp.sh (a source build: the PyPI wheels need glibc 2.38); skipped
elsewhere, with that reason.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from iti.bake import bake_head_shifts, save_baked_model
from iti.geometry import head_geometry
from tests.conftest import PROMPTS, family_config, make_shifts, model_from_config
from tests.llama_cpp.compare_logits import (INSTALL, convert_to_f32_gguf, converter_path, f32_gguf_tolerance,
                                            gguf_tensor_names, llama_cpp_logits, transformers_logits)

pytestmark = pytest.mark.llama_cpp

pytest.importorskip("llama_cpp", reason=f"llama_cpp is not importable; build it with `{INSTALL}`")
# SmolLM2-135M: 30 layers of 9 tensors (2 norms, 4 attention and 3 MLP matrices), the embedding and the
# final norm; a bake adds the q, k, v and o_proj biases of every layer.
SMOLLM2_TENSORS, SMOLLM2_BAKED_TENSORS = 272, 272 + 4 * 30


@pytest.fixture(scope="module")
def converter() -> Path:
    script = converter_path()
    if not script.is_file():
        pytest.skip(f"llama.cpp's converter is not at {script}; `{INSTALL}` puts it there")
    return script


def assert_llama_cpp_runs_the_bake(plain, baked, gguf_file: Path, prompts_ids: list[list[int]]) -> None:
    theirs = llama_cpp_logits(gguf_file, prompts_ids)
    ours_all, unbaked_all = transformers_logits(baked, prompts_ids), transformers_logits(plain, prompts_ids)
    for cpp, ours, unbaked in zip(theirs, ours_all, unbaked_all):
        tolerance = f32_gguf_tolerance(baked.config, ours)
        gap, shift = np.abs(cpp - ours).max(), np.abs(ours[-1] - unbaked[-1]).max()
        assert gap <= tolerance, f"llama.cpp differs from transformers by {gap:.3g} (tolerance {tolerance:.3g})"
        assert shift > 100 * tolerance, f"the bake moves the next-token logits by only {shift:.3g}"


def test_baked_smollm2_in_llama_cpp_gives_transformers_logits(bundled, bundled_folder, converter, tmp_path):
    model, tokenizer = bundled
    geo = head_geometry(model.config)
    heads = [(layer, layer % geo.num_heads) for layer in range(8, geo.num_layers, 3)]
    shifts = make_shifts(model, heads, alpha=5.0, seed=2)
    baked = bake_head_shifts(copy.deepcopy(model), shifts)
    folder = save_baked_model(baked, tokenizer, shifts, tmp_path / "baked")

    baked_gguf = convert_to_f32_gguf(converter, folder, tmp_path / "baked.gguf")
    names = gguf_tensor_names(baked_gguf)
    assert len(names) == SMOLLM2_BAKED_TENSORS
    assert {f"blk.{layer}.attn_output.bias" for layer in range(geo.num_layers)} <= set(names)
    plain_gguf = convert_to_f32_gguf(converter, bundled_folder, tmp_path / "plain.gguf")
    assert len(gguf_tensor_names(plain_gguf)) == SMOLLM2_TENSORS
    plain_gguf.unlink()

    prompts_ids = [tokenizer(prompt)["input_ids"] for prompt in PROMPTS]
    assert_llama_cpp_runs_the_bake(model, baked, baked_gguf, prompts_ids)


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_qwen2_and_mistral_llama_checkpoints_run_in_llama_cpp(family, tokenizer, converter, tmp_path):
    """Tiny random models with the bundled tokenizer: Qwen2's q/k/v biases, tied embeddings and YaRN;
    Mistral's head_dim ≠ hidden / heads and linear RoPE scaling."""
    model = model_from_config(family_config(family, len(tokenizer)))
    shifts = make_shifts(model, [(0, 1), (1, 0), (1, 3)], alpha=4.0, seed=1)
    baked = bake_head_shifts(copy.deepcopy(model), shifts)
    folder = save_baked_model(baked, tokenizer, shifts, tmp_path / "baked")
    gguf_file = convert_to_f32_gguf(converter, folder, tmp_path / "baked.gguf")
    names = set(gguf_tensor_names(gguf_file))
    assert {f"blk.{layer}.attn_{kind}.bias" for layer in range(2) for kind in ("q", "k", "v", "output")} <= names
    assert_llama_cpp_runs_the_bake(model, baked, gguf_file, [tokenizer(prompt)["input_ids"] for prompt in PROMPTS])
