"""HeadShifts, the one type intervention hooks, baking and evaluation consume: head (l, h) is shifted by α·σ·θ
added to slice [h·d, (h+1)·d) of layer l's `o_proj` input (docs/method.md §4 and §7). On disk:
`head_shifts.safetensors` (arrays) beside `head_shifts.json` (α, geometry, heads, provenance, the SHA-256 of the
arrays file); no pickle.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from iti.errors import UsageError
from iti.files import check_sha256, read_json, sha256_of, staged_files
from iti.geometry import HeadGeometry
from iti.options import check_alpha
from iti.records import read_record, record_json

TENSORS_FILE = "head_shifts.safetensors"
METADATA_FILE = "head_shifts.json"
_FORMAT = "iti.head_shifts"
_VERSION = 1
_UNIT_TOLERANCE = 1e-4
_ARRAY_FIELDS = ("layers", "heads", "directions", "sigmas", "probe_accuracies")
RESAVE = "save the head shifts again"
REMAKE = ("make them again with what made them (validate_2fold, once the fold's folder is moved away; edit_weight for "
          "a bake; HeadShifts.save in the library)")


@dataclass
class ShiftProvenance:
    """What made these head shifts (run, data, recipe, split, probe report); a later version's extras: `other`."""

    model_name: str | None = None
    model_source: str | None = None
    base_model: str | None = None
    made_by: str | None = None
    dataset_name: str | None = None
    dataset_path: str | None = None
    prompt_format: str | None = None
    activations_dataset: str | None = None
    sigma_questions: str | None = None
    limit: int | None = None
    num_fold: int | None = None
    val_ratio: float | None = None
    features: dict | None = None
    items: int | None = None
    K: int | None = None
    method: str | None = None
    probe_backend: str | None = None
    seed: int | None = None
    fold: int | None = None
    train_questions: int | None = None
    val_questions: int | None = None
    probe_report: dict | None = None
    imported_from: str | None = None
    # A bake's identity (edit_weight): what its folder is named by, and what --overwrite must find there again.
    identity: dict | None = None
    other: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """The record as head_shifts.json holds it: the fields set, then what `other` kept."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "other"}
        return {**{k: v for k, v in values.items() if v is not None}, **self.other}


@dataclass
class ShiftsMetadata:
    """head_shifts.json; the save id is shared with the tensors file, the geometry is flat (as HeadGeometry's).
    `tensors_sha256` is the arrays file's digest, checked before it is read; folders saved before it was recorded
    lack it, and their arrays are read unverified (the save id still pairs the two files)."""
    format: str
    version: int
    save_id: str
    alpha: float
    num_layers: int
    num_heads: int
    head_dim: int
    heads: list[list[int]]
    provenance: ShiftProvenance
    tensors_sha256: str | None = None


def _indices(values, name: str) -> np.ndarray:
    """Layer or head indices as int64; a value that is no whole number is refused, never truncated."""
    array = np.asarray(values)
    kind = array.dtype.kind
    whole = np.isfinite(array) & (array == np.round(array)) if kind == "f" else np.full(array.shape, kind in "iu")
    if not whole.all():
        raise UsageError(f"head shifts field {name} holds {array[~whole].tolist()[0]!r}, not a whole number: it "
                         f"indexes layers or heads; {RESAVE}")
    return array.astype(np.int64)


@dataclass(eq=False)
class HeadShifts:
    """K heads (layers[i], heads[i]) with unit directions [K, d], spreads σ [K] and probe accuracies [K]; alpha
    scales them all; num_layers, num_heads and head_dim are the model's geometry."""

    layers: np.ndarray
    heads: np.ndarray
    directions: np.ndarray
    sigmas: np.ndarray
    probe_accuracies: np.ndarray
    alpha: float
    num_layers: int
    num_heads: int
    head_dim: int
    provenance: ShiftProvenance = field(default_factory=ShiftProvenance)

    def __post_init__(self) -> None:
        if isinstance(self.provenance, dict):
            self.provenance = read_record(ShiftProvenance, self.provenance, "head shift provenance", RESAVE)
        self.layers, self.heads = _indices(self.layers, "layers"), _indices(self.heads, "heads")
        self.directions = np.asarray(self.directions, dtype=np.float32)
        self.sigmas = np.asarray(self.sigmas, dtype=np.float64)
        self.probe_accuracies = np.asarray(self.probe_accuracies, dtype=np.float64)
        self.alpha = float(self.alpha)
        self.num_layers, self.num_heads, self.head_dim = int(self.num_layers), int(self.num_heads), int(self.head_dim)
        k = len(self.layers)
        for name in _ARRAY_FIELDS:
            shape = (k, self.head_dim) if name == "directions" else (k,)
            if getattr(self, name).shape != shape:
                raise UsageError(f"head shifts field {name} has shape {getattr(self, name).shape}, expected {shape} "
                                 f"for {k} heads of dimension {self.head_dim}")
        if min(self.num_layers, self.num_heads, self.head_dim) <= 0:
            raise UsageError("head shifts need positive num_layers, num_heads and head_dim")
        in_range = (self.layers >= 0) & (self.layers < self.num_layers) & (self.heads >= 0) & (self.heads < self.num_heads)
        if not in_range.all():
            i = int(np.argmin(in_range))
            raise UsageError(f"head ({self.layers[i]}, {self.heads[i]}) lies outside the geometry "
                             f"{self.num_layers} layers x {self.num_heads} heads")
        if len(set(zip(self.layers.tolist(), self.heads.tolist()))) != k:
            raise UsageError("a head is listed twice in the head shifts; each (layer, head) may appear once")
        norms = np.linalg.norm(self.directions.astype(np.float64), axis=1)
        if not (np.abs(norms - 1) <= _UNIT_TOLERANCE).all():
            raise UsageError("head shift directions must have unit length; normalise them before building HeadShifts")
        if not (np.isfinite(self.sigmas).all() and (self.sigmas >= 0).all()):
            raise UsageError("head shift sigmas must be finite and non-negative")
        # The shifts α·σ·θ are built in float32 (layer_offsets, exports).
        self.check_fits("float32", float(np.finfo(np.float32).max), "head shift alpha")
        if not isinstance(self.provenance, ShiftProvenance):
            raise UsageError("head shift provenance must be a ShiftProvenance (or a dict of its fields)")
        try:
            json.dumps(self.provenance.as_dict())
        except (TypeError, ValueError) as err:
            raise UsageError(f"head shift provenance must be JSON-serialisable (plain str/int/float/list/dict): {err}")

    @property
    def k(self) -> int:
        return len(self.layers)

    @property
    def geometry(self) -> HeadGeometry:
        return HeadGeometry(self.num_layers, self.num_heads, self.head_dim)

    def head_list(self) -> list[tuple[int, int]]:
        return list(zip(self.layers.tolist(), self.heads.tolist()))

    def scaled(self, alpha: float) -> HeadShifts:
        """The same heads and directions at strength `alpha` (arrays copied, not shared)."""
        copies = {name: getattr(self, name).copy() for name in _ARRAY_FIELDS}
        return dataclasses.replace(self, alpha=alpha, provenance=copy.deepcopy(self.provenance), **copies)

    def layer_offsets(self) -> dict[int, np.ndarray]:
        """δ_l per layer with selected heads: float32 [H·d] holding α·σ·θ in each selected head's slice."""
        offsets: dict[int, np.ndarray] = {}
        shifts = self.alpha * self.sigmas[:, None] * self.directions.astype(np.float64)
        for layer in sorted(set(self.layers.tolist())):
            delta = np.zeros((self.num_heads, self.head_dim))
            mine = self.layers == layer
            delta[self.heads[mine]] = shifts[mine]
            offsets[layer] = delta.reshape(-1).astype(np.float32)
        return offsets

    def check_fits(self, dtype: str, largest: float, name: str = "alpha") -> None:
        """UsageError unless every α·σ·θ_i is a number of the model's `dtype` (at most `largest` in magnitude)."""
        reach = float(np.abs(self.sigmas[:, None] * self.directions.astype(np.float64)).max(initial=0.0))
        check_alpha(self.alpha, name, reach, largest, dtype)

    def check_geometry(self, geometry: HeadGeometry) -> None:
        if self.geometry != geometry:
            raise UsageError(f"head shifts were made for {self.geometry} (layers×heads×head_dim) but the model has "
                             f"{geometry}; make head shifts from this model's activations")

    @property
    def model_source(self) -> str | None:
        return self.provenance.model_source

    def check_model(self, model_source: str, allow_other_model: bool = False) -> None:
        """UsageError when these shifts record another model, unless allowed: geometry cannot tell one family apart."""
        made_for = self.provenance.model_source
        if allow_other_model or made_for is None or same_model_source(made_for, model_source):
            return
        raise UsageError(f"these head shifts were made for {made_for}, not {model_source}; apply them to the model "
                         "they were made from, or pass --allow_other_model to use them anyway")

    def save(self, directory: str | os.PathLike) -> Path:
        """Both files, renamed into place together; a random save id in both lets `load` detect a mixed pair, and
        the arrays file's SHA-256 in the metadata lets it detect changed bytes."""
        out = Path(_folder_path(directory, "save"))  # staged_files makes it
        save_id = uuid.uuid4().hex
        tensors = {name: np.ascontiguousarray(getattr(self, name)) for name in _ARRAY_FIELDS}
        with staged_files([out / TENSORS_FILE, out / METADATA_FILE], "head shifts file") as (tensors_tmp, metadata_tmp):
            save_file(tensors, str(tensors_tmp), metadata={"format": _FORMAT, "save_id": save_id})
            written = ShiftsMetadata(_FORMAT, _VERSION, save_id, self.alpha, self.num_layers, self.num_heads,
                                     self.head_dim, [list(pair) for pair in self.head_list()], self.provenance,
                                     sha256_of(tensors_tmp))
            # Provenance keeps only the fields set, as it always has.
            metadata = {**record_json(written), "provenance": self.provenance.as_dict()}
            metadata_tmp.write_text(json.dumps(metadata, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, path: str | os.PathLike) -> HeadShifts:
        """Read head shifts from their directory, or from the path of either of its two files."""
        location = Path(_folder_path(path, "load"))
        directory = location.parent if location.name in (TENSORS_FILE, METADATA_FILE) else location
        tensors_path, metadata_path = directory / TENSORS_FILE, directory / METADATA_FILE
        if not (tensors_path.is_file() and metadata_path.is_file()):
            raise UsageError(f"no head shifts at {path}: expected {TENSORS_FILE} and {METADATA_FILE} there; "
                             "make them first (probe the activations and save the HeadShifts)")
        values = read_json(metadata_path, "head shifts file", RESAVE)
        if not isinstance(values, dict) or values.get("format") != _FORMAT:
            raise UsageError(f"{metadata_path} does not hold iti head shifts (format tag missing); {RESAVE}")
        if values.get("version") != _VERSION:
            raise UsageError(f"head shifts version {values.get('version')} is not {_VERSION}; re-make them")
        metadata = read_record(ShiftsMetadata, values, str(metadata_path), RESAVE)
        if metadata.tensors_sha256 is not None:
            check_sha256(tensors_path, metadata.tensors_sha256, "head shifts file", REMAKE)
        try:
            with safe_open(str(tensors_path), framework="np") as f:
                tensor_metadata = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except SafetensorError as err:
            raise UsageError(f"{tensors_path} is not a readable safetensors file ({err}); {RESAVE}") from None
        if tensor_metadata.get("format") != _FORMAT:
            raise UsageError(f"{tensors_path} does not hold iti head shifts (format tag missing); {RESAVE}")
        if metadata.save_id != tensor_metadata.get("save_id"):
            raise UsageError(f"{TENSORS_FILE} and {METADATA_FILE} in {directory} come from different saves; save again")
        if set(tensors) != set(_ARRAY_FIELDS):
            raise UsageError(f"{tensors_path} holds {sorted(tensors)}; expected {sorted(_ARRAY_FIELDS)}")
        shifts = cls(**tensors, alpha=metadata.alpha, num_layers=metadata.num_layers, num_heads=metadata.num_heads,
                     head_dim=metadata.head_dim, provenance=metadata.provenance)
        if [list(pair) for pair in shifts.head_list()] != metadata.heads:
            raise UsageError(f"the heads listed in {metadata_path} differ from those in {tensors_path}; save again")
        return shifts


def same_model_source(first: str, second: str) -> bool:
    """Hub ids compare as written; local paths compare by the file or folder they point to."""
    paths = [Path(s).expanduser() for s in (first, second)]
    if all(p.exists() for p in paths):
        return paths[0].resolve() == paths[1].resolve()
    return first.rstrip("/") == second.rstrip("/")


def _folder_path(path, verb: str) -> str | os.PathLike:
    """`path` if it can name a folder; anything else (a number, a list) is one line, as the scripts say it."""
    if not isinstance(path, (str, os.PathLike)):
        raise UsageError(f"HeadShifts.{verb} takes a folder's path (a str or os.PathLike), not {type(path).__name__} "
                         f"{path!r}")
    return path
