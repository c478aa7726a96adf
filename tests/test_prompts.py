"""Prompt formats (docs/method.md §9): the raw `Q: … A: …` rows and the model's chat template, for probes and MC."""
import copy
import json

import numpy as np
import pytest

from iti.activations import ActivationRecorder, extract_activations
from iti.data import GenerationQuestion, build_prompt_set
from iti.errors import UsageError
from iti.intervention import ShiftedModel
from iti.mc import evaluate_mc
from iti.prompts import Prompting, prompting_for
from legacy.extraction import prompt_activations
from legacy.mc import answer_log_prob

# SmolLM2-Instruct's template, written out by hand: its default system turn, the user turn, the assistant turn.
SMOL_CHAT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
             "<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
ITEM = GenerationQuestion("Is the sky green?", "", "No, it is blue.", ["No, it is blue."], ["Yes, it is green.", "Yes."])


def test_raw_prompts():
    raw = Prompting("none", primer=False)
    assert raw.prompt("Is it?") == "Q: Is it?"
    assert raw.probe_text("Is it?", "No.") == "Q: Is it? A: No."
    assert raw.answer_separator == "\nA: "


def test_chat_prompts_are_the_template(tokenizer):
    chat = prompting_for("chat", tokenizer, "smol", instruction_prompt="none", primer=False)
    assert chat.prompt("Is it?") == SMOL_CHAT.format(question="Is it?")
    assert chat.probe_text("Is it?", "No.") == SMOL_CHAT.format(question="Is it?") + "No."
    assert chat.answer_separator == ""


def test_chat_activations_at_the_answers_last_token(tiny, tmp_path):
    model, tokenizer = tiny
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"question": ITEM.question, "correct_answers": ITEM.correct_answers,
                                "incorrect_answers": ITEM.incorrect_answers}) + "\n")
    chat = prompting_for("chat", tokenizer, "tiny")
    prompt_set = build_prompt_set("mine", dataset_path=path, probe_text=chat.probe_text)
    recorder = ActivationRecorder(model)
    out = {"head_wise": np.zeros((len(prompt_set), recorder.geometry.num_layers, recorder.geometry.width), np.float32)}
    extract_activations(recorder, tokenizer, prompt_set.prompts, out, batch_size=3, progress=False)
    answers = ITEM.correct_answers + ITEM.incorrect_answers
    for row, answer in enumerate(answers):
        hand_built = SMOL_CHAT.format(question=ITEM.question) + answer
        np.testing.assert_allclose(out["head_wise"][row], prompt_activations(model, tokenizer, hand_built)[0],
                                   rtol=1e-4, atol=1e-4)


def test_chat_mc_scores_the_assistant_turn(tiny):
    model, tokenizer = tiny
    chat = prompting_for("chat", tokenizer, "tiny", instruction_prompt="none", primer=False)
    result = evaluate_mc(ShiftedModel(model, None), tokenizer, [ITEM], chat, progress=False, add_period=False)[0]
    prompt = SMOL_CHAT.format(question=ITEM.question)
    expected = [answer_log_prob(model, tokenizer, prompt, answer)
                for answer in ITEM.correct_answers + ITEM.incorrect_answers]
    np.testing.assert_allclose(result.true_scores + result.false_scores, expected, rtol=1e-4, atol=1e-4)


def test_chat_needs_a_template(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(UsageError, match="no chat template"):
        prompting_for("chat", plain, "tiny")
    with pytest.raises(UsageError, match="unknown --prompt_format"):
        prompting_for("chatml", tokenizer, "tiny")
