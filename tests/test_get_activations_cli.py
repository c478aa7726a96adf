"""The get_activations script as a user runs it: outputs, another family by --model_path, bad input."""
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO_ROOT, tiny_model_folder
from tests.reference import last_token_o_proj_inputs

SCRIPT = REPO_ROOT / "get_activations" / "get_activations.py"


def run_script(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def qwen_folder(tmp_path_factory, tokenizer):
    """A model of another family (Qwen2, grouped-query attention) saved as an ordinary folder."""
    return tiny_model_folder(tmp_path_factory, "tiny_qwen", "gqa", tokenizer)


def test_model_path_folder_of_another_family(qwen_folder, tokenizer, tqa_path, tmp_path):
    result = run_script("--model_name", "tiny_qwen", "--model_path", str(qwen_folder), "--dataset_name", "tqa_gen_end_q",
                        "--limit", "2", "--features_dir", str(tmp_path), "--tqa_path", str(tqa_path), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    # A run on the first N questions is named apart from the full set.
    acts = np.load(tmp_path / "tiny_qwen_tqa_gen_end_q_limit_2_head_wise.npy")
    labels = np.load(tmp_path / "tiny_qwen_tqa_gen_end_q_limit_2_labels.npy")
    categories = (tmp_path / "tiny_qwen_tqa_gen_end_q_limit_2_categories.json").read_text()
    assert not list(tmp_path.glob("tiny_qwen_tqa_gen_end_q_head_wise.npy"))
    from iti.data import build_prompt_set
    from iti.models import load_model

    prompt_set = build_prompt_set("tqa_gen_end_q", tqa_path, limit=2)
    assert acts.shape == (len(prompt_set), 3, 6 * 8) and labels.tolist() == prompt_set.labels.tolist()
    assert "Misconceptions" in categories
    model, _ = load_model(str(qwen_folder), device="cpu")
    for row in (0, len(prompt_set) - 1):
        expected = last_token_o_proj_inputs(model, tokenizer, prompt_set.prompts[row]).numpy()
        np.testing.assert_allclose(acts[row], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--model_name", "llama_9B"], "unknown model name 'llama_9B'; known names: llama_7B"),
    (["--model_path", "/no/such/model"], "does not exist"),
    (["--dataset_name", "tqa_mc3"], "unknown dataset 'tqa_mc3'"),
    (["--limit", "900"], "--limit 900 is out of range"),
    (["--tqa_path", "/no/such/tqa"], "is not a TruthfulQA folder"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = run_script(*args, "--features_dir", str(tmp_path), "--device", "cpu")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and message in error_lines[0]
    assert list(tmp_path.iterdir()) == []


def test_no_truthfulqa_anywhere_says_where_it_looked(monkeypatch, tmp_path):
    import iti.data as data
    from iti.errors import UsageError

    monkeypatch.setattr(data, "DEFAULT_TQA_DIR", tmp_path / "TruthfulQA")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UsageError, match=r"looked in .*TruthfulQA and on the hub .*--tqa_path"):
        data.load_truthfulqa()
