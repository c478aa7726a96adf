"""The get_activations script as a user runs it: outputs, another family by --model_path, bad input."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from legacy.extraction import prompt_activations
from tests.conftest import REPO_ROOT, mounted_tmpfs, tiny_model_folder

SCRIPT = REPO_ROOT / "get_activations" / "get_activations.py"


def run_script(*args, cwd=REPO_ROOT):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_llama_folder(tmp_path_factory, tokenizer):
    return tiny_model_folder(tmp_path_factory, "tiny_llama", "llama", tokenizer)


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
        head_wise, _ = prompt_activations(model, tokenizer, prompt_set.prompts[row])
        np.testing.assert_allclose(acts[row], head_wise, rtol=1e-4, atol=1e-4)


def test_several_datasets_in_one_run_equal_one_run_each(tiny_llama_folder, tqa_path, tmp_path):
    """`--dataset_name a b` loads the model once and writes, byte for byte, what a run per dataset writes; the
    records differ only in the folder they name."""
    common = ["--model_name", "tiny", "--model_path", str(tiny_llama_folder), "--limit", "2", "--device", "cpu",
              "--tqa_path", str(tqa_path)]
    together = run_script(*common, "--dataset_name", "tqa_mc2", "tqa_gen_end_q", "--features_dir",
                          str(tmp_path / "together"))
    assert together.returncode == 0, together.stderr
    assert [line.split(" -> ")[1].split(" ")[0] for line in together.stdout.splitlines() if " -> " in line] == [
        str(tmp_path / "together" / f"tiny_{name}_limit_2_head_wise.npy") for name in ("tqa_mc2", "tqa_gen_end_q")]
    for name in ("tqa_mc2", "tqa_gen_end_q"):
        alone = run_script(*common, "--dataset_name", name, "--features_dir", str(tmp_path / "alone"))
        assert alone.returncode == 0, alone.stderr
    files = sorted(path.name for path in (tmp_path / "together").iterdir())
    assert files == sorted(path.name for path in (tmp_path / "alone").iterdir())
    assert {"tiny_tqa_mc2_limit_2_head_wise.npy", "tiny_tqa_gen_end_q_limit_2_layer_wise.npy"} <= set(files)
    for name in files:
        mine, theirs = ((tmp_path / folder / name).read_bytes() for folder in ("together", "alone"))
        if name.endswith("_meta.json"):
            mine, theirs = (json.loads(text) for text in (mine, theirs))
            assert mine["config"].pop("features_dir") == str(tmp_path / "together")
            assert theirs["config"].pop("features_dir") == str(tmp_path / "alone")
        assert mine == theirs, name


@pytest.mark.parametrize("args, message", [
    (["--model_name", "llama_9B"], "unknown model name 'llama_9B'; known names: llama_7B"),
    (["--model_path", "/no/such/model"], "does not exist"),
    (["--dataset_name", "tqa_mc3"], "unknown dataset 'tqa_mc3'"),
    (["--limit", "900"], "--limit 900 is out of range"),
    (["--tqa_path", "/no/such/tqa"], "--tqa_path /no/such/tqa does not exist; give an existing folder"),
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


def error_lines(result) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_nothing(bundled_folder, tqa_path, tmp_path):
    """The bundled model's features of 5 questions (4.4 MiB) on a 3 MiB disk. Every block is reserved
    before the first row is written, so the run stops with ENOSPC, not SIGBUS when a memory-mapped page
    finds no space, and removes its temporaries."""
    from transformers import AutoConfig

    from iti.data import build_prompt_set
    from iti.geometry import head_geometry

    geometry = head_geometry(AutoConfig.from_pretrained(bundled_folder))
    rows = len(build_prompt_set("tqa_mc2", tqa_path, limit=5))
    needed = rows * 4 * (geometry.num_layers * geometry.width + (geometry.num_layers + 1) * geometry.hidden_size)
    assert needed > 3 * 2**20
    with mounted_tmpfs(tmp_path / "small_disk", "size=3m") as disk:
        result = run_script("--dataset_name", "tqa_mc2", "--limit", "5", "--device", "cpu", "--features_dir",
                            str(disk), "--tqa_path", str(tqa_path))
        assert result.returncode == 2, result.stderr[-2000:]
        assert error_lines(result) == [f"error: --features_dir {disk} has too little space for these features: they "
                                       f"need {needed / 2**20:.1f} MiB, 3.0 MiB were free; free some space there or "
                                       "give another --features_dir"]
        assert list(disk.iterdir()) == []
        assert os.statvfs(disk).f_bfree == os.statvfs(disk).f_blocks


@pytest.mark.parametrize("check_only", [[], ["--check_args"]])
def test_a_read_only_disk_is_one_line(tiny_llama_folder, tqa_path, tmp_path, check_only):
    """A folder that cannot be written is refused before any work, and --check_args knows it already."""
    with mounted_tmpfs(tmp_path / "read_only", "ro,size=1m") as disk:
        result = run_script("--model_name", "tiny", "--model_path", str(tiny_llama_folder), "--limit", "2",
                            "--device", "cpu", "--features_dir", str(disk / "features"), "--tqa_path", str(tqa_path),
                            *check_only)
        assert result.returncode == 2
        lines = error_lines(result)
        assert lines == [f"error: --features_dir {disk / 'features'}: cannot write in {disk} (Read-only file "
                         "system); give a folder you can write to"], lines
        assert list(disk.iterdir()) == []
