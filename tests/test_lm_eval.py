"""lm-evaluation-harness both ways: the steer file we export equals the baked model inside lm-eval, and lm-eval's
TruthfulQA MC1/MC2 (its prompt and metric code, validation/lm_eval_tasks) equal validate_2fold's per question on the
bundled model, answer by answer within a tolerance derived from the dtype, the depth and the answer's length
(validation/lm_eval_crosscheck.py). Skipped only where lm_eval is not installed; CI installs it, so there it runs."""
from __future__ import annotations

import copy
import importlib.util
import os

import pytest
import torch

from iti.bake import bake_head_shifts
from iti.lm_eval_steer import README_FILE, STEER_FILE, steer_vectors, write_steer_file
from tests.conftest import REPO_ROOT, family_config, logit_tolerance, make_shifts, model_from_config, right_padded_batch
from tests.test_pyvene_export import run_export, shifts_of_a_saved_qwen2  # noqa: F401 (a fixture)

SCRIPT = REPO_ROOT / "validation" / "lm_eval_crosscheck.py"
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module", autouse=True)
def lm_eval_offline():
    """lm_eval importable (else a skip, or under CI a failure: a skip there would pass the check unrun), offline."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        message = "lm_eval is not installed: pip install -e '.[lm-eval]'"
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"CI: {message}", pytrace=False)
        pytest.skip(message)
    with pytest.MonkeyPatch.context() as patch:
        for key, value in OFFLINE.items():
            patch.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def crosscheck():
    spec = importlib.util.spec_from_file_location("lm_eval_crosscheck", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def steered_lm(model, tokenizer, steer_path):
    from lm_eval.models.hf_steered import SteeredModel

    return SteeredModel(pretrained=model, tokenizer=tokenizer, steer_path=str(steer_path), batch_size=8)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "starcoder2"])
def test_lm_eval_steered_with_our_file_equals_the_baked_model(family, tokenizer, tmp_path):
    """lm-eval resolves every hookpoint we write and its additions give the baked model's logits (o_proj with the
    bias W_o·δ), far from the plain model's."""
    model = model_from_config(family_config(family, len(tokenizer)))
    shifts = make_shifts(model, alpha=4.0)
    steered = steered_lm(model, tokenizer, write_steer_file(shifts, model, tmp_path / STEER_FILE))
    ids, mask = right_padded_batch(model.config.vocab_size)
    with torch.no_grad():
        theirs = steered.forward(input_ids=ids, attention_mask=mask).logits
        baked = bake_head_shifts(copy.deepcopy(model), shifts)(input_ids=ids, attention_mask=mask).logits
        plain = model(input_ids=ids, attention_mask=mask).logits
    real = mask.bool()
    tolerance = logit_tolerance(model, baked[real])
    torch.testing.assert_close(theirs[real], baked[real], rtol=0, atol=tolerance)
    assert (theirs[real] - plain[real]).abs().max() > 100 * tolerance


def test_steer_vectors_are_w_o_delta_on_lm_eval_hookpoints(tiny):
    model, _ = tiny
    shifts = make_shifts(model, alpha=2.0)
    vectors = steer_vectors(shifts, model)
    offsets = shifts.layer_offsets()
    assert list(vectors) == [f"layers.{layer}.self_attn.o_proj" for layer in sorted(offsets)]
    for layer, offset in offsets.items():
        entry = vectors[f"layers.{layer}.self_attn.o_proj"]
        # A hand loop over W_o's rows, in float64.
        weight = model.model.layers[layer].self_attn.o_proj.weight.double()
        expected = torch.tensor([float(sum(weight[row, k] * float(offset[k]) for k in range(len(offset))))
                                 for row in range(weight.shape[0])], dtype=torch.float64)
        torch.testing.assert_close(entry["steering_vector"], expected, rtol=0, atol=1e-12)
        assert (entry["steering_coefficient"], entry["action"], entry["bias"], entry["head_index"]) == (1.0, "add", None,
                                                                                                       None)


def test_export_script_writes_the_steer_folder(shifts_of_a_saved_qwen2, tmp_path):
    model, model_dir, shifts = shifts_of_a_saved_qwen2
    run = run_export("--head_shifts", str(tmp_path / "shifts"), "--format", "lm_eval", "--output_dir",
                     str(tmp_path / "export"))
    assert run.returncode == 0, run.stderr
    folder = tmp_path / "export"
    assert sorted(p.name for p in folder.iterdir()) == sorted([README_FILE, STEER_FILE, "head_shifts.json",
                                                               "head_shifts.safetensors"])
    command = f"lm_eval --model steered --model_args pretrained={model_dir},steer_path={folder.resolve() / STEER_FILE}"
    assert command in (folder / README_FILE).read_text() and command in run.stdout
    written = torch.load(folder / STEER_FILE, weights_only=True)  # the test reads it; the project never does
    expected = steer_vectors(shifts, model)
    assert list(written) == list(expected)
    for hookpoint, entry in expected.items():
        torch.testing.assert_close(written[hookpoint]["steering_vector"], entry["steering_vector"], rtol=0, atol=0)
    again = run_export("--head_shifts", str(tmp_path / "shifts"), "--format", "lm_eval", "--output_dir", str(folder),
                       "--check_args")
    assert again.returncode == 2 and "--overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1


def test_import_refuses_the_lm_eval_format(tmp_path):
    run = run_export("--import_from", str(tmp_path), "--format", "lm_eval", "--output_dir", str(tmp_path / "out"),
                     "--check_args")
    assert run.returncode == 2 and "pyvene folders only" in run.stderr and "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def plain_check(crosscheck, bundled, tqa_path):
    """Questions 0 and 2 (MC order: few answers each, to stay fast) scored both ways on the bundled model."""
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = bundled
    check = crosscheck.CrossCheck.of(model, tokenizer, [0, 2], str(tqa_path))
    samples, checks = check.against_ours(HFLM(pretrained=model, tokenizer=tokenizer, batch_size=8), model)
    return check, samples, checks


def test_lm_eval_mc_equals_ours_per_question(plain_check):
    check, _, checks = plain_check
    assert [c.index for c in checks] == [0, 2]
    for question in checks:
        assert question.problems() == []
        # These questions' answers split alike at the boundary, so every one was compared.
        assert question.boundary_answers == []
        assert question.mc1[0] == question.mc1[1]
        scores = [a.ours for a in question.answers]
        # The tolerance is far below the spread of the answers' scores, so a misplaced score or token would show.
        assert max(scores) - min(scores) > 100 * max(a.tolerance for a in question.answers)


def test_a_boundary_split_differently_is_reported_not_compared(crosscheck, bundled, plain_check):
    """An answer starting with a digit: the tokenizer makes the space a token of its own, which lm-eval scores
    with the continuation and we (by character offsets) leave to the prompt."""
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = bundled
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1)
    prompt = "Q: How long do people live?"
    assert crosscheck.boundary_difference(lm, tokenizer, prompt, "People live long.", prompt + "\nA:",
                                          " People live long.") is None
    found = crosscheck.boundary_difference(lm, tokenizer, prompt, "78 years.", prompt + "\nA:", " 78 years.")
    assert found is not None and "5 tokens" in found and "4 tokens" in found
    other_text = crosscheck.boundary_difference(lm, tokenizer, prompt, "78 years.", prompt + "\nA:", " 79 years.")
    assert other_text.startswith(f"the texts differ from character {len(prompt) + 5}")
    answer = crosscheck.AnswerCheck("t", "78 years.", -1.0, -9.0, 1e-3, found)
    question = crosscheck.QuestionCheck(0, "q", [answer], (0.0, 0.0), (0.1, 0.9), 0.0)
    assert question.problems() == [], "a boundary answer is reported apart, not counted as a disagreement"


def test_steered_lm_eval_equals_the_baked_folder_in_lm_eval_and_ours(crosscheck, bundled, plain_check, tmp_path):
    """Head shifts in layers 3, 15 and 29: lm-eval steered with the exported file, lm-eval hf on the baked folder
    and our scorer on the baked folder agree per answer, and all differ from the plain model."""
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = bundled
    check, plain_samples, _ = plain_check
    check = crosscheck.CrossCheck.of(model, tokenizer, [0], check.tqa_path)
    shifts = make_shifts(model, pairs=[(3, 1), (15, 4), (29, 0)], alpha=8.0)
    baked_dir, baked, steered = crosscheck.baked_and_steered(model, tokenizer, shifts, tmp_path, batch_size=8)
    check = check.covering(baked)
    steered_samples, checks = check.against_ours(steered, baked)
    assert checks[0].problems() == [] and checks[0].boundary_answers == []
    baked_lm = HFLM(pretrained=str(baked_dir), dtype="float32", device="cpu", batch_size=8)
    assert check.gaps(steered, steered_samples, check.samples(baked_lm)) == []
    shifted = [r[0] for r in steered_samples["truthfulqa_refs_mc2"][0]["filtered_resps"]]
    unshifted = [r[0] for r in plain_samples["truthfulqa_refs_mc2"][0]["filtered_resps"]]
    widest = max(a.tolerance for a in checks[0].answers)
    assert max(abs(a - b) for a, b in zip(shifted, unshifted)) > 100 * widest
