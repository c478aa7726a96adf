"""The example datasets: the length-matched polite_replies keeps the original's requests, and its two
replies to each request are the same number of tokens as MC scores them (examples/README.md)."""
import pytest

from iti.contrastive import load_dataset_file
from iti.mc import mc_references, tokenize_answer
from iti.prompts import Prompting
from tests.conftest import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples"
# The bare `Q: {question}` prompt of the matching rule, then the raw prompt MC uses by default.
RAW_PROMPTS = {"question_only": Prompting(instruction_prompt="none", primer=False), "instruction_primer": Prompting()}


@pytest.fixture(scope="module")
def original():
    return load_dataset_file(EXAMPLES / "polite_replies.jsonl", "polite_replies").items


@pytest.fixture(scope="module")
def matched():
    return load_dataset_file(EXAMPLES / "polite_replies_matched.jsonl", "polite_replies_matched").items


def _answer_tokens(tokenizer, prompting: Prompting, question: str, answer: str) -> int:
    """How many tokens MC sums over for `answer`: those covering at least one of its characters."""
    row = tokenize_answer(tokenizer, prompting.prompt(question), answer, prompting.answer_separator)
    return len(row.ids) - row.first


def test_matched_replies_keep_the_requests(original, matched):
    assert len(original) == 72
    assert [(item.question, item.category) for item in matched] == [(item.question, item.category) for item in original]
    for item in matched:
        assert len(item.correct_answers) == 1 and len(item.incorrect_answers) == 1, item.question
        assert item.best_answer == item.correct_answers[0]
        assert item.correct_answers[0] != item.incorrect_answers[0], item.question


@pytest.mark.parametrize("add_period", [False, True], ids=["as_written", "with_period"])
@pytest.mark.parametrize("prompt_format", [*RAW_PROMPTS, "chat"])
def test_matched_replies_have_equal_token_counts(matched, tokenizer, prompt_format, add_period):
    """The rule: per item, the polite and the rude reply have the same number of answer tokens after
    `Q: {question}\\nA: `. It holds as well after the prompts MC uses (instruction and primer; the chat
    template), with or without TruthfulQA's closing period, since every reply already ends with one."""
    prompting = Prompting(chat_tokenizer=tokenizer) if prompt_format == "chat" else RAW_PROMPTS[prompt_format]
    unequal = []
    for item in matched:
        references = mc_references(item, add_period)
        polite = _answer_tokens(tokenizer, prompting, item.question, references.true[0])
        rude = _answer_tokens(tokenizer, prompting, item.question, references.false[0])
        if polite != rude:
            unequal.append(f"{item.question!r}: polite {polite}, rude {rude}")
    assert not unequal, "replies of unequal token length:\n" + "\n".join(unequal)


@pytest.mark.parametrize("prompt_format", ["raw", "chat"])
def test_matched_probe_rows_have_equal_lengths(matched, tokenizer, prompt_format):
    """The texts whose last-token activations the probes see: same length, so position gives nothing away."""
    prompting = Prompting(chat_tokenizer=tokenizer) if prompt_format == "chat" else Prompting()
    unequal = [item.question for item in matched
               if len(tokenizer(prompting.probe_text(item.question, item.correct_answers[0]))["input_ids"])
               != len(tokenizer(prompting.probe_text(item.question, item.incorrect_answers[0]))["input_ids"])]
    assert not unequal, f"probe rows of unequal length: {unequal}"


def test_the_original_replies_differ_in_length(original, tokenizer):
    """Why the matched file exists, and a check that the count above can tell lengths apart."""
    prompting = RAW_PROMPTS["question_only"]
    polite = [_answer_tokens(tokenizer, prompting, item.question, item.correct_answers[0]) for item in original]
    rude = [_answer_tokens(tokenizer, prompting, item.question, item.incorrect_answers[0]) for item in original]
    assert sum(rude) < sum(polite)
    assert sum(p != r for p, r in zip(polite, rude)) > len(original) // 2
