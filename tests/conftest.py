"""Shared fixtures and helpers: the local TruthfulQA, tiny random models of three shapes and of many families,
the bundled real model, head shifts and padded batches to test with.

The reference the tests compare against is legacy/ (plain hooks, one example at a time, and the public
workflow's own ranking and splits); tests import it directly and import helpers only from here.
"""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

# One thread per process unless the caller says otherwise (the scripts the tests start inherit it):
# the models here are small, so a second thread buys little, and on a machine whose cores are busy
# OpenMP threads spin-wait for each other, which made the suite several times slower under load.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]


def _tqa_dir() -> Path:
    candidates = (REPO_ROOT / "TruthfulQA", REPO_ROOT.parent / "shared" / "truthfulqa")
    for candidate in candidates:
        if (candidate / "TruthfulQA.csv").is_file():
            return candidate
    message = (f"no local TruthfulQA (looked for TruthfulQA.csv in {', '.join(map(str, candidates))}); "
               "link a copy to ./TruthfulQA (setup.sh does so from ../shared/truthfulqa)")
    if os.environ.get("CI", "").lower() in ("true", "1"):
        # In CI a silent skip would pass every TruthfulQA test without running one.
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def tqa_path() -> Path:
    return _tqa_dir()


@pytest.fixture(scope="session")
def tqa(tqa_path):
    from iti.data import load_truthfulqa

    return load_truthfulqa(tqa_path)


@pytest.fixture(scope="session")
def bundled_folder() -> Path:
    """The bundled SmolLM2 GGUF converted (once, cached) to an ordinary model folder."""
    from iti.models import bundled_gguf_path, gguf_to_folder

    return gguf_to_folder(bundled_gguf_path())


@pytest.fixture(scope="session")
def bundled(bundled_folder):
    from iti.models import load_model

    return load_model(str(bundled_folder), device="cpu")


@pytest.fixture(scope="session")
def tokenizer(bundled_folder):
    from iti.models import load_tokenizer

    return load_tokenizer(str(bundled_folder))


def tiny_config(shape: str, vocab_size: int):
    """Three shapes that break different assumptions: plain multi-head, grouped-query, heads·d ≠ hidden."""
    from transformers import LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                  max_position_embeddings=512, tie_word_embeddings=False)
    if shape == "llama":
        return LlamaConfig(num_attention_heads=4, num_key_value_heads=4, **common)
    if shape == "gqa":
        return Qwen2Config(num_attention_heads=6, num_key_value_heads=2, **common)
    if shape == "wide_heads":
        return LlamaConfig(num_attention_heads=4, num_key_value_heads=2, head_dim=20, **common)
    raise ValueError(shape)


TINY_SHAPES = ("llama", "gqa", "wide_heads")


def model_from_config(config, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random causal LM of `config`, in eval mode, with its weight matrices scaled up."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    # Random init makes attention nearly uniform; larger weights make heads differ and bugs visible.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2 and "embed" not in name:
                param.mul_(3.0)
    return model.eval().requires_grad_(False)


def make_tiny_model(shape: str, vocab_size: int, seed: int = 0):
    return model_from_config(tiny_config(shape, vocab_size), seed)


# Families whose tiny models the bake and export tests build: those the model registry names (Llama and
# SmolLM2, Mistral, Qwen2.5, Gemma 2) and the others iti.bake lists as bakeable.
FAMILIES = ("llama", "qwen2", "mistral", "gemma2", "gemma3", "qwen3", "gemma", "olmo", "olmo2", "granite", "cohere",
            "smollm3", "deepseek_v3", "starcoder2")


def family_config(family: str, vocab_size: int = 128, **overrides):
    """A 2-layer config of one transformers family: hidden 32, 4 query heads of 8, 2 key-value heads, with the
    family's own features switched on where they matter (tied embeddings, RoPE scaling, sliding windows, MLA)."""
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                  bos_token_id=None, eos_token_id=None, pad_token_id=None)
    special = {
        "llama": ("LlamaConfig", dict(tie_word_embeddings=True)),  # as SmolLM2
        "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True, rms_norm_eps=1e-5, rope_parameters={
            "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 1e6})),
        "mistral": ("MistralConfig", dict(sliding_window=None, head_dim=16, rope_parameters={
            "rope_type": "linear", "factor": 2.0, "rope_theta": 1e6})),
        "gemma2": ("Gemma2Config", dict(head_dim=8, sliding_window=4)),
        "gemma3": ("Gemma3TextConfig", dict(head_dim=8, sliding_window=4)),
        "qwen3": ("Qwen3Config", dict(head_dim=8)),
        "gemma": ("GemmaConfig", dict(head_dim=8)),
        "olmo": ("OlmoConfig", {}),
        "olmo2": ("Olmo2Config", {}),
        "granite": ("GraniteConfig", {}),
        "cohere": ("CohereConfig", {}),
        "smollm3": ("SmolLM3Config", {}),
        # Multi-head latent attention: the o_proj input is heads x v_head_dim; dense MLPs only (the MoE
        # kernels take no float64).
        "deepseek_v3": ("DeepseekV3Config", dict(num_key_value_heads=4, kv_lora_rank=8, q_lora_rank=16,
                                                 qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=12,
                                                 first_k_dense_replace=2, n_routed_experts=4, num_experts_per_tok=2,
                                                 n_group=1, topk_group=1)),
        "starcoder2": ("Starcoder2Config", {}),
    }
    class_name, extra = special[family]
    return getattr(transformers, class_name)(**{**common, **extra, **overrides})


def tiny_model_folder(tmp_path_factory, name: str, shape: str, tokenizer, seed: int = 0) -> Path:
    """A tiny model saved as an ordinary model folder (config, safetensors, the bundled tokenizer)."""
    folder = tmp_path_factory.mktemp(name)
    make_tiny_model(shape, len(tokenizer), seed=seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session", params=TINY_SHAPES)
def tiny(request, tokenizer):
    return make_tiny_model(request.param, len(tokenizer)), tokenizer


def broken_tqa_copy(folder: Path, tqa_path: Path, bad_row: str, rows_before: int = 3) -> Path:
    """A TruthfulQA folder whose CSV has `bad_row` on line rows_before + 2 (after the header and
    `rows_before` good rows), followed by good rows again."""
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "mc_task.json").write_bytes((tqa_path / "data" / "mc_task.json").read_bytes())
    lines = (tqa_path / "TruthfulQA.csv").read_text(encoding="utf-8-sig").splitlines(keepends=True)
    (folder / "TruthfulQA.csv").write_text("".join(lines[:rows_before + 1]) + bad_row + "\n"
                                           + "".join(lines[rows_before + 1:rows_before + 4]), encoding="utf-8")
    return folder


def write_features(folder: Path, name: str, prompt_set, acts, model, tokenizer, limit: int | None = None) -> None:
    """Activations of the test's own making for a real prompt set, saved under get_activations' names with the
    record get_activations writes (the model's fingerprint, the rows' digests), so every consumer's checks
    pass and the test knows exactly what the features hold."""
    from iti.fingerprint import model_fingerprint
    from iti.geometry import head_geometry

    geometry = head_geometry(model.config)
    assert acts.shape == (len(prompt_set), geometry.num_layers, geometry.width)
    write_feature_files(folder, name, prompt_set, acts, limit, model_fingerprint(model, tokenizer),
                        num_layers=geometry.num_layers, num_heads=geometry.num_heads, head_dim=geometry.head_dim,
                        kinds=["head_wise"])


def write_feature_files(folder: Path, name: str, prompt_set, acts, limit: int | None = None,
                        fingerprint: dict | None = None, drop: tuple[str, ...] = (), **fields) -> None:
    """`acts` of a prompt set and its labels and question ids under get_activations' names, with the record it
    writes (a stand-in fingerprint unless given; each file's SHA-256 computed here, from its bytes), `fields` set in
    it and the keys in `drop` left out."""
    import json

    import numpy as np

    from iti.activations import feature_id, feature_record
    from iti.features import feature_path

    arrays = {"head_wise": np.asarray(acts, np.float32), "labels": prompt_set.labels,
              "question_ids": prompt_set.question_ids}
    folder.mkdir(parents=True, exist_ok=True)
    for kind, array in arrays.items():
        np.save(feature_path(folder, name, prompt_set.name, kind, limit), array)
    record = feature_record(prompt_set, name, limit, "raw", fingerprint or {"stand-in": True})
    record["sha256"] = file_digests(folder, name, prompt_set.name, limit, arrays)
    record["id"] = feature_id(record)
    record.update(fields)
    record = {key: value for key, value in record.items() if key not in drop}
    feature_path(folder, name, prompt_set.name, "meta", limit).write_text(json.dumps(record))


def file_digests(folder: Path, name: str, dataset: str, limit: int | None, kinds) -> dict[str, str]:
    """{kind: SHA-256 of the file's bytes}, by hashlib here: what the record of a test's own features holds."""
    import hashlib

    from iti.features import feature_path

    return {kind: hashlib.sha256(feature_path(folder, name, dataset, kind, limit).read_bytes()).hexdigest()
            for kind in kinds}


def record_changed_features(meta_path: Path) -> None:
    """After a test changed a set's arrays on purpose: its record (`meta_path`) lists their new SHA-256 (hashlib,
    here) and the id they give, as if get_activations had written them."""
    import hashlib
    import json

    from iti.activations import feature_id

    record = json.loads(meta_path.read_text())
    stem = meta_path.name[:-len("meta.json")]
    record["sha256"] = {kind: hashlib.sha256((meta_path.parent / f"{stem}{kind}.npy").read_bytes()).hexdigest()
                        for kind in record["sha256"]}
    record["id"] = feature_id(record)
    meta_path.write_text(json.dumps(record))


def write_finished_run(folder: Path, name: str, intervenes: bool, mc2: list[float], model_name: str = "tiny",
                       digests: bool = True) -> Path:
    """A finished one-fold validate_2fold run as compare_runs and collect_sweep read it, measured on MC2 only: the
    summary JSON `{name}.json` and its answer file `{name}_answers.csv` (question i, category "c", the i-th score),
    with the answer file's SHA-256 unless `digests` is False (a record of an earlier version); returns the
    summary's path."""
    import dataclasses
    import hashlib
    import json

    import pandas as pd

    from iti.config import ValidationConfig
    from iti.files import plain
    from iti.metrics import METRICS

    cfg = ValidationConfig(model_name=model_name, num_heads=(8,) if intervenes else (0,), alpha=(5.0,),
                           use_center_of_mass=True)
    answers = folder / f"{name}_answers.csv"
    pd.DataFrame({"Category": "c", "Question": [f"Q{i}?" for i in range(len(mc2))],
                  f"{model_name} MC2": mc2}).to_csv(answers, index=False)
    final = {metric.name: None for metric in METRICS} | {"MC2": sum(mc2) / len(mc2)}
    record = {"config": plain(dataclasses.asdict(cfg)), "complete": True, "final": final,
              "resolved": {"intervenes": cfg.intervenes, "method": cfg.method},
              "folds": [{"fold": 0, "test": list(range(len(mc2))), "results": final,
                         "files": {"answers": str(answers)}}]}
    if digests:
        record["folds"][0]["files"]["sha256"] = {str(answers): hashlib.sha256(answers.read_bytes()).hexdigest()}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record))
    return path


def flip_bit(path: Path, offset: int) -> None:
    """Flip the lowest bit of the byte at `offset` of a file, in place: a one-bit corruption."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def tensor_offset(path: Path, name: str) -> int:
    """Where tensor `name`'s first (least significant: little-endian) byte lies in a safetensors file."""
    import json
    import struct

    raw = path.read_bytes()
    header_length = struct.unpack("<Q", raw[:8])[0]
    return 8 + header_length + json.loads(raw[8:8 + header_length])[name]["data_offsets"][0]


# Prompts of different lengths for padded batches.
PROMPTS = [
    "Q: What is the capital of France?\nA:",
    "Q: Hi\nA:",
    "Q: What happens if you crack your knuckles a lot? Tell me.\nA:",
]


def make_shifts(model, pairs=None, alpha: float = 3.0, seed: int = 0, **fields):
    """HeadShifts on the (layer, head) `pairs` of a model (or of a HeadGeometry); by default heads in the
    first and last layers, two in the last, so that shifts compound through the model. Random unit
    directions, σ uniform in [0.5, 2) and probe accuracies uniform in [0.5, 0.9), drawn in that order
    from `seed`; `fields` replace any HeadShifts field."""
    import numpy as np

    from iti.geometry import HeadGeometry, head_geometry
    from iti.head_shifts import HeadShifts

    geo = model if isinstance(model, HeadGeometry) else head_geometry(model.config)
    if pairs is None:
        pairs = [(0, 1), (geo.num_layers - 1, 0), (geo.num_layers - 1, geo.num_heads - 1)]
    rng = np.random.default_rng(seed)
    directions = rng.standard_normal((len(pairs), geo.head_dim))
    values = dict(layers=[layer for layer, _ in pairs], heads=[head for _, head in pairs],
                  directions=directions / np.linalg.norm(directions, axis=1, keepdims=True),
                  sigmas=rng.uniform(0.5, 2.0, len(pairs)), probe_accuracies=rng.uniform(0.5, 0.9, len(pairs)),
                  alpha=alpha, num_layers=geo.num_layers, num_heads=geo.num_heads, head_dim=geo.head_dim)
    return HeadShifts(**{**values, **fields})


def pad(sequences, pad_id: int, side: str):
    """(ids, attention mask) of token sequences padded to the longest on `side`, built by hand."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq)
        mask[row, span] = 1
    return ids, mask


def logit_tolerance(model, logits: torch.Tensor) -> float:
    """How far baked logits may sit from the intervention's: W_o·(x + δ) and W_o·x + W_o·δ round differently.

    A dot product of n terms in the logits' dtype is off by at most n·ε of the sum of its terms' magnitudes;
    the gap appears in each layer's widest sum and is carried to the logits, whose scale bounds the terms.
    The factor 10 leaves room for other summation orders (AVX2, AVX-512); a wrong bias shows at 1e-2.
    """
    from iti.geometry import head_geometry

    geo = head_geometry(model.config)
    text = model.config.get_text_config()
    widest = max(text.hidden_size, text.intermediate_size, geo.width)
    return 10 * torch.finfo(logits.dtype).eps * widest * geo.num_layers * max(1.0, float(logits.abs().max()))


def right_padded_batch(vocab_size: int):
    """Three rows of random token ids, longer than the tiny sliding windows (4), two of them right-padded.

    At most 3 padding tokens, so every query's window holds a real token: a window of padding alone
    gives NaN in float64 eager attention (Gemma 2), which then reaches every row through the values.
    """
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 10:] = 0
    return ids, mask


def only_file(folder: Path, pattern: str) -> Path:
    """The one file in `folder` whose name matches the glob `pattern` (names that end in a hash, as collect_sweep's)."""
    [path] = folder.glob(pattern)
    return path


@contextmanager
def mounted_tmpfs(folder, options: str):
    """A tmpfs mounted at `folder` for the block (root on Linux, as in CI); the test skips, saying why, elsewhere."""
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root on Linux (CI runs so); not possible here")
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
