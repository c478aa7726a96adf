"""A randomly initialised LLaMA-2-7B-shaped model for the benchmarks (no download), and a model's size in bytes."""
from __future__ import annotations

import torch

from iti.models import resolve_device, resolve_dtype

# LLaMA-2-7B: 32 layers x 32 heads x 128 dims (hidden 4096, MLP 11008).
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)


def random_llama(tokenizer, device: str, dtype: str, num_layers: int | None = None):
    """A LLaMA-2-7B-shaped model with random weights (no download), built on `device` ('auto': a GPU if there
    is one) in `dtype` as --dtype names it ('auto': float16 on a GPU, as LLaMA-2-7B ships; float32 on a CPU).

    The bundled tokenizer supplies the vocabulary (its ids must fit the embedding), so the speed
    measured is the 7B geometry's; the outputs are meaningless text.
    """
    from transformers import AutoModelForCausalLM, LlamaConfig

    device = resolve_device(device)
    device = "cuda" if device == "auto" else device
    overrides = dict(LLAMA2_7B)
    if num_layers is not None:
        overrides["num_hidden_layers"] = num_layers
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, **overrides)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=resolve_dtype(dtype, device, config))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model.eval().requires_grad_(False)


def model_bytes(model) -> int:
    """Bytes of the model's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
