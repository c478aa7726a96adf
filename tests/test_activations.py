import numpy as np
import pytest
import torch

from iti.activations import ActivationRecorder, extract_activations, save_features
from iti.features import FeatureSet, feature_path, load_features, require_feature_sets
from iti.data import PromptSet, tqa_mc2_set
from legacy.extraction import prompt_activations
from tests.conftest import make_tiny_model

MIXED_PROMPTS = [
    "Q: What is the capital of France? A: Paris.",
    "Q: Hi A: no",
    "Q: What happens if you crack your knuckles a lot? A: Nothing in particular happens if you crack your knuckles a lot.",
    "Q: Are bats blind? A: No.",
    "Q: Which is denser, water vapor or air? A: Air is denser than water vapor, because it is heavier.",
]


def _extract(model, tokenizer, prompts, batch_size):
    recorder = ActivationRecorder(model)
    geo = recorder.geometry
    out = {"head_wise": np.zeros((len(prompts), geo.num_layers, geo.width), np.float32),
           "layer_wise": np.zeros((len(prompts), geo.num_layers + 1, geo.hidden_size), np.float32)}
    extract_activations(recorder, tokenizer, prompts, out, batch_size=batch_size, progress=False)
    return out


def test_batched_equals_one_at_a_time_on_tiny_models(tiny):
    model, tokenizer = tiny
    out = _extract(model, tokenizer, MIXED_PROMPTS, batch_size=3)
    for row, prompt in enumerate(MIXED_PROMPTS):
        head_wise, layer_wise = prompt_activations(model, tokenizer, prompt)
        np.testing.assert_allclose(out["head_wise"][row], head_wise, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out["layer_wise"][row], layer_wise, rtol=1e-4, atol=1e-4)


def test_head_width_follows_head_dim_not_hidden_size(tokenizer):
    model = make_tiny_model("wide_heads", len(tokenizer))
    out = _extract(model, tokenizer, MIXED_PROMPTS[:2], batch_size=2)
    assert out["head_wise"].shape == (2, 3, 4 * 20)
    assert out["layer_wise"].shape == (2, 4, 48)


@pytest.mark.slow
def test_bundled_model_on_truthfulqa_rows(bundled, tqa, tmp_path):
    model, tokenizer = bundled
    prompt_set = tqa_mc2_set(tqa, limit=3)
    paths = save_features(model, tokenizer, prompt_set, tmp_path, "smol", batch_size=8, progress=False)
    acts, labels, question_ids = load_features(FeatureSet(tmp_path, "smol", "tqa_mc2"))
    assert acts.shape == (len(prompt_set), 30, 576)
    np.testing.assert_array_equal(labels, prompt_set.labels)
    np.testing.assert_array_equal(question_ids, prompt_set.question_ids)
    for row in range(0, len(prompt_set), 4):
        head_wise, _ = prompt_activations(model, tokenizer, prompt_set.prompts[row])
        np.testing.assert_allclose(acts[row], head_wise, rtol=1e-3, atol=1e-3)
    assert not list(tmp_path.glob("*.tmp"))
    assert paths["head_wise"].exists()


def test_failed_extraction_leaves_nothing(tiny, tmp_path):
    model, tokenizer = tiny
    broken = PromptSet("tqa_mc2", ["Q: a A: b", None], np.array([1, 0]), np.array([0, 0]), num_questions=1)
    with pytest.raises(Exception):
        save_features(model, tokenizer, broken, tmp_path, "tiny", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_hidden_states_survive_pyvene_calls(tiny):
    """pyvene strips every forward hook; transformers must still return hidden states afterwards."""
    model, tokenizer = tiny
    _extract(model, tokenizer, MIXED_PROMPTS[:2], batch_size=2)
    ids = tokenizer(MIXED_PROMPTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1


@pytest.fixture(scope="module")
def llama_tiny(tokenizer):
    return make_tiny_model("llama", len(tokenizer)), tokenizer


def test_subset_is_named_apart_and_never_replaces_the_full_set(llama_tiny, tqa, tmp_path):
    model, tokenizer = llama_tiny
    full = save_features(model, tokenizer, tqa_mc2_set(tqa, limit=4), tmp_path, "tiny", progress=False)
    before = np.load(full["head_wise"]).copy()
    subset = save_features(model, tokenizer, tqa_mc2_set(tqa, limit=2), tmp_path, "tiny", progress=False, limit=2)
    assert subset["head_wise"].name == "tiny_tqa_mc2_limit_2_head_wise.npy"
    assert full["head_wise"].name == "tiny_tqa_mc2_head_wise.npy"
    np.testing.assert_array_equal(np.load(full["head_wise"]), before)

    acts, _, ids = load_features(FeatureSet(tmp_path, "tiny", "tqa_mc2"))
    assert ids.max() == 3 and len(acts) == len(before)
    acts, _, ids = load_features(FeatureSet(tmp_path, "tiny", "tqa_mc2", 2))
    np.testing.assert_array_equal(acts, np.load(subset["head_wise"]))
    # No `_limit_3` set: the first 3 questions of the full set stand in for it.
    acts, labels, ids = load_features(FeatureSet(tmp_path, "tiny", "tqa_mc2", 3))
    keep = np.load(full["question_ids"]) < 3
    np.testing.assert_array_equal(acts, before[keep])
    assert ids.max() == 2 and len(labels) == keep.sum()


def test_missing_or_short_sets_name_the_exact_commands(tmp_path):
    from iti.errors import UsageError

    wanted = [FeatureSet(tmp_path, "tiny", "tqa_mc2", 5, "/models/tiny"), FeatureSet(tmp_path, "tiny", "tqa_gen_end_q")]
    with pytest.raises(UsageError) as caught:
        require_feature_sets(wanted)
    message = str(caught.value)
    assert (f"python get_activations/get_activations.py --model_name tiny --dataset_name tqa_mc2 --model_path "
            f"/models/tiny --limit 5 --features_dir {tmp_path} && python get_activations/get_activations.py "
            f"--model_name tiny --dataset_name tqa_gen_end_q --features_dir {tmp_path}") in message


def test_truncated_features_name_the_file_and_the_command(llama_tiny, tqa, tmp_path):
    from iti.errors import UsageError

    model, tokenizer = llama_tiny
    paths = save_features(model, tokenizer, tqa_mc2_set(tqa, limit=2), tmp_path, "tiny", progress=False, limit=2)
    data = paths["head_wise"].read_bytes()
    paths["head_wise"].write_bytes(data[:len(data) // 2])
    with pytest.raises(UsageError, match=r"tiny_tqa_mc2_limit_2_head_wise.npy is truncated or corrupt .*"
                                         r"--dataset_name tqa_mc2 --limit 2 --features_dir"):
        load_features(FeatureSet(tmp_path, "tiny", "tqa_mc2", 2))


def test_killed_runs_leftovers(llama_tiny, tqa, tmp_path):
    """A killed run of the same set leaves temporary files that the next run removes; another set's
    leftovers are named in one note and kept."""
    import os
    import subprocess
    import sys

    from iti.files import temporary_path

    model, tokenizer = llama_tiny
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    own = temporary_path(feature_path(tmp_path, "tiny", "tqa_mc2", "head_wise", 2))
    own = own.with_name(own.name.replace(f"-{os.getpid()}.", f"-{dead.stdout.strip()}."))
    other = temporary_path(feature_path(tmp_path, "tiny", "tqa_gen", "head_wise"))
    # The same set's temporary of a writer still running (this process) is never removed.
    running = temporary_path(feature_path(tmp_path, "tiny", "tqa_mc2", "labels", 2))
    for path in (own, other, running):
        path.write_bytes(b"x" * 1000)
    notes = []
    save_features(model, tokenizer, tqa_mc2_set(tqa, limit=2), tmp_path, "tiny", progress=False, limit=2,
                  log=notes.append)
    assert not own.exists() and other.exists() and running.exists()
    assert len(notes) == 1 and other.name in notes[0] and "1 unfinished" in notes[0]
