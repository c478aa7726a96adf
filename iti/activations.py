"""Batched activation extraction through pyvene collectors, streamed to memory-mapped .npy files."""
from __future__ import annotations

import dataclasses
import errno
import inspect
import json
import math
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from iti.batching import length_sorted_batches, pad_batch, pad_token_id
from iti.errors import UsageError
from iti.files import read_json, remove, reserve_space, staged_files, temporaries_of, write_npy, writer_running
from iti.intervenable import IntervenableModel, pv
from iti.models import head_geometry, input_device, model_sites

FEATURE_KINDS = ("head_wise", "layer_wise", "mlp_wise")


def feature_stem(model_name: str, dataset: str, limit: int | None = None) -> str:
    """`{model}_{dataset}`, plus `_limit_{N}` for a run on the first N questions: a subset is named
    apart from the full set, so it never replaces it."""
    return f"{model_name}_{dataset}" + (f"_limit_{limit}" if limit is not None else "")


def feature_path(features_dir: str | Path, model_name: str, dataset: str, kind: str, limit: int | None = None) -> Path:
    """The public workflow's names: {model}_{dataset}[_limit_{N}]_{head_wise|layer_wise|mlp_wise|labels}.npy."""
    suffix = "json" if kind in ("categories", "meta") else "npy"
    return Path(features_dir) / f"{feature_stem(model_name, dataset, limit)}_{kind}.{suffix}"


@dataclass(frozen=True)
class FeatureSet:
    """One extraction's files: a model's activations of a dataset, all questions or the first `limit`."""
    features_dir: Path
    model_name: str
    dataset: str
    limit: int | None = None
    model_path: str | None = None  # only for the command that makes the set

    def path(self, kind: str) -> Path:
        return feature_path(self.features_dir, self.model_name, self.dataset, kind, self.limit)

    def exists(self, kind: str = "head_wise") -> bool:
        return all(self.path(k).is_file() for k in (kind, "labels", "question_ids"))

    def command(self) -> str:
        """The get_activations call that writes exactly this set."""
        parts = ["python get_activations/get_activations.py", f"--model_name {self.model_name}",
                 f"--dataset_name {self.dataset}"]
        if self.model_path:
            parts.append(f"--model_path {shlex.quote(str(self.model_path))}")
        if self.limit is not None:
            parts.append(f"--limit {self.limit}")
        parts.append(f"--features_dir {shlex.quote(str(self.features_dir))}")
        return " ".join(parts)


def find_feature_set(wanted: FeatureSet, kind: str = "head_wise") -> FeatureSet | None:
    """The set to read for `wanted`: itself when extracted; for a subset, else the full set (its
    first `limit` questions are the subset); None when neither exists."""
    candidates = [wanted] + ([dataclasses.replace(wanted, limit=None)] if wanted.limit is not None else [])
    return next((c for c in candidates if c.exists(kind)), None)


def require_feature_sets(wanted: list[FeatureSet], kind: str = "head_wise") -> None:
    """Before any model loads: one UsageError listing the command for every missing set, or naming a
    damaged file (its header and size are read, not its data)."""
    missing = [w for w in wanted if find_feature_set(w, kind) is None]
    if missing:
        names = ", ".join(str(w.path(kind)) for w in missing)
        commands = " && ".join(w.command() for w in missing)
        raise UsageError(f"missing features {names}: make them with `{commands}`")
    for found in (find_feature_set(w, kind) for w in wanted):
        for k in (kind, "labels", "question_ids"):
            _load_npy(found.path(k), found, mmap=True)


def _load_npy(path: Path, remake: FeatureSet, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"features file {path} is truncated or corrupt ({reason}); "
                         f"remake it with `{remake.command()}`") from err


def read_meta(found: FeatureSet) -> dict:
    """The features' meta JSON (what made them, their geometry); a damaged or foreign one names the
    command that remakes them."""
    remake = f"remake them with `{found.command()}`"
    meta = read_json(found.path("meta"), "features meta", remake)
    if not isinstance(meta, dict) or not all(isinstance(meta.get(key), int)
                                             for key in ("num_layers", "num_heads", "head_dim")):
        raise UsageError(f"features meta {found.path('meta')} is not get_activations' (no geometry); {remake}")
    return meta


def feature_files(features_dir: str | Path, model_name: str, dataset: str, kind: str = "head_wise",
                  limit: int | None = None) -> list[Path]:
    """What load_features reads: the activations, their labels and their question ids (of the set
    find_feature_set picks; of the wanted one when none exists)."""
    wanted = FeatureSet(Path(features_dir), model_name, dataset, limit)
    found = find_feature_set(wanted, kind) or wanted
    return [found.path(k) for k in (kind, "labels", "question_ids")]


def load_features(features_dir: str | Path, model_name: str, dataset: str, kind: str = "head_wise",
                  mmap: bool = True, limit: int | None = None,
                  model_path: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(activations, labels, question_ids) of all questions, or of the first `limit` (the `_limit_{N}`
    set, else the full set's first N questions); a missing or damaged file names the command that makes it."""
    wanted = FeatureSet(Path(features_dir), model_name, dataset, limit, model_path)
    found = find_feature_set(wanted, kind)
    if found is None:
        require_feature_sets([wanted], kind)
    acts = _load_npy(found.path(kind), found, mmap)
    labels, question_ids = _load_npy(found.path("labels"), found), _load_npy(found.path("question_ids"), found)
    if not len(acts) == len(labels) == len(question_ids):
        raise UsageError(f"features {found.path(kind)} hold {len(acts)} rows but their labels {len(labels)} and question "
                         f"ids {len(question_ids)}; remake them with `{found.command()}`")
    if limit is None or found.limit == limit:
        return acts, labels, question_ids
    available = int(question_ids.max()) + 1 if len(question_ids) else 0
    if available < limit:
        raise UsageError(f"features {found.path(kind)} cover {available} questions, fewer than --limit {limit}; "
                         f"make the subset with `{wanted.command()}`")
    rows = np.flatnonzero(question_ids < limit)
    return np.asarray(acts[rows]), labels[rows], question_ids[rows]


def tokenize_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    return tokenizer(prompts, add_special_tokens=True)["input_ids"]


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


def clear_leftovers(finals: list[Path], log: Callable[[str], None]) -> None:
    """Remove what a killed run of this same set left beside `finals`; name other runs' leftovers in one line."""
    own = {t for f in finals for t in temporaries_of(f)}
    for leftover in sorted(own):
        if not writer_running(leftover):
            remove(leftover)
    folder = finals[0].parent
    others = sorted(set(folder.glob(".*.tmp")) - own)
    if others:
        size = sum(t.stat().st_size for t in others if t.is_file()) / 2**20
        log(f"note: {len(others)} unfinished file(s) of other runs ({size:.1f} MiB) in {folder}, e.g. {others[0].name}: "
            "a killed get_activations of that set removes them when it runs again; delete them if none is running")


def extract_activations(recorder: ActivationRecorder, tokenizer, prompts: list[str], outputs: dict[str, np.ndarray],
                        batch_size: int = 16, progress: bool = True) -> None:
    """Fill `outputs[kind][row]` (arrays or memmaps preallocated by the caller) batch by batch."""
    sequences = tokenize_prompts(tokenizer, prompts)
    pad_id = pad_token_id(tokenizer)
    with tqdm(total=len(prompts), desc="activations", unit="prompt", disable=not progress) as bar:
        for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
            ids, mask = pad_batch([sequences[i] for i in batch], pad_id)
            recorded = recorder(ids, mask, mask.sum(1) - 1)
            for kind, array in outputs.items():
                array[batch] = recorded[kind].numpy()
            bar.update(len(batch))


def reserved_memmaps(paths: dict[str, Path], shapes: dict[str, tuple[int, ...]], folder: Path) -> dict[str, np.memmap]:
    """New float32 .npy memory maps at `paths`, every block allocated before any row is written; too little
    space is a UsageError saying how much they need (the caller removes the files)."""
    free = shutil.disk_usage(folder).free
    arrays = {}
    try:
        for kind, shape in shapes.items():
            arrays[kind] = np.lib.format.open_memmap(paths[kind], mode="w+", dtype=np.float32, shape=shape)
            reserve_space(paths[kind])
    except OSError as err:
        arrays.clear()  # unmapped, so that removing the files frees their space
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        needed = sum(np.dtype(np.float32).itemsize * math.prod(shape) for shape in shapes.values())
        raise UsageError(f"--features_dir {folder} has too little space for these features: they need "
                         f"{needed / 2**20:.1f} MiB, {free / 2**20:.1f} MiB were free; free some space there or "
                         "give another --features_dir") from None
    return arrays


def save_features(model, tokenizer, prompt_set, features_dir: str | Path, model_name: str, batch_size: int = 16,
                  mlp: bool = False, config: dict | None = None, progress: bool = True, limit: int | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Path]:
    """Extract a prompt set's activations into features/ (named with `_limit_{N}` for a run on the first
    N questions); files appear under their names only when complete."""
    features_dir = Path(features_dir)
    features_dir.mkdir(parents=True, exist_ok=True)
    recorder = ActivationRecorder(model, mlp=mlp)
    geo = recorder.geometry
    n = len(prompt_set)
    shapes = {"head_wise": (n, geo.num_layers, geo.width), "layer_wise": (n, geo.num_layers + 1, geo.hidden_size)}
    if mlp:
        shapes["mlp_wise"] = (n, geo.num_layers, geo.hidden_size)
    kinds = list(shapes) + ["labels", "question_ids", "meta"] + (["categories"] if prompt_set.categories else [])
    finals = {kind: feature_path(features_dir, model_name, prompt_set.name, kind, limit) for kind in kinds}
    clear_leftovers(list(finals.values()) + [feature_path(features_dir, model_name, prompt_set.name, k, limit)
                                            for k in FEATURE_KINDS if k not in finals], log)
    with staged_files(list(finals.values())) as temporary:
        tmp = dict(zip(finals, temporary))
        arrays = reserved_memmaps({kind: tmp[kind] for kind in shapes}, shapes, features_dir)
        extract_activations(recorder, tokenizer, prompt_set.prompts, arrays, batch_size, progress)
        for array in arrays.values():
            array.flush()
        del arrays
        write_npy(tmp["labels"], prompt_set.labels)
        write_npy(tmp["question_ids"], prompt_set.question_ids)
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
