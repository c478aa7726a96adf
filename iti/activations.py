"""Batched activation extraction through pyvene collectors, streamed to memory-mapped .npy files."""
from __future__ import annotations

import errno
import inspect
import json
import math
import shutil
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from iti.batching import length_sorted_batches, pad_batch, pad_token_id
from iti.errors import UsageError
from iti.features import FEATURE_KINDS, RECORD_VERSION, FeatureSet, feature_path, read_record
from iti.files import (output_lock, remove, reserve_space, sha256_of, staged_files, temporaries_of, write_npy,
                       writer_running)
from iti.fingerprint import differs, model_fingerprint
from iti.geometry import head_geometry
from iti.identity import short_digest
from iti.intervenable import IntervenableModel, pv
from iti.models import input_device, model_sites
from iti.records import record_json


class ActivationRecorder:
    """Reads each row's o_proj input (all heads), residual stream and optionally MLP output at one position: the
    first and last through pyvene collect interventions, declared once; the residual stream from the hidden states."""

    def __init__(self, model, mlp: bool = False):
        self.model = model
        self.geometry = head_geometry(model.config)
        sites = model_sites(model)
        layers = range(self.geometry.num_layers)
        read = [f"{sites.o_proj_of(layer)}.input" for layer in layers]
        read += [f"{sites.mlp_of(layer)}.output" for layer in layers] if mlp else []
        self.mlp = mlp
        self.collectors = IntervenableModel([{"component": site, "intervention": pv.CollectIntervention()}
                                             for site in read], model)
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
    sequences = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    pad_id = pad_token_id(tokenizer)
    with tqdm(total=len(prompts), desc="activations", unit="prompt", disable=not progress) as bar:
        for batch in length_sorted_batches([len(s) for s in sequences], batch_size):
            ids, mask = pad_batch([sequences[i] for i in batch], pad_id)
            recorded = recorder(ids, mask, mask.sum(1) - 1)
            for kind, array in outputs.items():
                array[batch] = recorded[kind].numpy()
            bar.update(len(batch))


def feature_record(prompt_set, model_name: str, limit: int | None, prompt_format: str,
                   fingerprint: dict | None = None) -> dict:
    """What made a feature set (docs/method.md §10), as its `_meta.json` records it, before anything is written: the
    data, and the model as loaded when `fingerprint` is given (save_features adds the files' digests and the id)."""
    record = {"record_version": RECORD_VERSION, "model_name": model_name, "dataset": prompt_set.name, "limit": limit,
              "prompt_format": prompt_format, "seed": prompt_set.config.get("seed"), "items": prompt_set.items_digest,
              "rows": prompt_set.rows_digest(), "questions": prompt_set.num_questions, "row_count": len(prompt_set)}
    if fingerprint is not None:
        record["model"] = fingerprint
    return record


def feature_id(record: dict) -> str:
    """The `id` that names a feature set's content in every run's identity: the model as loaded (in its dtype), the
    rows it read and the SHA-256 of every file written, so that any byte changed gives another id."""
    return short_digest({key: record[key] for key in ("model", "rows", "sha256")})


def replacing_conflict(existing: dict, record: dict) -> str | None:
    """Why features recorded as `existing` are not the ones `record` describes (None: the same features)."""
    for key, what in (("limit", "limit"), ("prompt_format", "prompt format"), ("items", "dataset items"),
                      ("rows", "prompts")):
        if existing.get(key) != record.get(key):
            return f"another {what} ({existing.get(key)} against {record.get(key)})" if key in ("limit", "prompt_format") \
                else f"other {what}"
    if "model" in record:
        reason = differs(existing["model"], record["model"])
        if reason is not None:
            return f"another model: {reason}"
        if existing["model"]["weights"]["dtype"] != record["model"]["weights"]["dtype"]:
            return f"another dtype ({existing['model']['weights']['dtype']} against {record['model']['weights']['dtype']})"
    return None


def refuse_replacing(target: FeatureSet, record: dict, overwrite: bool) -> None:
    """Features of this name made differently are kept: a UsageError unless `overwrite`. Re-extracting the
    same features (same record) replaces them, which changes nothing."""
    if overwrite or not any(target.path(kind).exists() for kind in (*FEATURE_KINDS, "labels", "meta")):
        return
    try:
        existing = record_json(read_record(target))
    except UsageError:
        conflict = "by an older version or another program, without a record of what made them"
    else:
        conflict = replacing_conflict(existing, record)
        if conflict is None:
            return
        conflict = f"from {conflict}"
    raise UsageError(f"{target.path('head_wise')} exists and was made {conflict}; it is kept: give another "
                     "--dataset_name or --features_dir, or add --overwrite to replace it")


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


@contextmanager
def extraction_locks(targets: list[FeatureSet]) -> Iterator[None]:
    """One writer per feature set: a second extraction of a set being written refuses in one line (iti.files)."""
    with ExitStack() as stack:
        for target in targets:
            stack.enter_context(output_lock(target.path("head_wise"), "features"))
        yield


def save_features(model, tokenizer, prompt_set, features_dir: str | Path, model_name: str, batch_size: int = 16,
                  mlp: bool = False, config: dict | None = None, progress: bool = True, limit: int | None = None,
                  log: Callable[[str], None] = print, prompt_format: str = "raw",
                  overwrite: bool = False, locked: bool = False) -> dict[str, Path]:
    """Extract a prompt set's activations into features/ (named with `_limit_{N}` for a run on the first
    N questions) with the record of what made them and the SHA-256 of every file written; files appear under their
    names only when complete. Features of the same names made differently are refused unless `overwrite`. The
    only writer of the set while it runs: it holds the set's extraction_locks, unless the caller `locked` them."""
    features_dir = Path(features_dir)
    target = FeatureSet(features_dir, model_name, prompt_set.name, limit)
    with nullcontext() if locked else extraction_locks([target]):
        return _extract_and_record(model, tokenizer, prompt_set, target, batch_size, mlp, config, progress, log,
                                   prompt_format, overwrite)


def _extract_and_record(model, tokenizer, prompt_set, target: FeatureSet, batch_size: int, mlp: bool,
                        config: dict | None, progress: bool, log: Callable[[str], None], prompt_format: str,
                        overwrite: bool) -> dict[str, Path]:
    features_dir, model_name, limit = target.features_dir, target.model_name, target.limit
    record = feature_record(prompt_set, model_name, limit, prompt_format, model_fingerprint(model, tokenizer))
    refuse_replacing(target, record, overwrite)
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
        # The bytes as written, hashed before they take their names: every reader checks them against these.
        record["sha256"] = {kind: sha256_of(tmp[kind]) for kind in kinds if kind != "meta"}
        meta = {**record, "id": feature_id(record), "num_layers": geo.num_layers, "num_heads": geo.num_heads,
                "head_dim": geo.head_dim, "num_kv_heads": geo.num_kv_heads, "hidden_size": geo.hidden_size,
                "kinds": list(shapes), "dataset_config": prompt_set.config, "config": config or {}}
        tmp["meta"].write_text(json.dumps(meta, indent=2))
    return finals
