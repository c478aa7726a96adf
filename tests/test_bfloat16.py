"""The GPU's default precision, bfloat16, on CPU: extraction, validation and baking as a user runs them
(get_activations, validate_2fold --metrics mc, edit_weight, each with --dtype bfloat16) on a tiny Llama
folder, each output checked against an independent computation with a tolerance derived from
bfloat16's precision.

bfloat16 keeps 8 significant bits: a value rounded to it is off by at most eps/2 relative, eps = 2^-8.
A forward through L layers rounds each layer's outputs (norm, projections, attention, MLP, residual)
to bfloat16, so its activations carry errors of some eps per layer above them.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO_ROOT, tiny_model_folder

EPS = 2.0 ** -8  # bfloat16's machine epsilon
LIMIT = 6
NAME = "tiny"
SCRIPTS = {"get_activations": REPO_ROOT / "get_activations" / "get_activations.py",
           "validate_2fold": REPO_ROOT / "validation" / "validate_2fold.py",
           "edit_weight": REPO_ROOT / "validation" / "edit_weight.py"}


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(SCRIPTS[script]), *args], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory, tokenizer, tqa_path):
    """A tiny Llama folder and its features of the first LIMIT questions in bfloat16 (probing and tuning
    sets, as validate_2fold and edit_weight read them) and in float32 (the probing set, to compare)."""
    from iti.activations import save_features
    from iti.data import build_prompt_set
    from iti.models import load_model

    folder = tiny_model_folder(tmp_path_factory, "tiny_bf16", "llama", tokenizer)
    root = tmp_path_factory.mktemp("bf16_work")
    common = ["--model_path", str(folder), "--limit", str(LIMIT), "--device", "cpu", "--tqa_path", str(tqa_path)]
    for dataset in ("tqa_mc2", "tqa_gen_end_q"):
        run("get_activations", "--model_name", NAME, "--dataset_name", dataset, "--dtype", "bfloat16",
            "--features_dir", str(root / "features"), *common)
    model, _ = load_model(str(folder), device="cpu", dtype="float32")
    save_features(model, tokenizer, build_prompt_set("tqa_mc2", tqa_path, limit=LIMIT), root / "features32", NAME,
                  progress=False, limit=LIMIT)
    return {"folder": folder, "root": root, "common": common, "tokenizer": tokenizer}


def features(folder, kind: str, dataset: str = "tqa_mc2") -> np.ndarray:
    return np.load(folder / f"{NAME}_{dataset}_limit_{LIMIT}_{kind}.npy")


def test_features_equal_a_float32_extraction_within_bfloat16_rounding(work):
    meta = json.loads((work["root"] / "features" / f"{NAME}_tqa_mc2_limit_{LIMIT}_meta.json").read_text())
    assert meta["model"]["weights"]["dtype"] == "torch.bfloat16"
    for kind in ("head_wise", "layer_wise"):
        low, full = features(work["root"] / "features", kind), features(work["root"] / "features32", kind)
        assert low.shape == full.shape
        for layer in range(full.shape[1]):
            # Layer l's features come after l + 1 rounded layers (layer-wise 0 is the rounded embedding):
            # allow 8 roundings of eps per layer, relative to each row's norm.
            error = np.linalg.norm(low[:, layer] - full[:, layer], axis=-1)
            allowed = 8 * (layer + 1) * EPS * np.linalg.norm(full[:, layer], axis=-1)
            assert (error <= allowed).all(), (kind, layer, (error / allowed).max())
            # ...and bfloat16 did run: two float32 extractions agree to ~1e-7.
            assert (error / np.linalg.norm(full[:, layer], axis=-1)).max() > EPS / 8, (kind, layer)


@torch.no_grad()
def one_forward_score(model, tokenizer, context: str, answer: str, shifts) -> tuple[float, float]:
    """(summed log-probability of the answer's tokens, Σ over them of the largest |logit| predicting each):
    one unpadded forward with plain hooks (legacy), no cache."""
    from legacy.intervention import shifted_logits
    from legacy.mc import answer_positions

    ids, first = answer_positions(tokenizer, context, answer)
    # Only the logits that predict answer tokens (positions first - 1 ...): the vocabulary-wide head
    # is most of a bfloat16 forward's time on a CPU.
    logits = shifted_logits(model, ids, shifts, start=first, logits_to_keep=len(ids) - first + 1).double()
    log_probs = torch.log_softmax(logits, dim=-1)
    answer = range(len(ids) - first)  # row j predicts token first + j
    return (float(sum(log_probs[j, ids[first + j]] for j in answer)), float(sum(logits[j].abs().max() for j in answer)))


def test_validation_scores_equal_one_forward_per_answer_within_bfloat16_rounding(work, tmp_path):
    from iti.head_shifts import HeadShifts
    from iti.mc import with_period
    from iti.models import load_model

    run("validate_2fold", "--model_name", NAME, *work["common"], "--dtype", "bfloat16", "--features_dir",
        str(work["root"] / "features"), "--results_dir", str(tmp_path), "--num_heads", "4", "--alpha", "5",
        "--use_center_of_mass", "--metrics", "mc", "--batch_size", "4")
    [summary] = (tmp_path / "results_dump" / "summary_dump").glob("*.json")
    record = json.loads(summary.read_text())
    assert record["complete"] and record["resolved"]["model_dtype"] == "torch.bfloat16"
    model, tokenizer = load_model(str(work["folder"]), device="cpu", dtype="bfloat16")
    layers = model.config.num_hidden_layers
    differences, shift_effects = [], []
    for fold in record["folds"]:
        shifts = HeadShifts.load(fold["files"]["head_shifts"])
        for _, row in pd.read_csv(fold["files"]["answers"]).iterrows():
            context = record["resolved"]["prompt"].replace("{question}", row["Question"]) + "\nA: "
            for side, joined in (("true", row["Correct Answers"]), ("false", row["Incorrect Answers"])):
                answers = [with_period(a) for a in joined.split(";") if a.strip()]
                got = json.loads(row[f"{NAME} lprob scores-{side}"])
                assert len(got) == len(answers)
                for answer, score in zip(answers, got):
                    expected, logit_scale = one_forward_score(model, tokenizer, context, answer, shifts)
                    # Either path's logits are off by some eps per rounded layer (L layers and the head) of the
                    # largest logit; a log-softmax moves by at most twice its largest logit change.
                    assert abs(score - expected) <= 2 * (layers + 1) * EPS * logit_scale, (answer, score, expected)
                    differences.append(abs(score - expected))
                    shift_effects.append(abs(one_forward_score(model, tokenizer, context, answer, None)[0] - expected))
    # The comparison sees the shift: the scores are far closer to the shifted forward than to the plain one.
    assert sum(differences) < sum(shift_effects) / 10


def test_bake_bias_is_W_o_delta_rounded_to_bfloat16(work, tmp_path):
    from transformers import AutoModelForCausalLM

    from iti.head_shifts import HeadShifts

    out = tmp_path / "baked"
    alpha = 5.0
    run("edit_weight", "--model_name", NAME, "--model_path", str(work["folder"]), "--limit", str(LIMIT), "--device",
        "cpu", "--dtype", "bfloat16", "--features_dir", str(work["root"] / "features"), "--num_heads", "4",
        "--alpha", str(alpha), "--use_center_of_mass", "--output_dir", str(out))
    original = AutoModelForCausalLM.from_pretrained(work["folder"], dtype=torch.bfloat16)
    baked = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16)
    heads = HeadShifts.load(out).head_list()
    config = original.config
    d = config.head_dim
    # δ by hand from the bfloat16 features: center of mass over every row of the first LIMIT questions,
    # σ the population spread of the tuning rows along it (edit_weight probes all questions, no test fold).
    acts, labels = features(work["root"] / "features", "head_wise"), features(work["root"] / "features", "labels")
    tuning = features(work["root"] / "features", "head_wise", "tqa_gen_end_q")
    deltas = {}
    for layer, head in heads:
        block = acts[:, layer, head * d:(head + 1) * d].astype(np.float64)
        theta = block[labels == 1].mean(0) - block[labels == 0].mean(0)
        theta /= np.linalg.norm(theta)
        sigma = np.std(tuning[:, layer, head * d:(head + 1) * d].astype(np.float64) @ theta)
        delta = deltas.setdefault(layer, np.zeros(config.num_attention_heads * d))
        delta[head * d:(head + 1) * d] = alpha * sigma * theta
    for layer in range(config.num_hidden_layers):
        attention = baked.model.layers[layer].self_attn
        bias = attention.o_proj.bias.detach().float().numpy()
        assert attention.o_proj.bias.dtype == torch.bfloat16
        for projection in (attention.q_proj, attention.k_proj, attention.v_proj):
            assert not projection.bias.any()
        if layer not in deltas:
            assert not bias.any()
            continue
        weight = original.model.layers[layer].self_attn.o_proj.weight.detach().double().numpy()
        expected = torch.tensor(weight @ deltas[layer]).to(torch.bfloat16).float().numpy()
        # One bfloat16 ulp: δ here and in the package differ by float rounding, which may tip the last bit.
        ulp = 2.0 ** (np.floor(np.log2(np.abs(expected))) - 7)
        assert (np.abs(bias - expected) <= ulp).all(), (layer, np.abs(bias - expected).max())
