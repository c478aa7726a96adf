"""The library path, no command line and no files needed: load a model, fit head shifts from items in memory (or
from features already extracted), apply them to the model's own forward and generate, with Hugging Face's
`model(...)` and `model.generate(...)` unchanged; save, load and export are HeadShifts' own
(`shifts.save(folder)`, `HeadShifts.load(folder)`) and iti.pyvene_export's.

    import iti
    model, tokenizer = iti.load_model("smollm2_135M_instruct", device="cpu")
    shifts, report = iti.fit(model, tokenizer, items, num_heads=8, alpha=5)
    with iti.applied(model, shifts):
        model.generate(...)                                         # shifted at every position
    iti.generate(model, tokenizer, ["Is a tomato a fruit?"], shifts=shifts)   # the paper's schedule
"""
from __future__ import annotations

import numbers
import os
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from iti.activations import ActivationRecorder, extract_activations
from iti.constants import DTYPES, PROMPT_FORMATS
from iti.contrastive import dataset_from_records
from iti.data import GenerationQuestion, items_prompt_set
from iti.errors import UsageError
from iti.fitting import Features, Recipe, fit_head_shifts, seeded_split
from iti.generation import generate_answers
from iti.geometry import HeadGeometry, head_geometry
from iti.head_shifts import HeadShifts, ShiftProvenance
from iti.intervention import AppliedShifts, ShiftedModel, shifts_at
from iti.models import resolve_model_source
from iti.models import load_model as load_model_source
from iti.options import MAX_SEED, check_alpha, check_fraction, check_range
from iti.prompts import Prompting, prompting_for
from iti.registry import is_known_model
from iti.report import ProbeReport


def load_model(name_or_path: str, device: str | int | None = "auto", dtype: str = "auto",
               trust_remote_code: bool = False):
    """(model, tokenizer) in eval mode, from a registry name (`smollm2_135M_instruct`, `llama3_8B_instruct`, ...),
    a local model folder, a .gguf file or a hub id; device "auto" places it on the GPUs when there are any."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise UsageError(f"name_or_path {name_or_path!r} is {_a(name_or_path)}, not a model name or path; give a "
                         "registry name, a model folder, a .gguf file or a hub id")
    name_or_path = os.fspath(name_or_path)
    _check_choice("dtype", dtype, DTYPES)
    source = resolve_model_source(name_or_path, model_path=None if is_known_model(name_or_path) else name_or_path)
    return load_model_source(source, device, dtype, trust_remote_code)


def fit(model, tokenizer, items_or_features: list[dict | GenerationQuestion] | Features, num_heads: int = 8,
        alpha: float = 5.0, method: str = "center_of_mass", prompt_format: str = "raw", val_ratio: float = 0.2,
        seed: int = 42, batch_size: int = 16, progress: bool = True) -> tuple[HeadShifts, ProbeReport]:
    """Head shifts from contrastive items (dicts in the keys of docs/method.md §9, e.g. `question`,
    `correct_answers`, `incorrect_answers`): their probe rows' activations read in memory, a seeded split of
    the items into training and validation, then iti.fitting.fit_head_shifts; the items' own rows set σ.
    Given iti.fitting.Features instead, no activation is read: their rows are split and fitted as they are."""
    if isinstance(items_or_features, Features):
        features = items_or_features
        heads = HeadGeometry(features.acts.shape[1], features.num_heads, features.acts.shape[2] // features.num_heads)
    else:
        _check_model(model, tokenizer)
        heads = head_geometry(model.config)
    _check_whole("num_heads", num_heads, 1)
    heads.check_num_heads(num_heads, "num_heads")
    _check_number("alpha", alpha)
    check_alpha(alpha, "alpha")
    _check_number("val_ratio", val_ratio)
    check_fraction("val_ratio", val_ratio)
    _check_whole("seed", seed, 0, MAX_SEED)
    if not isinstance(items_or_features, Features):
        features = item_features(model, tokenizer, items_or_features, prompt_format, batch_size, progress)
    return fit_head_shifts(features, seeded_split(features.question_ids, val_ratio, seed),
                           Recipe(num_heads, alpha, method, seed=seed), progress)


def item_features(model, tokenizer, items: list[dict | GenerationQuestion], prompt_format: str = "raw",
                  batch_size: int = 16, progress: bool = True) -> Features:
    """The head-wise activations of the items' probe rows, read in memory; the same rows set σ."""
    _check_model(model, tokenizer)
    _check_list("items", items, (dict, GenerationQuestion), "items (dicts or GenerationQuestion)")
    _check_whole("batch_size", batch_size, 1)
    records = [item if isinstance(item, dict) else vars(item) for item in items]
    dataset = dataset_from_records("items", records, "items in memory")
    probe_text = prompting_for(prompt_format, tokenizer, "the model").probe_text
    prompt_set = items_prompt_set("items", dataset.items, probe_text)
    geometry = head_geometry(model.config)
    acts = np.empty((len(prompt_set), geometry.num_layers, geometry.width), dtype=np.float32)
    extract_activations(ActivationRecorder(model), tokenizer, prompt_set.prompts, {"head_wise": acts}, batch_size,
                        progress)
    return Features(acts, prompt_set.labels, prompt_set.question_ids, acts, prompt_set.question_ids,
                    geometry.num_heads, provenance=ShiftProvenance(model_source=model.name_or_path,
                                                                   prompt_format=prompt_format,
                                                                   items=len(dataset.items)))


def apply(model, shifts: HeadShifts | str | Path, alpha: float | None = None,
          positions: str = "all") -> AppliedShifts:
    """Put head shifts (or those saved in a folder), optionally at another strength, on the model's own forward
    until the returned handle's `.remove()`, or for a `with` block. `positions`: "all" (every position, as a baked
    model) or "generation" (each row's last prompt token, then every new token: docs/method.md §5)."""
    _check_model(model)
    _check_shifts(shifts)
    if alpha is not None:
        _check_number("alpha", alpha)
        check_alpha(alpha, "alpha")
    return AppliedShifts(model, shifts_at(shifts, alpha), positions)


# The same call, named to read well after `with`: `with iti.applied(model, shifts): ...`.
applied = apply


def generate(model, tokenizer, questions: list[str], prompt_format: str = "raw", max_new_tokens: int = 50,
             batch_size: int = 16, progress: bool = False, shifts: HeadShifts | str | Path | None = None) -> list[str]:
    """Greedy answers to bare questions (`Q: {question}` as the raw prompt, or the user turn of the chat template)
    from the model as it is (plain, or under `applied`), and with `shifts` on the paper's schedule."""
    if isinstance(model, AppliedShifts):
        raise UsageError("iti.generate takes the model itself: give `shifts=` for this call, or call it inside "
                         "`with iti.applied(model, shifts):`")
    _check_model(model, tokenizer)
    _check_list("questions", questions, str, "questions (strings)")
    _check_choice("prompt_format", prompt_format, PROMPT_FORMATS)
    _check_whole("max_new_tokens", max_new_tokens, 1)
    _check_whole("batch_size", batch_size, 1)
    prompting = (prompting_for("chat", tokenizer, "the model", instruction_prompt="none", primer=False)
                 if prompt_format == "chat" else Prompting(instruction_prompt="none", primer=False))
    with nullcontext() if shifts is None else apply(model, shifts, positions="generation"):
        return generate_answers(ShiftedModel(model, None), tokenizer, questions, prompting, max_new_tokens,
                                batch_size, progress)


def _a(value) -> str:
    """The type of a value as a message names it: `a str`, `an int`."""
    name = type(value).__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def _check_number(name: str, value) -> None:
    """A number where one is asked for; a str ('5') or a bool (an int to Python) is refused, not read as one."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError(f"{name} {value!r} is {_a(value)}, not a number; give a number, e.g. {name}=5.0")


def _check_whole(name: str, value, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageError(f"{name} {value!r} is {_a(value)}, not a whole number; give one, e.g. {name}={minimum + 1}")
    check_range(name, value, minimum, maximum)


def _check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UsageError(f"{name} {value!r} is not one of {', '.join(choices)}")


def _check_list(name: str, values, kinds: type | tuple[type, ...], what: str) -> None:
    """A list (or tuple) of `kinds`: a single string, dict or item is refused, not iterated (a string would give
    one question per character)."""
    if not isinstance(values, (list, tuple)):
        raise UsageError(f"{name} is {_a(values)}, not a list of {what}; give a list, e.g. [{values!r}]")
    wrong = next((index for index, value in enumerate(values) if not isinstance(value, kinds)), None)
    if wrong is not None:
        raise UsageError(f"{name}[{wrong}] is {_a(values[wrong])}, not one of the {what}; give a list of {what}")


def _check_model(model, tokenizer=None) -> None:
    """A Hugging Face causal language model (one that generates), and with it its tokenizer."""
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    if not (isinstance(model, PreTrainedModel) and model.can_generate()):
        raise UsageError(f"model is {_a(model)}, not a Hugging Face causal language model; give the model "
                         "iti.load_model returns (or AutoModelForCausalLM.from_pretrained's)")
    if tokenizer is not None and not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise UsageError(f"tokenizer is {_a(tokenizer)}, not a Hugging Face tokenizer; give the tokenizer "
                         "iti.load_model returns (or AutoTokenizer.from_pretrained's)")


def _check_shifts(shifts) -> None:
    if not isinstance(shifts, (HeadShifts, str, os.PathLike)):
        raise UsageError(f"shifts is {_a(shifts)}, not HeadShifts or the folder they were saved in; give what "
                         "iti.fit returns or HeadShifts.load reads")
