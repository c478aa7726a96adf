"""MC answer scores: the prefix-cached batched path against one plain forward per answer (legacy/mc.py: plain
hooks for the shift), and the registered MC1/MC2/MC3 of a real question against hand-computed ones."""
import copy
import math
from types import MethodType

import numpy as np
import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from iti.intervention import ShiftedModel
from iti.mc import evaluate_mc, mc_references, score_answers, with_period
from iti.metrics import BY_NAME
from iti.prompts import Prompting, question_prompt
from legacy.mc import answer_log_prob, answer_positions
from tests.conftest import make_shifts


# Answers that start with punctuation, digits, quotes: the first answer token differs in kind.
ODD_ANSWERS = ["'Tis true.", "42 is the answer.", "...and then nothing.", "“Quoted” words.", "Yes"]


@pytest.fixture(scope="module")
def two_questions(tqa):
    return tqa.generation_in_mc_order()[:2]


@pytest.mark.parametrize("with_shift", [False, True])
def test_cached_scores_equal_one_forward_per_answer(tiny, two_questions, with_shift):
    model, tokenizer = tiny
    shifts = make_shifts(model, alpha=6.0) if with_shift else None
    prompts = [question_prompt(q.question) for q in two_questions]
    answers = [[with_period(a) for a in q.correct_answers[:1] + q.incorrect_answers[:1]] + ODD_ANSWERS[2 * i:2 * i + 3]
               for i, q in enumerate(two_questions)]
    # batch_size 3 splits each question's five answers over two batches.
    got = score_answers(ShiftedModel(model, shifts), tokenizer, prompts, answers, batch_size=3, progress=False)
    expected = [[answer_log_prob(model, tokenizer, p + "\nA: ", a, shifts) for a in group]
                for p, group in zip(prompts, answers)]
    assert [len(g) for g in got] == [len(g) for g in answers]
    np.testing.assert_allclose(np.concatenate(got), np.concatenate(expected), rtol=0, atol=2e-4)


def test_shift_changes_scores(tiny, two_questions):
    """Guards the test above: the shift must move the scores, or the shifted case would prove nothing."""
    model, tokenizer = tiny
    prompt = question_prompt(two_questions[0].question)
    answers = [[with_period(two_questions[0].best_answer)]]
    plain = score_answers(ShiftedModel(model, None), tokenizer, [prompt], answers, progress=False)[0][0]
    shifted = score_answers(ShiftedModel(model, make_shifts(model, alpha=6.0)), tokenizer, [prompt], answers,
                            progress=False)[0][0]
    assert abs(plain - shifted) > 1e-2


def _rms_norm_in_its_dtype(self, hidden):
    return self.weight * (hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _rotary_in_float64(self, x, position_ids):
    angles = position_ids[..., None].double() * self.inv_freq.double()
    angles = torch.cat((angles, angles), dim=-1)
    return (angles.cos() * self.attention_scaling).to(x.dtype), (angles.sin() * self.attention_scaling).to(x.dtype)


def float64_throughout(model):
    """A Llama-architecture model computing in float64 at every step.

    `.double()` is not enough: transformers' Llama computes RMSNorm and the rotary angles in float32
    whatever the model's dtype (LlamaRMSNorm casts its input to float32, the rotary embedding forces
    float32), so every normalised hidden state is rounded to float32. Two float64 forwards of one text
    that differ only by float64 rounding (one row, or a padded batch on a cache: other kernels) then
    differ by a float32 ulp wherever a value lies near a float32 rounding boundary: 1.4e-6 on a sum of
    -190 on an AVX-512 CPU, 2.5e-6 here with ATEN_CPU_CAPABILITY=default. The scoring path itself adds
    no float32 step (its shift is bit-identical to the plain hooks on one forward).
    """
    for module in model.modules():
        if isinstance(module, LlamaRMSNorm):
            module.forward = MethodType(_rms_norm_in_its_dtype, module)
    model.model.rotary_emb.forward = MethodType(_rotary_in_float64, model.model.rotary_emb)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("with_shift", [False, True])
def test_real_model_scores_equal_one_forward_per_answer(bundled, two_questions, with_shift):
    """In float64 throughout, so that a difference is a bug, not rounding: each score is a sum of n
    log-probabilities, each a float64 forward's output, so both paths may differ by some ulps of
    each term; the tolerance allows 32 ulps of the score per term (measured: at most 1.5 with the
    AVX2 and the plain kernels), where a float32 step would show as ~1e-7 relative."""
    model, tokenizer = float64_throughout(copy.deepcopy(bundled[0]).double()), bundled[1]
    shifts = make_shifts(model, alpha=4.0) if with_shift else None
    prompts = [question_prompt(q.question) for q in two_questions]
    answers = [[with_period(q.best_answer), with_period(q.incorrect_answers[0]), ODD_ANSWERS[i]]
               for i, q in enumerate(two_questions)]
    got = np.concatenate(score_answers(ShiftedModel(model, shifts), tokenizer, prompts, answers, progress=False))
    expected = np.array([answer_log_prob(model, tokenizer, p + "\nA: ", a, shifts)
                         for p, group in zip(prompts, answers) for a in group])
    terms = np.array([len(ids) - first for p, group in zip(prompts, answers) for a in group
                      for ids, first in [answer_positions(tokenizer, p + "\nA: ", a)]])
    tolerance = 32 * terms * np.finfo(np.float64).eps * np.abs(expected)
    assert (np.abs(got - expected) <= tolerance).all(), (got - expected, tolerance)
    # The float64 replacements compute the model's own function: the stock model agrees to float32 rounding.
    stock = copy.deepcopy(bundled[0]).double()
    stock_scores = [answer_log_prob(stock, tokenizer, prompts[0] + "\nA: ", a, shifts) for a in answers[0]]
    np.testing.assert_allclose(stock_scores, expected[:3], rtol=1e-5)


def test_evaluate_mc_combines_scores_by_hand(tiny, two_questions):
    """evaluate_mc scores every reference answer (periods added) and applies the MC formulas."""
    model, tokenizer = tiny
    record = two_questions[1]
    result = evaluate_mc(ShiftedModel(model, None), tokenizer, [record], Prompting("none"), progress=False)[0]
    prompt = question_prompt(record.question, "none")
    true = [answer_log_prob(model, tokenizer, prompt + "\nA: ", with_period(a)) for a in record.correct_answers]
    false = [answer_log_prob(model, tokenizer, prompt + "\nA: ", with_period(a)) for a in record.incorrect_answers]
    np.testing.assert_allclose(result.true_scores, true, atol=2e-4)
    np.testing.assert_allclose(result.false_scores, false, atol=2e-4)
    best = true[[with_period(a) for a in record.correct_answers].index(with_period(record.best_answer))]
    mc2 = sum(math.exp(t) for t in true) / (sum(math.exp(t) for t in true) + sum(math.exp(f) for f in false))
    assert BY_NAME["MC1"].score(result) == float(best > max(false))
    assert BY_NAME["MC2"].score(result) == pytest.approx(mc2, abs=1e-4)
    assert BY_NAME["MC3"].score(result) == pytest.approx(sum(t > max(false) for t in true) / len(true))


def test_references_get_periods(tqa):
    from iti.data import GenerationQuestion

    record = GenerationQuestion("Q?", "c", "Best one", ["Best one", "Also true."], ["False", "Wrong!"])
    refs = mc_references(record)
    assert refs.best == "Best one." and refs.true == ["Best one.", "Also true."]
    assert refs.false == ["False.", "Wrong!."]


def test_answer_tokens_found_by_offsets(tokenizer):
    """The answer's tokens decode to the answer itself (with the space that a byte-level token carries)."""
    from iti.mc import tokenize_answer

    for answer in ["The cat sat.", "'Tis true.", "42."]:
        row = tokenize_answer(tokenizer, "Q: What?", answer)
        prompt_part, answer_part = tokenizer.decode(row.ids[:row.first]), tokenizer.decode(row.ids[row.first:])
        assert prompt_part + answer_part == "Q: What?\nA: " + answer
        # The space before the answer goes with the answer's first token, or stays a token of its own.
        assert prompt_part.rstrip() == "Q: What?\nA:" and answer_part.strip() == answer


def test_scoring_and_generation_use_the_current_cache_api(tiny, two_questions):
    """No deprecation from our calls into transformers. Its deprecated-argument FutureWarnings name
    torch's Module.__call__ as their origin (so a filter on our modules cannot see them), and some
    are log lines printed once per process: both are caught here, afresh."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    from iti.generation import generate_texts

    model, tokenizer = tiny
    logged = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    hf_logging.warning_once.cache_clear()
    hf_logging.get_logger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for shifts in (None, make_shifts(model, alpha=6.0)):
                shifted = ShiftedModel(model, shifts)
                score_answers(shifted, tokenizer, [question_prompt(q.question) for q in two_questions],
                              [q.correct_answers[:2] + q.incorrect_answers[:2] for q in two_questions],
                              batch_size=3, progress=False)
                generate_texts(shifted, tokenizer, [question_prompt(two_questions[0].question)], max_new_tokens=3,
                               progress=False)
    finally:
        hf_logging.get_logger("transformers").removeHandler(handler)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    assert deprecations == [] and [m for m in logged if "deprecated" in m] == []
