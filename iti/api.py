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

from contextlib import nullcontext
from pathlib import Path

import numpy as np

from iti.activations import ActivationRecorder, extract_activations
from iti.contrastive import dataset_from_records
from iti.data import GenerationQuestion, items_prompt_set
from iti.errors import UsageError
from iti.fitting import Features, Recipe, fit_head_shifts, seeded_split
from iti.generation import generate_answers
from iti.head_shifts import HeadShifts, ShiftProvenance
from iti.intervention import AppliedShifts, ShiftedModel, shifts_at
from iti.geometry import head_geometry
from iti.models import resolve_model_source
from iti.models import load_model as load_model_source
from iti.prompts import Prompting, prompting_for
from iti.registry import is_known_model
from iti.report import ProbeReport


def load_model(name_or_path: str, device: str | int | None = "auto", dtype: str = "auto",
               trust_remote_code: bool = False):
    """(model, tokenizer) in eval mode, from a registry name (`smollm2_135M_instruct`, `llama3_8B_instruct`, ...),
    a local model folder, a .gguf file or a hub id; device "auto" places it on the GPUs when there are any."""
    source = resolve_model_source(name_or_path, model_path=None if is_known_model(name_or_path) else name_or_path)
    return load_model_source(source, device, dtype, trust_remote_code)


def fit(model, tokenizer, items_or_features: list[dict | GenerationQuestion] | Features, num_heads: int = 8,
        alpha: float = 5.0, method: str = "center_of_mass", prompt_format: str = "raw", val_ratio: float = 0.2,
        seed: int = 42, batch_size: int = 16, progress: bool = True) -> tuple[HeadShifts, ProbeReport]:
    """Head shifts from contrastive items (dicts in the keys of docs/method.md §9, e.g. `question`,
    `correct_answers`, `incorrect_answers`): their probe rows' activations read in memory, a seeded split of
    the items into training and validation, then iti.fitting.fit_head_shifts; the items' own rows set σ.
    Given iti.fitting.Features instead, no activation is read: their rows are split and fitted as they are."""
    features = (items_or_features if isinstance(items_or_features, Features)
                else item_features(model, tokenizer, items_or_features, prompt_format, batch_size, progress))
    return fit_head_shifts(features, seeded_split(features.question_ids, val_ratio, seed),
                           Recipe(num_heads, alpha, method, seed=seed), progress)


def item_features(model, tokenizer, items: list[dict | GenerationQuestion], prompt_format: str = "raw",
                  batch_size: int = 16, progress: bool = True) -> Features:
    """The head-wise activations of the items' probe rows, read in memory; the same rows set σ."""
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
    prompting = (prompting_for("chat", tokenizer, "the model", instruction_prompt="none", primer=False)
                 if prompt_format == "chat" else Prompting(instruction_prompt="none", primer=False))
    with nullcontext() if shifts is None else apply(model, shifts, positions="generation"):
        return generate_answers(ShiftedModel(model, None), tokenizer, questions, prompting, max_new_tokens,
                                batch_size, progress)
