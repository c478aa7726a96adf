"""The library path (iti.api) as a notebook user meets it: every public name is the same callable on every read
and call, in any order, in a fresh interpreter too; head shifts under `iti.applied` / `iti.apply` keep Hugging
Face's `model(...)` and `model.generate(...)`, and give what the plain-hook reference in legacy/ gives on left- and
right-padded batches (both position schedules), what a baked model gives (every position), and what the pyvene
engine generates (the paper's schedule); after leaving, the model is exactly plain again."""
from __future__ import annotations

import copy
import json
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import iti
from iti.api import item_features
from iti.bake import bake_head_shifts
from iti.errors import UsageError
from iti.fitting import Features
from iti.generation import generate_answers
from iti.intervention import ShiftedModel
from iti.models import get_o_proj
from iti.prompts import Prompting
from legacy.extraction import get_activations
from legacy.intervention import shifted_logits
from tests.conftest import PROMPTS, REPO_ROOT, logit_tolerance, make_shifts, pad, tiny_model_folder

QUESTIONS = ["Is a tomato a fruit?", "Hi", "What happens if you crack your knuckles a lot?"]


def polite_items(count: int = 10) -> list[dict]:
    lines = (REPO_ROOT / "examples" / "polite_replies.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines[:count]]


def assert_same_shifts(first, second) -> None:
    assert first.head_list() == second.head_list() and first.alpha == second.alpha
    np.testing.assert_array_equal(first.directions, second.directions)
    np.testing.assert_array_equal(first.sigmas, second.sigmas)


def hooks_on(model) -> list[int]:
    """How many forward and pre-forward hooks each module of the model holds."""
    return [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()]


@pytest.fixture(scope="module")
def padded(tiny):
    """The PROMPTS' token ids and, per side, (ids, attention mask) padded on that side."""
    model, tokenizer = tiny
    sequences = [tokenizer(p)["input_ids"] for p in PROMPTS]
    return sequences, {side: pad(sequences, tokenizer.pad_token_id, side) for side in ("left", "right")}


def greedy_with_scores(tokenizer, steps: int) -> dict:
    """generate's options for `steps` greedy tokens, returned with every step's scores."""
    return dict(max_new_tokens=steps, do_sample=False, output_scores=True, return_dict_in_generate=True,
                pad_token_id=tokenizer.pad_token_id)


def real_span(sequence: list[int], width: int, side: str) -> slice:
    return slice(width - len(sequence), width) if side == "left" else slice(0, len(sequence))


ORDERS = {
    "fit, import iti.api, fit": "import iti\nfirst = iti.fit\nimport iti.api\nassert iti.fit is first, iti.fit\n"
                                "assert callable(iti.fit) and callable(iti.apply)\n",
    "apply before fit, every submodule imported": (
        "import importlib, inspect, pkgutil\nimport iti\napply = iti.apply\nfit = iti.fit\n"
        "for module in pkgutil.iter_modules(iti.__path__):\n    importlib.import_module(f'iti.{module.name}')\n"
        "assert iti.apply is apply and iti.fit is fit\n"
        "for name in iti.__all__:\n    value = getattr(iti, name)\n"
        "    assert callable(value) and not inspect.ismodule(value), (name, value)\n"
        "    assert getattr(iti, name) is value, name\n"),
}


@pytest.mark.parametrize("order", ORDERS)
def test_public_names_are_the_same_callables_in_any_order_in_a_fresh_interpreter(order):
    done = subprocess.run([sys.executable, "-c", ORDERS[order]], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_no_submodule_is_named_like_a_public_name():
    assert {module.name for module in pkgutil.iter_modules(iti.__path__)} & set(iti.__all__) == set()


def test_each_public_name_called_twice(tokenizer, tmp_path, tmp_path_factory):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = tiny_model_folder(tmp_path_factory, "tiny_api", "llama", tokenizer)
    (model, tokenizer), (again, _) = (iti.load_model(str(folder), device="cpu") for _ in range(2))
    for loaded in (model, again):
        assert all(torch.equal(loaded.state_dict()[key], value) for key, value in saved_weights(folder).items())

    items = polite_items()
    (shifts, report), (twice, _) = (iti.fit(model, tokenizer, items, num_heads=3, alpha=4.0, progress=False)
                                    for _ in range(2))
    assert_same_shifts(shifts, twice)
    ids, mask = pad([tokenizer(p)["input_ids"] for p in PROMPTS], tokenizer.pad_token_id, "right")
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        shifted = []
        for _ in range(2):
            handle = iti.apply(model, shifts)
            shifted.append(model(input_ids=ids, attention_mask=mask).logits)
            handle.remove()
            with iti.applied(model, shifts):
                shifted.append(model(input_ids=ids, attention_mask=mask).logits)
    assert all(torch.equal(logits, shifted[0]) for logits in shifted) and not torch.equal(shifted[0], plain)

    answers = [iti.generate(model, tokenizer, QUESTIONS, max_new_tokens=5, shifts=shifts) for _ in range(2)]
    assert answers[0] == answers[1]
    shifts.save(tmp_path / "shifts")
    assert_same_shifts(iti.HeadShifts.load(tmp_path / "shifts"), iti.HeadShifts.load(tmp_path / "shifts"))
    for name in ("one", "two"):
        assert (iti.export_pyvene(shifts, model.config, tmp_path / name) / "head_shifts.json").is_file()
    scores = report.heads["val_accuracy"].to_numpy().reshape(shifts.num_layers, shifts.num_heads)
    figures = [iti.head_accuracy_heatmap(scores, "twice") for _ in range(2)]
    assert figures[0] is not figures[1]
    for figure in figures:
        plt.close(figure)


def saved_weights(folder) -> dict[str, torch.Tensor]:
    """The weights save_pretrained wrote, read with safetensors alone."""
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_load_model_takes_registry_names_and_refuses_unknown_ones(bundled_folder):
    model, tokenizer = iti.load_model("smollm2_135M_instruct", device="cpu")
    assert model.config.num_hidden_layers == 30 and tokenizer.pad_token_id is not None
    with pytest.raises(UsageError, match="does not exist"):
        iti.load_model("no_such_model", device="cpu")


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("positions", ["all", "generation"])
def test_applied_matches_plain_hooks_on_padded_batches(tiny, padded, side, positions):
    model, _ = tiny
    shifts = make_shifts(model)
    sequences, batches = padded
    ids, mask = batches[side]
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with iti.applied(model, shifts, positions=positions):
            logits = model(input_ids=ids, attention_mask=mask).logits
    for row, sequence in enumerate(sequences):
        first = 0 if positions == "all" else len(sequence) - 1
        expected = shifted_logits(model, sequence, shifts, start=first)
        got = logits[row, real_span(sequence, ids.shape[1], side)]
        tolerance = logit_tolerance(model, expected)
        torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)
        assert (expected[-1] - shifted_logits(model, sequence, None)[-1]).abs().max() > 100 * tolerance, \
            "shift too small to test"
        # Before the first shifted position nothing moves: the same batch computes the same numbers.
        unshifted = real_span(sequence, ids.shape[1], side)
        unshifted = slice(unshifted.start, unshifted.start + first)
        assert torch.equal(logits[row, unshifted], plain[row, unshifted])


def test_generation_schedule_shifts_every_new_token_on_a_filled_cache(tiny, padded):
    model, _ = tiny
    shifts = make_shifts(model)
    sequences, _ = padded
    prompt, new = sequences[2][:-3], sequences[2][-3:]
    with torch.no_grad(), iti.applied(model, shifts, positions="generation"):
        cache = model(input_ids=torch.tensor([prompt]), use_cache=True).cache
        logits = model(input_ids=torch.tensor([new]), cache=cache).logits[0]
    # One forward of the whole sequence, shifted from the prompt's last token on.
    expected = shifted_logits(model, prompt + new, shifts, start=len(prompt) - 1)[-len(new):]
    torch.testing.assert_close(logits, expected, rtol=0, atol=logit_tolerance(model, expected))
    last_only = shifted_logits(model, prompt + new, shifts, start=len(prompt) + len(new) - 1)[-len(new):]
    assert (expected[0] - last_only[0]).abs().max() > 100 * logit_tolerance(model, expected), "shift too small to test"


def test_every_position_equals_the_baked_model(tiny, padded):
    model, _ = tiny
    shifts = make_shifts(model)
    baked = bake_head_shifts(copy.deepcopy(model), shifts)
    _, batches = padded
    for ids, mask in batches.values():
        with torch.no_grad(), iti.applied(model, shifts):
            logits = model(input_ids=ids, attention_mask=mask).logits
        with torch.no_grad():
            expected = baked(input_ids=ids, attention_mask=mask).logits
        real = mask.bool()
        torch.testing.assert_close(logits[real], expected[real], rtol=0, atol=logit_tolerance(model, expected[real]))


def test_leaving_or_removing_gives_the_plain_model_exactly(tiny, padded, tmp_path):
    model, tokenizer = tiny
    shifts = make_shifts(model)
    _, batches = padded
    ids, mask = batches["left"]
    kwargs = greedy_with_scores(tokenizer, 4)
    hooks = hooks_on(model)

    def run():
        with torch.no_grad():
            return model(input_ids=ids, attention_mask=mask).logits, model.generate(input_ids=ids, attention_mask=mask,
                                                                                    **kwargs)

    plain_logits, plain_out = run()
    shifts.save(tmp_path / "shifts")
    for positions in ("all", "generation"):
        with pytest.raises(RuntimeError, match="inside"), iti.applied(model, tmp_path / "shifts", positions=positions):
            assert not torch.equal(run()[0], plain_logits)
            raise RuntimeError("inside the block")
        handle = iti.apply(model, shifts, alpha=-2.0, positions=positions)
        assert hooks_on(model) != hooks
        handle.remove()
        handle.remove()  # a second removal is harmless
        assert hooks_on(model) == hooks
        logits, out = run()
        assert torch.equal(logits, plain_logits) and torch.equal(out.sequences, plain_out.sequences)
        assert all(torch.equal(a, b) for a, b in zip(out.scores, plain_out.scores))


def test_alpha_and_a_saved_folder_apply_as_the_shifts_they_name(tiny, padded, tmp_path):
    model, _ = tiny
    shifts = make_shifts(model)
    shifts.save(tmp_path / "shifts")
    _, batches = padded
    ids, mask = batches["right"]

    def logits(*args, **kwargs):
        with torch.no_grad(), iti.apply(model, *args, **kwargs):
            return model(input_ids=ids, attention_mask=mask).logits

    assert torch.equal(logits(tmp_path / "shifts"), logits(shifts))
    assert torch.equal(logits(str(tmp_path / "shifts"), alpha=7.0), logits(shifts.scaled(7.0)))
    assert not torch.equal(logits(shifts, alpha=7.0), logits(shifts))


def test_generation_schedule_generates_as_the_pyvene_engine(tiny, padded):
    model, tokenizer = tiny
    shifts = make_shifts(model)
    _, batches = padded
    ids, mask = batches["left"]
    kwargs = greedy_with_scores(tokenizer, 6)
    expected = ShiftedModel(model, shifts).generate(ids, mask, **kwargs)
    with iti.applied(model, shifts, positions="generation"):
        got = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    assert torch.equal(got.sequences, expected.sequences)
    for ours, engine in zip(got.scores, expected.scores):
        torch.testing.assert_close(ours, engine, rtol=0, atol=logit_tolerance(model, engine))
    assert not torch.equal(expected.sequences, model.generate(input_ids=ids, attention_mask=mask, **kwargs).sequences)

    prompting = Prompting(instruction_prompt="none", primer=False)
    engine_answers = generate_answers(ShiftedModel(model, shifts), tokenizer, QUESTIONS, prompting, 8, progress=False)
    assert iti.generate(model, tokenizer, QUESTIONS, max_new_tokens=8, shifts=shifts) == engine_answers
    with iti.applied(model, shifts, positions="generation"):
        assert iti.generate(model, tokenizer, QUESTIONS, max_new_tokens=8) == engine_answers
    assert iti.generate(model, tokenizer, QUESTIONS, max_new_tokens=8) == generate_answers(
        ShiftedModel(model, None), tokenizer, QUESTIONS, prompting, 8, progress=False)


def test_fit_takes_items_or_features(tiny):
    model, tokenizer = tiny
    items = polite_items()
    shifts, _ = iti.fit(model, tokenizer, items, num_heads=3, alpha=4.0, progress=False)
    features = item_features(model, tokenizer, items, progress=False)
    # The same rows read one prompt at a time by the reference extraction.
    legacy_acts, _ = get_activations(model, tokenizer, features_prompts(tokenizer, items), progress=False)
    np.testing.assert_allclose(features.acts, legacy_acts, rtol=1e-4, atol=1e-4)
    from_features, _ = iti.fit(model, tokenizer, features, num_heads=3, alpha=4.0)
    assert_same_shifts(from_features, shifts)
    assert isinstance(features, Features) and from_features.provenance.items == len(items)


def features_prompts(tokenizer, items: list[dict]) -> list[str]:
    """The probe rows' texts as docs/method.md §9 writes them for the raw format: per item its correct answers
    then its incorrect ones, each `Q: {question} A: {answer}`."""
    return [f"Q: {item['question']} A: {answer}" for item in items
            for answer in item["correct_answers"] + item["incorrect_answers"]]


def test_refusals_leave_no_hook_behind(tiny):
    model, tokenizer = tiny
    hooks = hooks_on(model)
    other = make_shifts(model, num_layers=model.config.num_hidden_layers + 1)
    with pytest.raises(UsageError, match="were made for"):
        iti.apply(model, other)
    with pytest.raises(UsageError, match="positions"):
        iti.apply(model, make_shifts(model), positions="answers")
    assert hooks_on(model) == hooks
    handle = iti.apply(model, make_shifts(model))
    with pytest.raises(UsageError, match="the model itself"):
        iti.generate(handle, tokenizer, QUESTIONS)
    handle.remove()
    layer = get_o_proj(model, 0)
    with iti.applied(model, make_shifts(model), positions="generation"):
        with pytest.raises(UsageError, match="call the model"):
            layer(torch.zeros(1, 2, layer.in_features))
    assert hooks_on(model) == hooks


@pytest.fixture(scope="module")
def llama(tokenizer):
    """One tiny model (3 layers x 4 heads of 12) for the argument checks, which fail before any forward."""
    from tests.conftest import make_tiny_model

    return make_tiny_model("llama", len(tokenizer)), tokenizer


def base_model_of(model):
    """The same architecture without its language-model head: no causal LM, it cannot generate."""
    from transformers import AutoModel

    return AutoModel.from_config(model.config)


def features_of(model, tokenizer) -> Features:
    return item_features(model, tokenizer, polite_items(4), progress=False)


# What a notebook user may pass by mistake, and the phrase of the one-line UsageError each gets; `shifts` fit the model.
MISUSES = {
    "questions as one string": (lambda m, t, s: iti.generate(m, t, "Is 2 even?"),
                                "questions is a str, not a list of questions (strings); give a list, e.g. "
                                "['Is 2 even?']"),
    "a question that is a number": (lambda m, t, s: iti.generate(m, t, ["Is 2 even?", 2]),
                                    "questions[1] is an int, not one of the questions (strings)"),
    "prompt_format misspelt": (lambda m, t, s: iti.generate(m, t, QUESTIONS, prompt_format="Chat"),
                               "prompt_format 'Chat' is not one of raw, chat"),
    "no token to generate": (lambda m, t, s: iti.generate(m, t, QUESTIONS, max_new_tokens=0),
                             "max_new_tokens 0 must be at least 1"),
    "batch_size as text": (lambda m, t, s: iti.generate(m, t, QUESTIONS, batch_size="8"),
                           "batch_size '8' is a str, not a whole number"),
    "model and tokenizer swapped": (lambda m, t, s: iti.generate(t, m, QUESTIONS),
                                    "not a Hugging Face causal language model; give the model iti.load_model "
                                    "returns"),
    "a model without its language-model head": (lambda m, t, s: iti.apply(base_model_of(m), s),
                                                "model is a LlamaModel, not a Hugging Face causal language model"),
    "a tokenizer that is a name": (lambda m, t, s: iti.fit(m, "gpt2", polite_items(4)),
                                   "tokenizer is a str, not a Hugging Face tokenizer"),
    "alpha as text": (lambda m, t, s: iti.fit(m, t, polite_items(4), alpha="5"),
                      "alpha '5' is a str, not a number; give a number, e.g. alpha=5.0"),
    "alpha as a bool": (lambda m, t, s: iti.apply(m, s, alpha=True), "alpha True is a bool, not a number"),
    "alpha not a number": (lambda m, t, s: iti.apply(m, s, alpha=float("nan")), "alpha nan is not a number"),
    "alpha beyond float16": (lambda m, t, s: iti.fit(m, t, polite_items(4), alpha=1e300),
                             "alpha 1e+300 must be at most 65504"),
    "no head to shift": (lambda m, t, s: iti.fit(m, t, polite_items(4), num_heads=0),
                         "num_heads 0 must be at least 1"),
    "num_heads a fraction": (lambda m, t, s: iti.fit(m, t, polite_items(4), num_heads=2.5),
                             "num_heads 2.5 is a float, not a whole number"),
    "num_heads as a bool": (lambda m, t, s: iti.fit(m, t, polite_items(4), num_heads=True),
                            "num_heads True is a bool, not a whole number"),
    "more heads than the model has": (lambda m, t, s: iti.fit(m, t, polite_items(4), num_heads=13),
                                      "num_heads 13 exceeds the model's 3 layers x 4 heads = 12; pick at most 12"),
    "more heads than the features hold": (lambda m, t, s: iti.fit(m, t, features_of(m, t), num_heads=13),
                                          "num_heads 13 exceeds the model's 3 layers x 4 heads = 12"),
    "val_ratio leaving nothing to train": (lambda m, t, s: iti.fit(m, t, polite_items(4), val_ratio=1.0),
                                           "val_ratio 1.0 must lie strictly between 0 and 1"),
    "a negative seed": (lambda m, t, s: iti.fit(m, t, polite_items(4), seed=-1), "seed -1 must be at least 0"),
    "items as one item": (lambda m, t, s: iti.fit(m, t, polite_items(1)[0]),
                          "items is a dict, not a list of items (dicts or GenerationQuestion)"),
    "items as questions": (lambda m, t, s: iti.fit(m, t, ["Is 2 even?"]),
                           "items[0] is a str, not one of the items (dicts or GenerationQuestion)"),
    "an item without answers": (lambda m, t, s: iti.fit(m, t, [{"question": "Is 2 even?"}]),
                                "items in memory, record 1: no answers: expected `correct_answers` + "
                                "`incorrect_answers`"),
    "positions of another schedule": (lambda m, t, s: iti.apply(m, s, positions="answers"),
                                      "positions 'answers' is not one of all, generation"),
    "shifts in a list": (lambda m, t, s: iti.apply(m, [s]), "shifts is a list, not HeadShifts or the folder"),
    "shifts of another model's geometry": (
        lambda m, t, s: iti.generate(m, t, QUESTIONS, shifts=make_shifts(m, num_layers=4)),
        "head shifts were made for 4×4×12 (layers×heads×head_dim) but the model has 3×4×12"),
    "a model that is a number": (lambda m, t, s: iti.load_model(7), "name_or_path 7 is an int, not a model name"),
    "a device that is none": (lambda m, t, s: iti.load_model("smollm2_135M_instruct", device="gpu"),
                              "--device gpu is not a device; use auto, cpu, cuda, cuda:N or a GPU index N"),
    "a seed beyond NumPy's": (lambda m, t, s: iti.fit(m, t, polite_items(4), seed=2**32),
                              "seed 4294967296 must be at most 4294967295"),
    "a dtype of another spelling": (lambda m, t, s: iti.load_model("smollm2_135M_instruct", dtype="fp16"),
                                    "dtype 'fp16' is not one of auto, float32, float16, bfloat16"),
}


@pytest.mark.parametrize("misuse", MISUSES)
def test_wrong_arguments_are_one_line_usage_errors_that_leave_no_hook(llama, misuse):
    model, tokenizer = llama
    call, phrase = MISUSES[misuse]
    hooks = hooks_on(model)
    with pytest.raises(UsageError) as refused:
        call(model, tokenizer, make_shifts(model))
    message = str(refused.value)
    assert phrase in message and "\n" not in message, message
    assert hooks_on(model) == hooks
