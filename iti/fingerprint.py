"""What made an artifact, in a form that is cheap to record and to compare: digests of data, and a
model's fingerprint (its config, its tokenizer and fixed samples of a few weight tensors).

The weight sample reads 16 values from each of three tensors (the input embedding and the first and
last attention output projections), so it costs the same at 135M and at 70B parameters. Two
loads of one checkpoint in different precisions sample the same numbers up to rounding, so samples
compare within the coarser precision's rounding (`differs`); another model's weights differ at
the first value.
"""
from __future__ import annotations

import math

from iti.geometry import head_geometry, text_config
from iti.identity import digest

SAMPLES_PER_TENSOR = 16
# Unit roundoff of each floating-point type a model may be loaded in.
_UNIT_ROUNDOFF = {"torch.float64": 2.0 ** -53, "torch.float32": 2.0 ** -24, "torch.float16": 2.0 ** -11,
                  "torch.bfloat16": 2.0 ** -8}
# The smallest normal float16: below it float16 keeps less relative precision.
_FLOAT16_TINY = 2.0 ** -14
# Config entries that fix the architecture, as the config states them (a head geometry would fill in what it
# leaves out, and change the fingerprints recorded); the weights sample stands for everything else.
_CONFIG_KEYS = ("model_type", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size",
                "head_dim", "intermediate_size", "vocab_size")


def weight_sample(model) -> dict:
    """16 evenly spaced values of each sampled tensor, as Python floats, and the dtype they were read in.
    A tensor offloaded to disk ("meta" device) is recorded as None and not compared."""
    import torch

    from iti.models import get_o_proj

    last = head_geometry(model.config).num_layers - 1
    sampled = {"embedding": model.get_input_embeddings().weight, "o_proj_first": get_o_proj(model, 0).weight,
               "o_proj_last": get_o_proj(model, last).weight}
    values = {}
    for name, tensor in sampled.items():
        if tensor.device.type == "meta":
            values[name] = None
            continue
        flat = tensor.detach().reshape(-1)
        positions = (torch.arange(SAMPLES_PER_TENSOR) * (flat.numel() - 1) // (SAMPLES_PER_TENSOR - 1)).to(flat.device)
        values[name] = [float(v) for v in flat[positions].to(torch.float64).cpu()]
    return {"dtype": str(next(model.parameters()).dtype), "values": values}


def model_fingerprint(model, tokenizer) -> dict:
    """The record that tells this model apart from any other: config, the tokenizer's vocabulary and the special
    tokens it adds (BOS, EOS), and the weight sample."""
    text = text_config(model.config)
    vocab = sorted(tokenizer.get_vocab().items())
    return {"config": {key: getattr(text, key, None) for key in _CONFIG_KEYS},
            "tokenizer": digest({"vocab": vocab, "bos": tokenizer.bos_token, "eos": tokenizer.eos_token}),
            "weights": weight_sample(model)}


def differs(recorded: dict, current: dict) -> str | None:
    """Why two model fingerprints are of different models, or None when they are the same model."""
    if recorded.get("config") != current.get("config"):
        changed = sorted(k for k in _CONFIG_KEYS if recorded.get("config", {}).get(k) != current["config"].get(k))
        return f"another architecture ({', '.join(changed)} differ)"
    if recorded.get("tokenizer") != current.get("tokenizer"):
        return "another tokenizer"
    dtypes = (recorded["weights"]["dtype"], current["weights"]["dtype"])
    rounding = 2 * max(_UNIT_ROUNDOFF.get(dtype, 2.0 ** -8) for dtype in dtypes)
    floor = _FLOAT16_TINY * rounding if "torch.float16" in dtypes else 0.0
    for name, values in current["weights"]["values"].items():
        before = recorded["weights"]["values"].get(name)
        if values is None or before is None:
            continue
        for a, b in zip(before, values):
            if not math.isclose(a, b, rel_tol=rounding, abs_tol=floor):
                return f"other weights ({name} differs: {a:.6g} against {b:.6g})"
    return None
