"""The library path, no command line and no files needed: fit head shifts from items in memory, apply them,
generate with and without them; save, load and export are HeadShifts' own (`shifts.save(folder)`,
`HeadShifts.load(folder)`) and iti.pyvene_export's.

    import iti
    shifts, report = iti.fit(model, tokenizer, items, num_heads=8, alpha=5)
    shifted = iti.apply(model, shifts)
    iti.generate(shifted, tokenizer, ["Is a tomato a fruit?"])
"""
from __future__ import annotations

import numpy as np

from iti.activations import ActivationRecorder, extract_activations
from iti.contrastive import dataset_from_records
from iti.data import GenerationQuestion, items_prompt_set
from iti.fitting import Features, Recipe, fit_head_shifts, seeded_split
from iti.generation import generate_answers
from iti.head_shifts import HeadShifts, ShiftProvenance
from iti.intervention import ShiftedModel, load_shifted_model
from iti.models import head_geometry
from iti.prompts import Prompting, prompting_for
from iti.report import ProbeReport


def fit(model, tokenizer, items: list[dict | GenerationQuestion], num_heads: int = 8, alpha: float = 5.0,
        method: str = "center_of_mass", prompt_format: str = "raw", val_ratio: float = 0.2, seed: int = 42,
        batch_size: int = 16, progress: bool = True) -> tuple[HeadShifts, ProbeReport]:
    """Head shifts from contrastive items (dicts in the keys of docs/method.md §9, e.g. `question`,
    `correct_answers`, `incorrect_answers`): their probe rows' activations read in memory, a seeded split of
    the items into training and validation, then iti.fitting.fit_head_shifts; the items' own rows set σ."""
    records = [item if isinstance(item, dict) else vars(item) for item in items]
    dataset = dataset_from_records("items", records, "items in memory")
    probe_text = prompting_for(prompt_format, tokenizer, "the model").probe_text
    prompt_set = items_prompt_set("items", dataset.items, probe_text)
    geometry = head_geometry(model.config)
    acts = np.empty((len(prompt_set), geometry.num_layers, geometry.width), dtype=np.float32)
    extract_activations(ActivationRecorder(model), tokenizer, prompt_set.prompts, {"head_wise": acts}, batch_size,
                        progress)
    features = Features(acts, prompt_set.labels, prompt_set.question_ids, acts, prompt_set.question_ids,
                        geometry.num_heads, provenance=ShiftProvenance(model_source=model.name_or_path,
                                                                       prompt_format=prompt_format,
                                                                       items=len(dataset.items)))
    return fit_head_shifts(features, seeded_split(prompt_set.question_ids, val_ratio, seed),
                           Recipe(num_heads, alpha, method, seed=seed))


def apply(model, shifts: HeadShifts | str, alpha: float | None = None) -> ShiftedModel:
    """The model with these head shifts (or those saved in a folder), optionally at another strength."""
    return load_shifted_model(model, shifts, alpha)


def generate(model_or_shifted, tokenizer, questions: list[str], prompt_format: str = "raw", max_new_tokens: int = 50,
             batch_size: int = 16, progress: bool = False) -> list[str]:
    """Greedy answers to bare questions (`Q: {question}` as the raw prompt, or the user turn of the chat template),
    from a plain model or a shifted one."""
    shifted = model_or_shifted if isinstance(model_or_shifted, ShiftedModel) else ShiftedModel(model_or_shifted, None)
    prompting = (prompting_for("chat", tokenizer, "the model", instruction_prompt="none", primer=False)
                 if prompt_format == "chat" else Prompting(instruction_prompt="none", primer=False))
    return generate_answers(shifted, tokenizer, questions, prompting, max_new_tokens, batch_size, progress)
