"""validation/edit_weight.py as a user runs it, on a tiny saved model and synthetic feature files.

The synthetic probing features make three heads separable (true rows shifted one way along a
hidden direction, false rows the other) and leave every other head pure noise, so the top-3
heads are known without running probes; the baked biases are then computed here by hand.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from iti.errors import UsageError
from tests.conftest import REPO_ROOT, family_config, logit_tolerance, make_tiny_model, model_from_config, write_features

SCRIPT = REPO_ROOT / "validation" / "edit_weight.py"
SEPARABLE = [(0, 2), (1, 1), (2, 3)]
LAYERS, HEADS, D = 3, 4, 12  # the tiny "llama" shape
ALPHA = 5.0
# Qwen2 and Mistral of that geometry (saved as Llama), and models that cannot bake: a sliding window shorter
# than the context (Qwen2 on its last layer, Mistral on all) and a family with no o_proj bias switch (Phi-3).
SAME_GEOMETRY = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     head_dim=D, max_position_embeddings=64)
OTHER_FAMILIES = {
    "qwen2": ("qwen2", {}),
    "mistral": ("mistral", {}),
    "qwen2_window": ("qwen2", dict(use_sliding_window=True, sliding_window=16, max_window_layers=2)),
    "mistral_window": ("mistral", dict(sliding_window=16)),
}




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
    """A tiny Llama and Qwen2, Mistral, Phi-3 models of its geometry (and Qwen2, Mistral with short sliding
    windows), a §9 dataset, and per model that bakes synthetic features recorded as that model's."""
    from transformers import Phi3Config

    from iti.data import build_prompt_set

    root = tmp_path_factory.mktemp("edit_weight")
    model_dir = root / "model"
    model = make_tiny_model("llama", len(tokenizer))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    models = {"llama": model}
    for name, (family, extra) in OTHER_FAMILIES.items():
        models[name] = model_from_config(family_config(family, len(tokenizer), **SAME_GEOMETRY, **extra))
    models["phi3"] = model_from_config(Phi3Config(vocab_size=len(tokenizer), pad_token_id=None, **SAME_GEOMETRY))
    for name, other in models.items():
        if name != "llama":
            other.save_pretrained(root / name)
            tokenizer.save_pretrained(root / name)
    data = write_items(root / "synthetic.jsonl")
    prompt_set = build_prompt_set("synthetic", dataset_path=data)
    acts = synthetic_acts(prompt_set.labels)
    for name in ("llama", "qwen2", "mistral"):
        write_features(root / f"features_{name}", "tiny", prompt_set, acts, models[name], tokenizer)
    return {"root": root, "model_dir": model_dir, "features": root / "features_llama", "model": model, "data": data,
            "prompt_set": prompt_set, "acts": acts, "tokenizer": tokenizer, "models": models}


def base_args(setup, *extra):
    return ["--model_name", "tiny", "--model_path", str(setup["model_dir"]), "--features_dir", str(setup["features"]),
            "--dataset_name", "synthetic", "--dataset_path", str(setup["data"]), "--device", "cpu", *extra]


SAVED_AS = {"llama": "LlamaForCausalLM with attention_bias (its own architecture: attention_bias gives every o_proj a "
                      "bias)",
            "qwen2": "LlamaForCausalLM with attention_bias (Qwen2 has no o_proj bias switch; its attention is Llama's, "
                     "its q/k/v biases carried over: identical function)",
            "mistral": "LlamaForCausalLM with attention_bias (Mistral has no o_proj bias switch; its attention is "
                       "Llama's, q/k/v biases zero: identical function)"}


@pytest.mark.parametrize("family", sorted(SAVED_AS))
def test_end_to_end_biases_are_W_o_times_delta(setup, tmp_path, family):
    from transformers import AutoModelForCausalLM

    from iti.head_shifts import HeadShifts
    from iti.intervention import ShiftedModel

    out = tmp_path / "baked"
    limit = 25
    model_dir = setup["model_dir"] if family == "llama" else setup["root"] / family
    result = run_script(*base_args(setup, "--model_path", str(model_dir), "--features_dir",
                                   str(setup["root"] / f"features_{family}"), "--num_heads", "3", "--alpha", str(ALPHA),
                                   "--use_center_of_mass", "--limit", str(limit), "--output_dir", str(out)))
    assert result.returncode == 0, result.stderr
    assert "baked 3 heads" in result.stdout and str(out) in result.stdout
    assert result.stdout.splitlines()[-1] == f"saved as {SAVED_AS[family]}"

    qids, labels = setup["prompt_set"].question_ids, setup["prompt_set"].labels
    acts, labels = setup["acts"][qids < limit], labels[qids < limit]
    tuning = acts  # a §9 dataset's own rows set σ
    original = setup["models"][family]
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
    assert type(baked).__name__ == "LlamaForCausalLM"
    for layer in range(LAYERS):
        attn, source = baked.model.layers[layer].self_attn, original.model.layers[layer].self_attn
        np.testing.assert_allclose(attn.o_proj.bias.detach().numpy(), expected[layer], rtol=1e-4, atol=1e-5)
        for proj in ("q_proj", "k_proj", "v_proj"):
            source_bias = getattr(source, proj).bias
            carried = source_bias if source_bias is not None else torch.zeros_like(getattr(attn, proj).bias)
            assert torch.equal(getattr(attn, proj).bias, carried)
    shifts = HeadShifts.load(out)
    assert sorted(shifts.head_list()) == SEPARABLE and shifts.alpha == ALPHA
    assert shifts.provenance.limit == limit and shifts.provenance.method == "center_of_mass"
    assert (out / "tokenizer_config.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baked"]

    ids = torch.tensor([list(range(5, 40, 3))])
    with torch.no_grad():
        intervened = ShiftedModel(original, shifts)(ids, shift_mask=torch.ones_like(ids)).logits
        got = baked(input_ids=ids).logits
        plain = original(input_ids=ids).logits
    tolerance = logit_tolerance(original, intervened)
    torch.testing.assert_close(got, intervened, rtol=0, atol=tolerance)
    assert (got - plain).abs().max() > 100 * tolerance


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
    (None, ["--model_path", "phi3"], "model family phi3 has no config switch for an o_proj bias"),
    (None, ["--model_path", "qwen2_window"], "this Qwen2 model attends through a sliding window of 16 tokens on 1 of "
                                             "its 3 layers, shorter than its context of 64; a Llama checkpoint cannot "
                                             "express that window"),
    (None, ["--model_path", "mistral_window"], "this Mistral model attends through a sliding window of 16 tokens on 3 "
                                               "of its 3 layers"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(setup, tmp_path, monkeypatch, capsys, make_features, extra,
                                                          message):
    features = setup["features"]
    if make_features is not None:
        features = tmp_path / "features"
        make_features(setup, features)
    out = tmp_path / "out" / "baked"
    args = [*base_args(setup, "--num_heads", "3", "--output_dir", str(out)), "--features_dir", str(features),
            *[str(setup["root"] / a) if a in setup["models"] else a for a in extra]]
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


def test_bakes_of_other_settings_never_share_a_folder_and_overwrite_replaces_only_the_same(setup, tmp_path,
                                                                                           monkeypatch, capsys):
    import iti.bake
    import iti.models

    for module in (iti.bake, iti.models):
        monkeypatch.setattr(module, "EDITED_MODELS_DIR", tmp_path)
    script = _load_script()

    def bake(*extra) -> str:
        """The folder the bake went to, or the error line."""
        monkeypatch.setattr(sys, "argv", [str(SCRIPT), *base_args(setup, "--num_heads", "3", "--limit", "25", *extra)])
        try:
            script.run_main(script.main)
        except SystemExit as stop:
            assert stop.code == 2
            return capsys.readouterr().err.strip()
        return capsys.readouterr().out.split(" -> ")[1].splitlines()[0]

    probe, com = bake(), bake("--use_center_of_mass")
    assert probe != com and sorted(p.name for p in tmp_path.iterdir()) == sorted({Path(probe).name, Path(com).name})
    assert Path(probe).name.startswith("tiny_synthetic_seed_42_top_3_heads_alpha_15_limit_25_")
    assert "holds a bake made with other settings" in bake("--output_dir", com, "--overwrite")
    assert "holds an earlier bake; add --overwrite" in bake("--use_center_of_mass")
    weights = (Path(com) / "model.safetensors").stat().st_mtime_ns
    assert bake("--use_center_of_mass", "--overwrite") == com
    assert (Path(com) / "model.safetensors").stat().st_mtime_ns != weights
    with pytest.raises(UsageError, match="2 edited models in .* could be the bake with seed 42, K 3, alpha 15"):
        iti.models.find_bake("tiny_synthetic", (42, 3, 15.0))


def _run_in_process(monkeypatch, capsys, args) -> tuple[int, str]:
    """(exit code, stdout) of the script's main as its __main__ runs it; a failure's one error line as the output."""
    script = _load_script()
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *args])
    capsys.readouterr()
    try:
        script.run_main(script.main)
    except SystemExit as stop:
        captured = capsys.readouterr()
        errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
        assert stop.code == 0 or (len(errors) == 1 and "Traceback" not in captured.err), captured.err
        return stop.code, errors[0] if errors else captured.out
    return 0, capsys.readouterr().out


def test_the_record_names_the_command_that_remakes_the_same_bake(setup, tmp_path, monkeypatch, capsys):
    out = tmp_path / "baked"
    code, _ = _run_in_process(monkeypatch, capsys, base_args(setup, "--num_heads", "3", "--limit", "25", "--output_dir",
                                                              str(out)))
    record = json.loads((out / "bake.json").read_text())
    words = shlex.split(record["command"])
    assert code == 0 and words[:2] == ["python", "validation/edit_weight.py"] and words[-1] == "--overwrite"
    weights = next(entry["sha256"] for entry in record["files"] if entry["name"] == "model.safetensors")
    (out / "model.safetensors").write_bytes(b"damaged")
    code, _ = _run_in_process(monkeypatch, capsys, words[2:])
    assert code == 0 and hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest() == weights


def test_a_second_bake_into_the_same_folder_refuses_while_the_first_writes(setup, tmp_path, monkeypatch, capsys):
    from iti.files import output_lock

    out = tmp_path / "baked"
    with output_lock(out, "bake"):
        code, error = _run_in_process(monkeypatch, capsys,
                                      base_args(setup, "--num_heads", "3", "--output_dir", str(out)))
    assert code == 2 and f"bake {out} is being written by another process" in error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("dtype, itemsize", [("float32", 4), ("float16", 2)])
def test_too_little_space_is_one_line_before_writing_and_check_args_tells_it(setup, tmp_path, monkeypatch, capsys,
                                                                            dtype, itemsize):
    import shutil

    needed = sum(p.numel() for p in setup["model"].parameters()) * itemsize + 64 * 2**20
    usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(path)._replace(free=needed - 1))
    out = tmp_path / "baked"
    args = base_args(setup, "--num_heads", "3", "--dtype", dtype, "--output_dir", str(out))
    for check_only in (["--check_args"], []):
        code, error = _run_in_process(monkeypatch, capsys, [*args, *check_only])
        assert code == 2 and f"the bake {out} needs about {needed / 1e6:.1f} MB" in error
        assert f"its file system has {(needed - 1) / 1e6:.1f} MB free" in error and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(path)._replace(free=needed))
    assert _run_in_process(monkeypatch, capsys, [*args, "--check_args"]) == (0, "arguments ok\n")


def test_check_args_counts_the_weights_of_a_model_in_the_hub_cache(setup, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub.constants

    from iti.bake_folders import stored_parameter_count
    from iti.config import EditConfig
    from iti.registry import HF_NAMES

    hub_id = HF_NAMES["llama2_chat_7B"]
    repo = tmp_path / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(setup["model_dir"], repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    count = sum(p.numel() for p in setup["model"].parameters())
    assert stored_parameter_count(EditConfig(model_name="llama2_chat_7B")) == count
    assert stored_parameter_count(EditConfig(model_name="llama_7B")) is None  # not downloaded: checked once loaded
