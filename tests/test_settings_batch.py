"""Several settings of head shifts in one batch (issue 29): each row of a batch under its own setting equals that row
under its setting alone (legacy/'s plain hooks, or a ShiftedModel of the one setting), for every schedule; MC, CE/KL,
generation and the judges of Evaluator.evaluate_settings equal `evaluate` of each setting, and each judge loads once.

Batched and alone differ only in how float kernels sum over a batch of another shape, so tolerances come from the
dtype: logit_tolerance (conftest) per logit; a float32 sum (or mean) of n log-probabilities may move by a few n·ε of
its magnitude (`sum_rtol`).
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from iti.ce_kl import CeKl, ce_and_kl, ce_and_kl_per_setting
from iti.evaluation import EvalSpec, Evaluator
from iti.generation import generate_texts, generate_texts_per_setting
from iti.intervention import ShiftedModel
from iti.judges import JudgePanel
from iti.mc import score_answers, score_answers_per_setting, tokenize_answer, with_period
from iti.prompts import Prompting, question_prompt
from legacy.generation import greedy_generate
from legacy.intervention import shifted_logits
from legacy.mc import answer_log_prob
from tests.conftest import PROMPTS, logit_tolerance, make_shifts, make_tiny_model, pad
from tests.test_ce_kl import DOCUMENTS
from tests.test_mc import ODD_ANSWERS, float64_throughout


def grid(model) -> list:
    """Settings that differ in every way a grid's do: heads (K), layers, α, none at all, α = 0."""
    base = make_shifts(model, alpha=6.0)
    other_layer = make_shifts(model, [(1, 0), (1, 2)], alpha=4.0, seed=5)
    return [base, None, base.scaled(2.0), other_layer, base.scaled(0.0)]


def test_rows_of_different_settings_equal_each_row_alone(tiny):
    """Right padding, answer-like mask: row r under setting r % S equals legacy's hooks on that row alone, and is bit
    for bit the same row of the same batch under a ShiftedModel of its setting alone (x + 0 = x)."""
    model, tokenizer = tiny
    settings = grid(model)
    sequences = [tokenizer(p)["input_ids"] for p in PROMPTS] * 2
    row_settings = torch.tensor([r % len(settings) for r in range(len(sequences))])
    ids, mask = pad(sequences, tokenizer.pad_token_id, "right")
    shift_mask = mask.clone()
    shift_mask[:, :3] = 0
    with torch.no_grad():
        batched = ShiftedModel(model, settings)(ids, mask, shift_mask=shift_mask, settings=row_settings).logits
        for row, seq in enumerate(sequences):
            shifts = settings[row_settings[row]]
            expected = shifted_logits(model, seq, shifts, start=3)
            torch.testing.assert_close(batched[row, :len(seq)], expected, rtol=0,
                                       atol=logit_tolerance(model, expected))
            alone = ShiftedModel(model, shifts)(ids, mask, shift_mask=shift_mask).logits
            assert torch.equal(batched[row], alone[row])
        assert (batched[0] - batched[2]).abs().max() > 1e-2, "settings too alike to test"


def test_generation_rows_of_different_settings_equal_each_prompt_alone(tiny):
    """Left padding and a KV cache: each row's setting goes on its last prompt token and each new token."""
    model, tokenizer = tiny
    settings = grid(model)
    sequences = [tokenizer(p)["input_ids"] for p in PROMPTS for _ in range(2)]
    row_settings = torch.tensor([r % len(settings) for r in range(len(sequences))])
    ids, mask = pad(sequences, tokenizer.pad_token_id, "left")
    out = ShiftedModel(model, settings).generate(ids, mask, settings=row_settings, max_new_tokens=6, do_sample=False,
                                                 output_scores=True, return_dict_in_generate=True,
                                                 pad_token_id=tokenizer.pad_token_id)
    for row, seq in enumerate(sequences):
        tokens, logits = greedy_generate(model, seq, settings[row_settings[row]], max_new_tokens=6,
                                         return_logits=True)
        got = out.sequences[row, ids.shape[1]:].tolist()
        assert got[:len(tokens)] == tokens and all(t == tokenizer.pad_token_id for t in got[len(tokens):])
        torch.testing.assert_close(torch.stack([s[row] for s in out.scores[:len(tokens)]]), logits, rtol=0,
                                   atol=logit_tolerance(model, logits))
    assert out.sequences[0].tolist() != out.sequences[1].tolist(), "settings too alike to test"


def test_rows_must_name_their_settings(tiny):
    model, tokenizer = tiny
    ids = torch.tensor([tokenizer(PROMPTS[0])["input_ids"]])
    with pytest.raises(ValueError, match="holds 2 settings: name each row's"):
        ShiftedModel(model, grid(model)[:2])(ids)
    with pytest.raises(ValueError, match=r"settings has shape \(2,\); expected one per row \(1\)"):
        ShiftedModel(model, grid(model)[:2])(ids, settings=torch.tensor([0, 1]))


def mc_inputs(tqa):
    questions = tqa.generation_in_mc_order()[:2]
    prompts = [question_prompt(q.question) for q in questions]
    answers = [[with_period(a) for a in q.correct_answers[:2] + q.incorrect_answers[:1]] + ODD_ANSWERS[i:i + 2]
               for i, q in enumerate(questions)]
    return prompts, answers


def sum_rtol(terms) -> np.ndarray:
    """Relative tolerance of float32 sums of `terms` log-probabilities each."""
    return 4 * np.asarray(terms) * np.finfo(np.float32).eps


def answer_terms(tokenizer, prompts, answers) -> np.ndarray:
    """Per answer, the number of log-probabilities its score sums (its tokens)."""
    return np.array([len(row.ids) - row.first for p, group in zip(prompts, answers)
                     for row in (tokenize_answer(tokenizer, p, a) for a in group)])


def test_mc_scores_of_every_setting_equal_each_setting_alone(tiny, tqa):
    """batch_size 4 over 5 settings × 5 answers: batches mix settings and answers and cut through both."""
    model, tokenizer = tiny
    settings = grid(model)
    prompts, answers = mc_inputs(tqa)
    got = score_answers_per_setting(ShiftedModel(model, settings), tokenizer, prompts, answers, batch_size=4,
                                    progress=False)
    assert len(got) == len(settings)
    rtol = sum_rtol(answer_terms(tokenizer, prompts, answers))
    for shifts, per_question in zip(settings, got):
        alone = score_answers(ShiftedModel(model, shifts), tokenizer, prompts, answers, batch_size=4, progress=False)
        legacy = [answer_log_prob(model, tokenizer, p + "\nA: ", a, shifts) for p, group in zip(prompts, answers)
                  for a in group]
        assert [len(g) for g in per_question] == [len(g) for g in answers]
        tolerance = rtol * np.abs(legacy)
        assert (np.abs(np.concatenate(per_question) - np.concatenate(alone)) <= tolerance).all()
        assert (np.abs(np.concatenate(per_question) - legacy) <= tolerance).all()
    # α = 6 and α = 2 of the same heads differ in every score by more than the tolerance: a mix-up would show.
    assert (np.abs(np.concatenate(got[0]) - np.concatenate(got[2])) > rtol * np.abs(np.concatenate(got[0]))).all()


@pytest.mark.slow
def test_real_model_mc_scores_of_every_setting_equal_each_setting_alone(bundled, tqa):
    """The bundled model in float64 throughout (as tests/test_mc.py), so that a difference is a bug: 32 ulps of
    the score per term, against one plain forward per answer and setting (legacy/)."""
    import copy

    model, tokenizer = float64_throughout(copy.deepcopy(bundled[0]).double()), bundled[1]
    base = make_shifts(model, [(3, 1), (10, 4), (10, 7), (25, 0)], alpha=4.0)
    settings = [base, base.scaled(0.0), make_shifts(model, [(10, 4), (20, 2)], alpha=8.0, seed=2), None]
    prompts, answers = mc_inputs(tqa)
    answers = [group[:3] for group in answers]
    got = score_answers_per_setting(ShiftedModel(model, settings), tokenizer, prompts, answers, batch_size=5,
                                    progress=False)
    for shifts, per_question in zip(settings, got):
        expected = np.array([answer_log_prob(model, tokenizer, p + "\nA: ", a, shifts)
                             for p, group in zip(prompts, answers) for a in group])
        tolerance = 32 * answer_terms(tokenizer, prompts, answers) * np.finfo(np.float64).eps * np.abs(expected)
        assert (np.abs(np.concatenate(per_question) - expected) <= tolerance).all()


def test_ce_and_kl_of_every_setting_equal_each_setting_alone(tiny):
    """5 documents in batches of 3: the last batch's rows of several settings share forwards. KL exactly 0 where a
    setting shifts nothing."""
    model, tokenizer = tiny
    settings = grid(model)
    rows = [tokenizer(doc)["input_ids"][:20] for doc in DOCUMENTS]
    got = ce_and_kl_per_setting(ShiftedModel(model, settings), rows, tokenizer.pad_token_id, batch_size=3,
                                progress=False)
    for shifts, (ce, kl) in zip(settings, got):
        alone_ce, alone_kl = ce_and_kl(ShiftedModel(model, shifts), rows, tokenizer.pad_token_id, batch_size=3,
                                       progress=False)
        # CE: a mean of up to 19 log-probabilities. KL: per position a sum of p·(log q - log p), whose error is
        # bounded by that of log p times Σ p = 1, log p being at most log(vocabulary) in magnitude where p counts.
        np.testing.assert_allclose(ce, alone_ce, rtol=sum_rtol(19))
        np.testing.assert_allclose(kl, alone_kl, rtol=0, atol=sum_rtol(19) * math.log(len(tokenizer)))
        if shifts is None:
            assert kl == [0.0] * len(rows)
    assert min(got[0][1]) > 1e-3, "the shift must move the distribution"


def test_generated_texts_of_every_setting_equal_each_setting_alone(tiny):
    model, tokenizer = tiny
    settings = grid(model)
    prompts = ["Q: What is up?", "Q: x", "Q: Where were the 1992 Olympics held?"]
    got = generate_texts_per_setting(ShiftedModel(model, settings), tokenizer, prompts, max_new_tokens=8,
                                     batch_size=4, stop_when_answered=False, progress=False)
    for shifts, texts in zip(settings, got):
        assert texts == generate_texts(ShiftedModel(model, shifts), tokenizer, prompts, max_new_tokens=8,
                                       stop_when_answered=False, progress=False)
    assert got[0] != got[1], "settings too alike to test"


class CountingLoader:
    """A judge loader that counts its loads and hands out a tiny random judge."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.loads = []

    def __call__(self, source):
        self.loads.append(source)
        return make_tiny_model("llama", len(self.tokenizer), seed=3), self.tokenizer


def test_evaluate_settings_equals_evaluate_of_each_and_loads_each_judge_once(tiny, tqa):
    model, tokenizer = tiny
    settings = grid(model) + [None]
    records = tqa.generation_in_mc_order()[:3]
    spec = EvalSpec(frozenset({"mc", "ce", "kl", "judge", "info"}), "tiny", batch_size=4, max_new_tokens=4)
    loader = CountingLoader(tokenizer)
    judges = JudgePanel({"truth": "truth judge", "info": "info judge"}, sequential=True, loader=loader)
    evaluator = Evaluator(model, tokenizer, Prompting("none"), spec, judges=judges,
                          ce_kl=CeKl(DOCUMENTS, tokenizer, seed=3, batch_size=2, num_samples=4))
    together = evaluator.evaluate_settings(settings, records, progress=False)
    assert loader.loads == ["truth judge", "info judge"]
    assert len(together) == len(settings)
    for shifts, (frame, results) in zip(settings, together):
        alone_frame, alone_results = evaluator.evaluate(shifts, records, progress=False)
        assert list(frame.columns) == list(alone_frame.columns)
        assert frame["tiny"].tolist() == alone_frame["tiny"].tolist()
        # Every number is a float32 sum of at most 128 terms (CE's documents are the longest), or made of such.
        rtol = float(sum_rtol(128))
        for column in frame.columns:
            if frame[column].dtype.kind == "f":
                np.testing.assert_allclose(frame[column], alone_frame[column], rtol=rtol, atol=rtol)
            elif column.startswith("tiny lprob scores"):
                np.testing.assert_allclose(np.concatenate(frame[column].map(json.loads).tolist()),
                                           np.concatenate(alone_frame[column].map(json.loads).tolist()), rtol=rtol)
        assert set(results) == set(alone_results)
        for name, value in results.items():
            assert value == pytest.approx(alone_results[name], rel=rtol, abs=rtol)
        if shifts is None or shifts.alpha == 0:
            assert results["KL"] == 0.0
        assert not math.isnan(results["True*Info"]) and not math.isnan(results["MC2"])
    assert together[0][1]["KL"] > 1e-4
    assert len(loader.loads) == 2 + 2 * len(settings)


def test_no_settings_no_results(tiny, tqa):
    model, tokenizer = tiny
    spec = EvalSpec(frozenset({"mc"}), "tiny")
    evaluator = Evaluator(model, tokenizer, Prompting("none"), spec)
    assert evaluator.evaluate_settings([], tqa.generation_in_mc_order()[:1]) == []
