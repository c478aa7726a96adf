"""validation/edit_weight.py as a user runs it, on a tiny saved model and synthetic feature files.

The synthetic probing features make three heads separable (true rows shifted one way along a
hidden direction, false rows the other) and leave every other head pure noise, so the top-3
heads are known without running probes; the baked biases are then computed here by hand.
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT, make_tiny_model, write_features

SCRIPT = REPO_ROOT / "validation" / "edit_weight.py"
SEPARABLE = [(0, 2), (1, 1), (2, 3)]
LAYERS, HEADS, D = 3, 4, 12  # the tiny "llama" shape
ALPHA = 5.0


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)


def write_items(path, num_questions=30):
    """A §9 dataset of `num_questions` items, two correct and two incorrect answers each (rows labelled 1, 1, 0, 0)."""
    path.write_text("".join(json.dumps({"question": f"Question {i}?", "correct_answers": [f"Yes {i}.", f"Sure {i}."],
                                        "incorrect_answers": [f"No {i}.", f"Never {i}."]}) + "\n"
                            for i in range(num_questions)))
    return path


def synthetic_acts(labels, head_dim=D, seed=0):
    """Rows of noise, but for three heads where true rows lie one way along a hidden direction, false the other."""
    rng = np.random.default_rng(seed)
    acts = rng.standard_normal((len(labels), LAYERS, HEADS * head_dim))
    for layer, head in SEPARABLE:
        u = rng.standard_normal(head_dim)
        u /= np.linalg.norm(u)
        acts[:, layer, head * head_dim:(head + 1) * head_dim] += np.where(labels[:, None] == 1, 4.0, -4.0) * u
    return acts


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tokenizer):
    from iti.data import build_prompt_set

    root = tmp_path_factory.mktemp("edit_weight")
    model_dir = root / "model"
    model = make_tiny_model("llama", len(tokenizer))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    make_tiny_model("gqa", len(tokenizer)).save_pretrained(root / "qwen2")
    tokenizer.save_pretrained(root / "qwen2")
    data = write_items(root / "synthetic.jsonl")
    prompt_set = build_prompt_set("synthetic", dataset_path=data)
    acts = synthetic_acts(prompt_set.labels)
    write_features(root / "features", "tiny", prompt_set, acts, model, tokenizer)
    return {"root": root, "model_dir": model_dir, "features": root / "features", "model": model, "data": data,
            "prompt_set": prompt_set, "acts": acts, "tokenizer": tokenizer}


def base_args(setup, *extra):
    return ["--model_name", "tiny", "--model_path", str(setup["model_dir"]), "--features_dir", str(setup["features"]),
            "--dataset_name", "synthetic", "--dataset_path", str(setup["data"]), "--device", "cpu", *extra]


def test_end_to_end_biases_are_W_o_times_delta(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    from iti.head_shifts import HeadShifts

    out = tmp_path / "baked"
    limit = 25
    result = run_script(*base_args(setup, "--num_heads", "3", "--alpha", str(ALPHA), "--use_center_of_mass",
                                   "--limit", str(limit), "--output_dir", str(out)))
    assert result.returncode == 0, result.stderr
    assert "baked 3 heads" in result.stdout and str(out) in result.stdout

    qids, labels = setup["prompt_set"].question_ids, setup["prompt_set"].labels
    acts, labels = setup["acts"][qids < limit], labels[qids < limit]
    tuning = acts  # a §9 dataset's own rows set σ
    original = setup["model"]
    expected = {layer: np.zeros(48) for layer in range(LAYERS)}
    for layer, head in SEPARABLE:
        block = acts[:, layer, head * D:(head + 1) * D].astype(np.float32).astype(np.float64)
        theta = block[labels == 1].mean(0) - block[labels == 0].mean(0)
        theta /= np.linalg.norm(theta)
        tuned = tuning[:, layer, head * D:(head + 1) * D].astype(np.float32).astype(np.float64)
        sigma = np.std(tuned @ theta)
        w = original.model.layers[layer].self_attn.o_proj.weight.double().numpy()
        expected[layer] += w[:, head * D:(head + 1) * D] @ (ALPHA * sigma * theta)

    baked, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True, dtype=torch.float32)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    for layer in range(LAYERS):
        attn = baked.model.layers[layer].self_attn
        np.testing.assert_allclose(attn.o_proj.bias.detach().numpy(), expected[layer], rtol=1e-4, atol=1e-5)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            assert not proj.bias.any()
    shifts = HeadShifts.load(out)
    assert sorted(shifts.head_list()) == SEPARABLE and shifts.alpha == ALPHA
    assert shifts.provenance["limit"] == limit and shifts.provenance["method"] == "center_of_mass"
    assert (out / "tokenizer_config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baked"]


def _nan_features(setup, folder):
    acts = setup["acts"].copy()
    acts[5, 1, 3] = np.nan
    write_features(folder, "tiny", setup["prompt_set"], acts, setup["model"], setup["tokenizer"])


def _another_model(setup, folder):
    other = make_tiny_model("wide_heads", len(setup["tokenizer"]))
    acts = synthetic_acts(setup["prompt_set"].labels, head_dim=20)
    write_features(folder, "tiny", setup["prompt_set"], acts, other, setup["tokenizer"])


def _only_probing(setup, folder):
    write_features(folder, "tiny", setup["prompt_set"], setup["acts"], setup["model"], setup["tokenizer"])


@pytest.mark.parametrize("make_features, extra, message", [
    (_only_probing, ["--activations_dataset", "tqa_gen_end_q"],
     "tiny_tqa_gen_end_q_head_wise.npy: make them with `python get_activations/get_activations.py --model_name tiny "
     "--dataset_name tqa_gen_end_q --model_path"),
    (_another_model, [], "tiny_synthetic_head_wise.npy come from another model than this run's: another architecture"),
    (None, ["--num_heads", "13"], "--num_heads 13 exceeds the model's 3 layers x 4 heads = 12"),
    (_nan_features, [], "activations contain NaN or inf"),
    (None, ["--limit", "31"], "--limit 31 is more than the 30 items of"),
    (None, ["--model_path", "qwen2"], "model family qwen2 has no config switch for an o_proj bias"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(setup, tmp_path, monkeypatch, capsys, make_features, extra,
                                                          message):
    features = setup["features"]
    if make_features is not None:
        features = tmp_path / "features"
        make_features(setup, features)
    out = tmp_path / "out" / "baked"
    args = [*base_args(setup, "--num_heads", "3", "--output_dir", str(out)), "--features_dir", str(features),
            *[str(setup["root"] / a) if a == "qwen2" else a for a in extra]]
    # In-process (a subprocess per case would mostly time imports); run_main is what the script's __main__ runs.
    script = _load_script()
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    with pytest.raises(SystemExit) as exit_info:
        script.run_main(script.main)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "out").exists()


def _load_script():
    spec = importlib.util.spec_from_file_location("edit_weight_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
