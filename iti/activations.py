"""Batched activation extraction through pyvene collectors, streamed to memory-mapped .npy files."""
from __future__ import annotations

import inspect
import json
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from iti.errors import UsageError
from iti.intervenable import IntervenableModel, pv
from iti.models import head_geometry, input_device, model_sites

FEATURE_KINDS = ("head_wise", "layer_wise", "mlp_wise")


def feature_path(features_dir: str | Path, model_name: str, dataset: str, kind: str) -> Path:
    """The public workflow's names: {model}_{dataset}_{head_wise|layer_wise|mlp_wise|labels}.npy."""
    suffix = "json" if kind in ("categories", "meta") else "npy"
    return Path(features_dir) / f"{model_name}_{dataset}_{kind}.{suffix}"


def get_activations_command(model_name: str, dataset: str) -> str:
    return f"python get_activations/get_activations.py --model_name {model_name} --dataset_name {dataset}"


def feature_files(features_dir: str | Path, model_name: str, dataset: str, kind: str = "head_wise") -> list[Path]:
    """What load_features reads: the activations, their labels and their question ids."""
    return [feature_path(features_dir, model_name, dataset, k) for k in (kind, "labels", "question_ids")]


def load_features(features_dir: str | Path, model_name: str, dataset: str, kind: str = "head_wise",
                  mmap: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(activations, labels, question_ids), memory-mapped; a clear error names the command that makes them."""
    paths = feature_files(features_dir, model_name, dataset, kind)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise UsageError(f"features file {missing[0]} not found: make it with `{get_activations_command(model_name, dataset)}`")
    acts = np.load(paths[0], mmap_mode="r" if mmap else None)
    return acts, np.load(paths[1]), np.load(paths[2])


def first_question_rows(question_ids: np.ndarray, limit: int, remedy: str) -> np.ndarray:
    """Rows of the set's first `limit` questions, in the set's own order (what get_activations --limit
    extracts), so `--limit N` reads the same rows from full features and from features of N questions.
    Every script trims every feature set it reads this way; `remedy` says how to make larger features."""
    available = int(question_ids.max()) + 1 if len(question_ids) else 0
    if limit > available:
        raise UsageError(f"--limit {limit} asks for more questions than the {available} in these features; {remedy}")
    return np.flatnonzero(question_ids < limit)


def tokenize_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    return tokenizer(prompts, add_special_tokens=True)["input_ids"]


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[np.ndarray]:
    """Longest first, so padding is small and an out-of-memory shows on the first batch."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding keeps every real token's position id, so a padded row equals the row alone."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, :len(seq)] = torch.tensor(seq)
        mask[row, :len(seq)] = 1
    return ids, mask


class ActivationRecorder:
    """Reads each row's o_proj input (all heads), residual stream and optionally MLP output at one position.

    The o_proj inputs and MLP outputs come through pyvene collect interventions, declared once;
    the residual stream is the model's own hidden states.
    """

    def __init__(self, model, mlp: bool = False):
        self.model = model
        self.geometry = head_geometry(model.config)
        sites = model_sites(model)
        layers = range(self.geometry.num_layers)
        components = [{"component": f"{sites.o_proj_of(layer)}.input", "intervention": pv.CollectIntervention()}
                      for layer in layers]
        if mlp:
            components += [{"component": f"{sites.mlp_of(layer)}.output", "intervention": pv.CollectIntervention()}
                           for layer in layers]
        self.mlp = mlp
        self.collectors = IntervenableModel(components, model)
        self.extra_inputs = {"output_hidden_states": True}
        if "logits_to_keep" in inspect.signature(model.forward).parameters:
            self.extra_inputs["logits_to_keep"] = 1

    @torch.inference_mode()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor) -> dict[str, torch.Tensor]:
        device = input_device(self.model)
        base = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device), **self.extra_inputs}
        locations = [[[int(p)] for p in positions]] * len(self.collectors.interventions)
        (_, collected), outputs = self.collectors(base, unit_locations={"base": locations})
        num_layers = self.geometry.num_layers
        rows = torch.arange(len(positions))
        result = {
            "head_wise": torch.stack([c[:, 0].to("cpu", torch.float32) for c in collected[:num_layers]], 1),
            "layer_wise": torch.stack([h[rows.to(h.device), positions.to(h.device)].to("cpu", torch.float32)
                                       for h in outputs.hidden_states], 1),
        }
        if self.mlp:
            result["mlp_wise"] = torch.stack([c[:, 0].to("cpu", torch.float32) for c in collected[num_layers:]], 1)
        return result


@contextmanager
def staged_outputs(final_paths: list[Path]):
    """Yield temporary paths; rename them to the final ones only if the block finishes."""
    temporary = [p.with_name(p.name + ".tmp") for p in final_paths]
    try:
        yield temporary
        for tmp, final in zip(temporary, final_paths):
            os.replace(tmp, final)
    finally:
        for tmp in temporary:
            tmp.unlink(missing_ok=True)


def extract_activations(recorder: ActivationRecorder, tokenizer, prompts: list[str], outputs: dict[str, np.ndarray],
                        batch_size: int = 16, progress: bool = True) -> None:
    """Fill `outputs[kind][row]` (arrays or memmaps preallocated by the caller) batch by batch."""
    sequences = tokenize_prompts(tokenizer, prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with tqdm(total=len(prompts), desc="activations", unit="prompt", disable=not progress) as bar:
        for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
            ids, mask = right_pad([sequences[i] for i in batch], pad_id)
            recorded = recorder(ids, mask, mask.sum(1) - 1)
            for kind, array in outputs.items():
                array[batch] = recorded[kind].numpy()
            bar.update(len(batch))


def save_features(model, tokenizer, prompt_set, features_dir: str | Path, model_name: str, batch_size: int = 16,
                  mlp: bool = False, config: dict | None = None, progress: bool = True) -> dict[str, Path]:
    """Extract a prompt set's activations into features/; files appear under their names only when complete."""
    features_dir = Path(features_dir)
    features_dir.mkdir(parents=True, exist_ok=True)
    recorder = ActivationRecorder(model, mlp=mlp)
    geo = recorder.geometry
    n = len(prompt_set)
    shapes = {"head_wise": (n, geo.num_layers, geo.width), "layer_wise": (n, geo.num_layers + 1, geo.hidden_size)}
    if mlp:
        shapes["mlp_wise"] = (n, geo.num_layers, geo.hidden_size)
    kinds = list(shapes) + ["labels", "question_ids", "meta"] + (["categories"] if prompt_set.categories else [])
    finals = {kind: feature_path(features_dir, model_name, prompt_set.name, kind) for kind in kinds}
    with staged_outputs(list(finals.values())) as temporary:
        tmp = dict(zip(finals, temporary))
        arrays = {kind: np.lib.format.open_memmap(tmp[kind], mode="w+", dtype=np.float32, shape=shape)
                  for kind, shape in shapes.items()}
        extract_activations(recorder, tokenizer, prompt_set.prompts, arrays, batch_size, progress)
        for array in arrays.values():
            array.flush()
        del arrays
        _save_npy(tmp["labels"], prompt_set.labels)
        _save_npy(tmp["question_ids"], prompt_set.question_ids)
        if prompt_set.categories:
            tmp["categories"].write_text(json.dumps(prompt_set.categories))
        meta = {
            "model_name": model_name, "dataset": prompt_set.name, "rows": n, "questions": prompt_set.num_questions,
            "num_layers": geo.num_layers, "num_heads": geo.num_heads, "head_dim": geo.head_dim,
            "num_kv_heads": geo.num_kv_heads, "hidden_size": geo.hidden_size, "kinds": list(shapes),
            "dataset_config": prompt_set.config, **(config or {}),
        }
        tmp["meta"].write_text(json.dumps(meta, indent=2))
    return finals


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)
