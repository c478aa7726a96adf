"""Greedy answers to TruthfulQA prompts (docs/method.md §6), batched by length.

Prompts end with `Q: {question}` and no `A:`, so a model continues with `\\nA: ...` and usually goes on with a
new `\\n\\nQ: ...`. Prompts are left-padded: every row's last prompt token, where the shift starts, sits last.
With several settings of head shifts (one ShiftedModel), rows of (prompt, setting) share the length-sorted batches.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from iti.batching import length_sorted_batches, pad_batch, pad_token_id
from iti.intervention import ShiftedModel, only_setting
from iti.prompts import Prompting


def extract_answer(text: str) -> str:
    """The text after the first `A:` (all of it when there is none) and before the next `Q:`, stripped."""
    start = text.find("A:")
    if start >= 0:
        text = text[start + 2:]
    end = text.find("Q:")
    return (text if end < 0 else text[:end]).strip()


class _AnswerComplete(StoppingCriteria):
    """Stops each row once a `Q:` follows its first `A:`: more tokens cannot change `extract_answer`."""

    def __init__(self, tokenizer, prompt_width: int):
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([0 <= t.find("A:") < t.find("Q:", t.find("A:") + 2) for t in texts],
                            device=input_ids.device)


@torch.inference_mode()
def generate_texts_per_setting(shifted: ShiftedModel, tokenizer, prompts: list[str], max_new_tokens: int = 50,
                               batch_size: int = 16, stop_when_answered: bool = True,
                               progress: bool = True) -> list[list[str]]:
    """Per setting of `shifted`, greedy continuations of `prompts` (new tokens only, special tokens dropped), in
    prompt order; with `stop_when_answered` a row stops once its extracted answer is final (the same answer,
    sooner)."""
    sequences = tokenizer(prompts)["input_ids"]
    pad_id = pad_token_id(tokenizer)
    # Each prompt's settings side by side: rows of one length-sorted batch then share their prompts' lengths.
    rows = [(prompt, setting) for prompt in range(len(prompts)) for setting in range(len(shifted.settings))]
    texts = [[""] * len(prompts) for _ in shifted.settings]
    with tqdm(total=len(rows), desc="generation", unit="answer", disable=not progress) as bar:
        for batch in length_sorted_batches([len(sequences[prompt]) for prompt, _ in rows], batch_size):
            ids, mask = pad_batch([sequences[rows[r][0]] for r in batch], pad_id, side="left")
            stopping = StoppingCriteriaList([_AnswerComplete(tokenizer, ids.shape[1])] if stop_when_answered else [])
            output = shifted.generate(ids, mask, settings=torch.tensor([rows[r][1] for r in batch]),
                                      max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      pad_token_id=pad_id, stopping_criteria=stopping)
            decoded = tokenizer.batch_decode(output[:, ids.shape[1]:], skip_special_tokens=True)
            for r, text in zip(batch, decoded):
                prompt, setting = rows[r]
                texts[setting][prompt] = text
            bar.update(len(batch))
    return texts


def generate_texts(shifted: ShiftedModel, tokenizer, prompts: list[str], max_new_tokens: int = 50,
                   batch_size: int = 16, stop_when_answered: bool = True, progress: bool = True) -> list[str]:
    """generate_texts_per_setting of a ShiftedModel of one setting."""
    return only_setting(generate_texts_per_setting(shifted, tokenizer, prompts, max_new_tokens, batch_size,
                                                   stop_when_answered, progress))


def generate_answers_per_setting(shifted: ShiftedModel, tokenizer, questions: list[str],
                                 prompting: Prompting = Prompting(), max_new_tokens: int = 50, batch_size: int = 16,
                                 progress: bool = True) -> list[list[str]]:
    """Per setting of `shifted`, the model's answer to each question, prompted as in docs/method.md §6 (or §9) and
    decoded greedily.

    Raw prompts end with `Q: {question}`: the answer is cut from the continuation. A chat prompt ends
    with the template's generation prompt: the answer is the assistant turn, ended by the model's EOS.
    """
    prompts = [prompting.prompt(q) for q in questions]
    per_setting = generate_texts_per_setting(shifted, tokenizer, prompts, max_new_tokens, batch_size,
                                             stop_when_answered=not prompting.chat, progress=progress)
    return [[text.strip() if prompting.chat else extract_answer(text) for text in texts] for texts in per_setting]


def generate_answers(shifted: ShiftedModel, tokenizer, questions: list[str], prompting: Prompting = Prompting(),
                     max_new_tokens: int = 50, batch_size: int = 16, progress: bool = True) -> list[str]:
    """generate_answers_per_setting of a ShiftedModel of one setting."""
    return only_setting(generate_answers_per_setting(shifted, tokenizer, questions, prompting, max_new_tokens,
                                                     batch_size, progress))
