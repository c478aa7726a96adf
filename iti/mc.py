"""The answer log-probabilities that MC1/MC2/MC3 score (docs/method.md §6; iti.metrics), with prompt-prefix caching.

An answer's tokens are every token that covers at least one of its characters (byte-level tokenizers report
" The" from the space before the answer, so "tokens that start at or after it" would miss the first one). The
shift goes on the answer's tokens only (docs/method.md §5).

Fast path, equal to one forward per answer: every row is tokenized in full (a merge of tokens across the
prompt/answer boundary is the tokenizer's, per row). The prefix common to all rows runs once; per question, the
tokens its rows share (up to the position before their first answer token) extend a copy of that cache, and the
question's rows run as one right-padded batch on it. With several settings of head shifts (one ShiftedModel), the
prefix is the same for all of them (unshifted: the shift starts at the answer), so every setting's rows of a
question run on copies of the one prefix cache, rows of (setting, answer) batched together.
"""
from __future__ import annotations

import copy
import inspect
import math
import os
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from iti.batching import pad_batch
from iti.data import GenerationQuestion
from iti.errors import UsageError
from iti.intervention import ShiftedModel, only_setting
from iti.models import input_device, softmax_precision
from iti.prompts import ANSWER_SEPARATOR, Prompting, answer_prompt


def with_period(answer: str) -> str:
    """TruthfulQA's reference format: stripped, with a closing period added when it has none."""
    answer = answer.strip()
    return answer if answer.endswith(".") else answer + "."


@dataclass
class MCReferences:
    question: str
    best: str
    true: list[str]
    false: list[str]


def mc_references(record: GenerationQuestion, add_period: bool = True) -> MCReferences:
    """The answers as scored: TruthfulQA's with a period added (its own convention), others as written (docs/method.md §9)."""
    form = with_period if add_period else str.strip
    true = [form(a) for a in record.correct_answers]
    false = [form(a) for a in record.incorrect_answers]
    if not true or not false:
        raise UsageError(f"question {record.question!r} needs at least one correct and one incorrect answer for MC")
    return MCReferences(record.question, form(record.best_answer), true, false)


@dataclass
class MCResult:
    """One question's summed answer log-probabilities, what iti.metrics scores as MC1, MC2 and MC3, and each
    answer's token count (the tokens scored)."""
    true_scores: list[float]
    false_scores: list[float]
    best_score: float
    true_tokens: list[int]
    false_tokens: list[int]


@dataclass
class _Row:
    ids: list[int]
    first: int  # index of the first answer token; the row ends with the last answer token

    @property
    def answer_tokens(self) -> int:
        return len(self.ids) - self.first


def tokenize_answer(tokenizer, prompt: str, answer: str, separator: str = ANSWER_SEPARATOR) -> _Row:
    """Tokens of `{prompt}{separator}{answer}` up to the answer's last token, and where the answer's tokens begin."""
    text, start = answer_prompt(prompt, answer, separator)
    encoded = tokenizer(text, return_offsets_mapping=True)
    covering = [k for k, (_, end) in enumerate(encoded["offset_mapping"]) if end > start]
    if not covering:
        raise UsageError(f"answer {answer!r} has no tokens of its own after the prompt")
    if covering[0] == 0:
        raise UsageError("the answer starts at the first token: there is no prompt position to predict it from")
    return _Row(encoded["input_ids"][:covering[-1] + 1], covering[0])


def _shared_length(rows: list[_Row]) -> int:
    """Length of the token prefix all rows share, kept before each row's first answer token's
    predecessor, so every scored logit comes from the batch's own (suffix) positions."""
    return min(len(os.path.commonprefix([row.ids for row in rows])), min(row.first for row in rows) - 1)


@torch.inference_mode()
def _extend_cache(model, cache, ids: list[int], past: int):
    """Run `ids` (one row, unshifted) after `past` cached tokens; returns the grown cache (or None for no ids)."""
    if not ids:
        return cache
    device = input_device(model)
    input_ids = torch.tensor([ids], device=device)
    mask = torch.ones(1, past + len(ids), dtype=torch.long, device=device)
    # Prefix runs need only the cache; skip the [seq, vocab] logits where the model allows it.
    last_only = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    return model(input_ids=input_ids, attention_mask=mask, cache=cache, use_cache=True, **last_only).cache


@torch.inference_mode()
def _score_batch(shifted: ShiftedModel, rows: list[_Row], settings: list[int], cache, past: int) -> list[float]:
    """Summed answer log-probabilities of rows (each under its setting) that share their first `past` tokens (held
    in `cache`)."""
    suffixes = [row.ids[past:] for row in rows]
    ids, suffix_mask = pad_batch(suffixes, 0)
    mask = torch.cat([torch.ones(len(rows), past, dtype=torch.long), suffix_mask], dim=1)
    shift = torch.zeros_like(ids)
    for b, (row, suffix) in enumerate(zip(rows, suffixes)):
        shift[b, row.first - past:len(suffix)] = 1
    kwargs = {}
    if cache is not None:
        cache.batch_repeat_interleave(len(rows))
        kwargs = {"cache": cache, "use_cache": True}
    logits = shifted(ids, mask, shift_mask=shift, settings=torch.tensor(settings), **kwargs).logits
    log_probs = torch.log_softmax(softmax_precision(logits), dim=-1).cpu()
    scores = []
    for b, (row, suffix) in enumerate(zip(rows, suffixes)):
        # Token at suffix index j is predicted by the logits at suffix index j - 1.
        targets = torch.tensor(suffix[row.first - past:])
        positions = torch.arange(row.first - past - 1, len(suffix) - 1)
        scores.append(float(log_probs[b, positions, targets].double().sum()))
    return scores


def score_answers_per_setting(shifted: ShiftedModel, tokenizer, prompts: list[str], answers: list[list[str]],
                              batch_size: int = 32, progress: bool = True,
                              separator: str = ANSWER_SEPARATOR) -> list[list[list[float]]]:
    """Per setting of `shifted`, the summed log-probability of each answer (`answers[i]` those of `prompts[i]`)
    after `{prompt}{separator}`, the shift on answer tokens only; equal, up to float noise, to one forward of the
    full text per answer and setting. At most `batch_size` rows of (setting, answer) per forward."""
    return _score_rows_per_setting(shifted, answer_rows(tokenizer, prompts, answers, separator), batch_size, progress)


def answer_rows(tokenizer, prompts: list[str], answers: list[list[str]],
                separator: str = ANSWER_SEPARATOR) -> list[list[_Row]]:
    """tokenize_answer of each answer after its prompt."""
    return [[tokenize_answer(tokenizer, prompt, answer, separator) for answer in group]
            for prompt, group in zip(prompts, answers)]


def _score_rows_per_setting(shifted: ShiftedModel, rows: list[list[_Row]], batch_size: int,
                            progress: bool) -> list[list[list[float]]]:
    """score_answers_per_setting of answers tokenized (answer_rows)."""
    model = shifted.model
    settings = range(len(shifted.settings))
    scores: list[list[list[float]]] = [[[] for _ in rows] for _ in settings]
    every_row = [row for group in rows for row in group]
    if not every_row:
        return scores
    common = _shared_length(every_row)
    common_cache = _extend_cache(model, None, every_row[0].ids[:common], 0)
    with tqdm(total=len(every_row) * len(settings), desc="MC answers", unit="answer", disable=not progress) as bar:
        for question, group in enumerate(rows):
            if not group:
                continue
            prefix = _shared_length(group)
            prefix_cache = _extend_cache(model, copy.deepcopy(common_cache), group[0].ids[common:prefix], common)
            for setting in settings:
                scores[setting][question] = [math.nan] * len(group)
            # Longest answers first, each answer's settings side by side: a batch's rows are of about one length,
            # so they carry little padding.
            by_length = sorted(range(len(group)), key=lambda answer: -len(group[answer].ids))
            pairs = [(setting, answer) for answer in by_length for setting in settings]
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start:start + batch_size]
                chunk_rows = [group[answer] for _, answer in chunk]
                shared = _shared_length(chunk_rows)
                cache = _extend_cache(model, copy.deepcopy(prefix_cache), chunk_rows[0].ids[prefix:shared], prefix)
                values = _score_batch(shifted, chunk_rows, [setting for setting, _ in chunk], cache, shared)
                for (setting, answer), value in zip(chunk, values):
                    scores[setting][question][answer] = value
                bar.update(len(chunk))
    return scores


def score_answers(shifted: ShiftedModel, tokenizer, prompts: list[str], answers: list[list[str]],
                  batch_size: int = 32, progress: bool = True, separator: str = ANSWER_SEPARATOR) -> list[list[float]]:
    """score_answers_per_setting of a ShiftedModel of one setting."""
    return only_setting(score_answers_per_setting(shifted, tokenizer, prompts, answers, batch_size, progress,
                                                  separator))


def evaluate_mc_per_setting(shifted: ShiftedModel, tokenizer, records: list[GenerationQuestion],
                            prompting: Prompting = Prompting(), batch_size: int = 32, progress: bool = True,
                            add_period: bool = True) -> list[list[MCResult]]:
    """Per setting of `shifted`, each question's reference answers scored (generation-order fields, or any §9
    item): what MC1/MC2/MC3 read."""
    references = [mc_references(record, add_period) for record in records]
    prompts = [prompting.prompt(ref.question) for ref in references]
    # The best answer is one of the true answers in TruthfulQA; scored on its own only if it is not.
    candidates = [ref.true + ref.false + ([] if ref.best in ref.true else [ref.best]) for ref in references]
    rows = answer_rows(tokenizer, prompts, candidates, prompting.answer_separator)
    tokens = [[row.answer_tokens for row in group] for group in rows]
    per_setting = _score_rows_per_setting(shifted, rows, batch_size, progress)
    return [[_mc_result(ref, scores, counts) for ref, scores, counts in zip(references, all_scores, tokens)]
            for all_scores in per_setting]


def _mc_result(ref: MCReferences, scores: list[float], tokens: list[int]) -> MCResult:
    true, false = slice(0, len(ref.true)), slice(len(ref.true), len(ref.true) + len(ref.false))
    best = scores[ref.true.index(ref.best)] if ref.best in ref.true else scores[-1]
    return MCResult(scores[true], scores[false], best, tokens[true], tokens[false])


def evaluate_mc(shifted: ShiftedModel, tokenizer, records: list[GenerationQuestion], prompting: Prompting = Prompting(),
                batch_size: int = 32, progress: bool = True, add_period: bool = True) -> list[MCResult]:
    """evaluate_mc_per_setting of a ShiftedModel of one setting."""
    return only_setting(evaluate_mc_per_setting(shifted, tokenizer, records, prompting, batch_size, progress,
                                                add_period))
