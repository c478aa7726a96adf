import numpy as np
import pytest
import torch

from iti.activations import ActivationRecorder, extract_activations, load_features, save_features
from iti.data import PromptSet, tqa_mc2_set
from tests.reference import last_token_hidden_states, last_token_o_proj_inputs

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
        expected = last_token_o_proj_inputs(model, tokenizer, prompt).numpy()
        np.testing.assert_allclose(out["head_wise"][row], expected, rtol=1e-4, atol=1e-4)
        hidden = last_token_hidden_states(model, tokenizer, prompt).numpy()
        np.testing.assert_allclose(out["layer_wise"][row], hidden, rtol=1e-4, atol=1e-4)


def test_head_width_follows_head_dim_not_hidden_size(tokenizer):
    from tests.conftest import make_tiny_model

    model = make_tiny_model("wide_heads", len(tokenizer))
    out = _extract(model, tokenizer, MIXED_PROMPTS[:2], batch_size=2)
    assert out["head_wise"].shape == (2, 3, 4 * 20)
    assert out["layer_wise"].shape == (2, 4, 48)


@pytest.mark.slow
def test_bundled_model_on_truthfulqa_rows(bundled, tqa, tmp_path):
    model, tokenizer = bundled
    prompt_set = tqa_mc2_set(tqa, limit=3)
    paths = save_features(model, tokenizer, prompt_set, tmp_path, "smol", batch_size=8, progress=False)
    acts, labels, question_ids = load_features(tmp_path, "smol", "tqa_mc2")
    assert acts.shape == (len(prompt_set), 30, 576)
    np.testing.assert_array_equal(labels, prompt_set.labels)
    np.testing.assert_array_equal(question_ids, prompt_set.question_ids)
    for row in range(0, len(prompt_set), 4):
        expected = last_token_o_proj_inputs(model, tokenizer, prompt_set.prompts[row]).numpy()
        np.testing.assert_allclose(acts[row], expected, rtol=1e-3, atol=1e-3)
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
