"""Feature sets on disk: their names, finding and reading them, and checking that they are what a run needs.

get_activations writes `{model}_{dataset}[_limit_{N}]_{kind}.npy` (the public workflow's names) and a `_meta.json`
recording what made them and the SHA-256 of each file it wrote (docs/method.md §10). Every consumer checks that record
against its own run, and the bytes it reads against their digests, and refuses a mismatch with the get_activations
command to run. NumPy only: sweeps check features on a login node without torch.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from iti import records
from iti.data import Source, load_source, prompt_set_of
from iti.errors import UsageError
from iti.files import check_sha256, read_json
from iti.fingerprint import differs
from iti.geometry import HeadGeometry
from iti.prompts import qa_prompt

if TYPE_CHECKING:
    from iti.config import ValidationConfig

FEATURE_KINDS = ("head_wise", "layer_wise", "mlp_wise")
ARRAY_KINDS = (*FEATURE_KINDS, "labels", "question_ids")
# The record's layout; features recorded otherwise (or not at all) are re-extracted, never guessed at.
RECORD_VERSION = 3


def feature_stem(model_name: str, dataset: str, limit: int | None = None) -> str:
    """`{model}_{dataset}`, plus `_limit_{N}` for a run on the first N questions: a subset is named
    apart from the full set, so it never replaces it (no dataset name may end in `limit_N`)."""
    return f"{model_name}_{dataset}" + (f"_limit_{limit}" if limit is not None else "")


def feature_path(features_dir: str | Path, model_name: str, dataset: str, kind: str, limit: int | None = None) -> Path:
    suffix = "json" if kind in ("categories", "meta") else "npy"
    return Path(features_dir) / f"{feature_stem(model_name, dataset, limit)}_{kind}.{suffix}"


@dataclass(frozen=True)
class FeatureSet:
    """One extraction's files: a model's activations of a dataset, all questions or the first `limit`; the
    other fields only go into the command that makes the set."""
    features_dir: Path
    model_name: str
    dataset: str
    limit: int | None = None
    model_path: str | None = None
    dataset_path: str | None = None
    prompt_format: str = "raw"

    def path(self, kind: str) -> Path:
        return feature_path(self.features_dir, self.model_name, self.dataset, kind, self.limit)

    def files(self, kind: str = "head_wise") -> list[Path]:
        return [self.path(k) for k in (kind, "labels", "question_ids")]

    def exists(self, kind: str = "head_wise") -> bool:
        return all(path.is_file() for path in self.files(kind))

    def command(self, overwrite: bool = False) -> str:
        """The get_activations call that writes exactly this set."""
        given = {"--model_path": self.model_path, "--dataset_path": self.dataset_path, "--limit": self.limit}
        return " ".join(["python get_activations/get_activations.py", f"--model_name {self.model_name}",
                         f"--dataset_name {self.dataset}",
                         *(f"{flag} {shlex.quote(str(value))}" for flag, value in given.items() if value is not None),
                         *([f"--prompt_format {self.prompt_format}"] if self.prompt_format != "raw" else []),
                         f"--features_dir {shlex.quote(str(self.features_dir))}",
                         *(["--overwrite"] if overwrite else [])])

    @property
    def remake(self) -> str:
        return f"re-extract them with `{self.command(overwrite=True)}`"


def find_feature_set(wanted: FeatureSet, kind: str = "head_wise") -> FeatureSet | None:
    """The set to read for `wanted`: itself, else (for the first N questions) the smallest extracted subset of more
    questions, else the full set, whose first N questions are the subset; None when none exists."""
    if wanted.exists(kind) or wanted.limit is None:
        return wanted if wanted.exists(kind) else None
    pattern = re.compile(re.escape(f"{feature_stem(wanted.model_name, wanted.dataset)}_limit_") + r"(\d+)"
                         + re.escape(f"_{kind}.npy"))
    larger = sorted(int(m.group(1)) for path in Path(wanted.features_dir).glob(f"*_{kind}.npy")
                    if (m := pattern.fullmatch(path.name)) and int(m.group(1)) > wanted.limit)
    candidates = [dataclasses.replace(wanted, limit=limit) for limit in [*larger, None]]
    return next((c for c in candidates if c.exists(kind)), None)


def require_feature_sets(wanted: list[FeatureSet], kind: str = "head_wise") -> list[FeatureSet]:
    """Before any model loads: the set found for each wanted one, its files' bytes checked against their record
    (check_contents); or one UsageError listing the command for every missing set, or naming a damaged file."""
    found = [find_feature_set(w, kind) for w in wanted]
    missing = [w for w, f in zip(wanted, found) if f is None]
    if missing:
        names = ", ".join(str(w.path(kind)) for w in missing)
        commands = " && ".join(w.command() for w in missing)
        raise UsageError(f"missing features {names}: make them with `{commands}`")
    for each in found:  # every set's headers first: a truncated file is named as such, whatever its record says
        for k in (kind, "labels", "question_ids"):
            _load_npy(each, k, mmap=True)
    for each in found:
        check_contents(each, (kind, "labels", "question_ids"))
    return found


def _load_npy(found: FeatureSet, kind: str, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(found.path(kind), mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"features file {found.path(kind)} is truncated or corrupt ({reason}); "
                         f"remake it with `{found.command(overwrite=True)}`") from err


# Per file checked in this process: (size, mtime_ns, inode) when it was hashed, and the digest it held then.
_CHECKED: dict[Path, tuple[tuple[int, int, int], str]] = {}


def check_contents(found: FeatureSet, kinds: Iterable[str], record: FeatureRecord | None = None) -> None:
    """The files of these kinds hold the bytes their record's SHA-256 names (get_activations hashed what it wrote),
    else a UsageError naming the file and the command that remakes it. Each file is hashed once a process while its
    size, modification time and inode stay as they were when it was hashed."""
    record = record or read_record(found)
    for kind in kinds:
        path = found.path(kind)
        recorded = record.sha256.get(kind)
        if recorded is None:
            raise UsageError(f"{path} is not one of the files its record {found.path('meta').name} lists (placed "
                             f"there afterwards?); {found.remake}")
        try:
            held = os.stat(path)
        except OSError as err:
            raise UsageError(f"features file {path} cannot be read ({err.strerror or err}); {found.remake}") from None
        state = (held.st_size, held.st_mtime_ns, held.st_ino)
        if _CHECKED.get(path.absolute()) != (state, recorded):
            check_sha256(path, recorded, "features file", found.remake)
            _CHECKED[path.absolute()] = (state, recorded)


def checked_digests(found_sets: Iterable[FeatureSet]) -> dict[str, str]:
    """The SHA-256 of each array file of these sets that this process checked, as it was when checked and read
    (not a hash of what lies there now)."""
    paths = (found.path(kind).absolute() for found in found_sets for kind in ARRAY_KINDS)
    return {str(path): _CHECKED[path][1] for path in dict.fromkeys(paths) if path in _CHECKED}


def feature_files(wanted: FeatureSet, kind: str = "head_wise") -> list[Path]:
    return (find_feature_set(wanted, kind) or wanted).files(kind)


def load_features(wanted: FeatureSet, kind: str = "head_wise", mmap: bool = True,
                  found: FeatureSet | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(activations, labels, question_ids) of the wanted questions, from `found` when the caller found the set; their
    bytes checked against the record (check_contents: not hashed again when require_feature_sets checked them)."""
    found = found or require_feature_sets([wanted], kind)[0]
    check_contents(found, (kind, "labels", "question_ids"))
    acts = _load_npy(found, kind, mmap)
    labels, question_ids = _load_npy(found, "labels"), _load_npy(found, "question_ids")
    if not len(acts) == len(labels) == len(question_ids):
        raise UsageError(f"features {found.path(kind)} hold {len(acts)} rows but their labels {len(labels)} and question "
                         f"ids {len(question_ids)}; remake them with `{found.command(overwrite=True)}`")
    others = np.setdiff1d(labels, (0, 1))
    if len(others):
        raise UsageError(f"features file {found.path('labels')} holds labels other than 0 and 1 (e.g. {others[0]}); "
                         f"labels must be 0 (false) or 1 (true): remake it with `{found.command(overwrite=True)}`")
    if wanted.limit is None or found.limit == wanted.limit:
        return acts, labels, question_ids
    available = int(question_ids.max()) + 1 if len(question_ids) else 0
    if available < wanted.limit:
        raise UsageError(f"features {found.path(kind)} cover {available} questions, fewer than --limit {wanted.limit}; "
                         f"make the subset with `{wanted.command()}`")
    rows = np.flatnonzero(question_ids < wanted.limit)
    return np.asarray(acts[rows]), labels[rows], question_ids[rows]


def feature_sets(cfg: ValidationConfig) -> tuple[FeatureSet, FeatureSet]:
    """(probing set, tuning set), both extracted from the model being run. With --limit, the
    `_limit_{N}` sets, else the first N questions of the full sets; but a generation-order probing set
    must be the full one, since its first N questions are not the first N of the (MC-order) folds; so
    must the tuning set for --sigma_questions dev, which takes the rows of MC-order questions."""
    probe_limit = cfg.limit if cfg.dataset_name == "tqa_mc2" or cfg.custom else None
    tuning_limit = cfg.limit if cfg.sigma_questions == "all" else None
    common = dict(features_dir=Path(cfg.features_dir), model_name=cfg.output_name, model_path=cfg.model_path,
                  prompt_format=cfg.prompt_format)
    return (FeatureSet(dataset=cfg.dataset_name, limit=probe_limit, dataset_path=cfg.dataset_path, **common),
            FeatureSet(dataset=cfg.tuning_dataset, limit=tuning_limit,
                       dataset_path=cfg.dataset_path if cfg.tuning_dataset == cfg.dataset_name else None, **common))


def recorded_ids(wanted: Iterable[FeatureSet]) -> list[str | None]:
    """The recorded `id` of the set found for each wanted one (None where none is found or its record is unreadable):
    what a run's identity names its features by, read without hashing a byte."""
    ids = []
    for each in wanted:
        found = find_feature_set(each)
        try:
            ids.append(read_record(found).id if found is not None else None)
        except UsageError:
            ids.append(None)
    return ids


@dataclass(frozen=True)
class FeatureRecord:
    """A feature set's `_meta.json` (docs/method.md §10): the fields its consumers read; the rest stays in `other`."""
    record_version: int
    model_name: str
    dataset: str
    limit: int | None
    prompt_format: str
    seed: int | None
    items: str
    rows: str
    id: str
    model: dict
    row_count: int
    num_layers: int
    num_heads: int
    head_dim: int
    sha256: dict[str, str]  # per kind (head_wise, labels, ...): the SHA-256 of the file get_activations wrote
    other: dict = field(default_factory=dict)

    @property
    def geometry(self) -> HeadGeometry:
        return HeadGeometry(self.num_layers, self.num_heads, self.head_dim)


def read_record(found: FeatureSet) -> FeatureRecord:
    """The set's `_meta.json`; missing, unreadable or of another layout, a UsageError saying to re-extract."""
    path, remake = found.path("meta"), found.remake
    if not path.exists():
        raise UsageError(f"{found.path('head_wise')} has no record of what made it ({path.name} is missing); "
                         f"{remake}")
    values = read_json(path, "feature record", remake)
    if not isinstance(values, dict) or values.get("record_version") != RECORD_VERSION:
        raise UsageError(f"{path} was written by an older version or another program and does not record what "
                         f"made the features; {remake}")
    record = records.read_record(FeatureRecord, values, f"{path} is not a whole feature record", remake)
    if min(record.row_count, record.num_layers, record.num_heads, record.head_dim) < 1:
        raise UsageError(f"{path} is not a whole feature record: its counts of rows, layers, heads and head_dim must "
                         f"be positive; {remake}")
    return record


def verify_feature_set(wanted: FeatureSet, found: FeatureSet | None = None) -> FeatureRecord:
    """The record of the set read for `wanted`, checked against its model, dataset, limit and the arrays' shapes (from
    their headers: arrays copied over are not the features the record describes); a mismatch names the remedy."""
    found = found or find_feature_set(wanted) or wanted
    record = read_record(found)
    rows, layers, heads, head_dim = record.row_count, record.num_layers, record.num_heads, record.head_dim
    # Per kind: the leading dimensions, how many dimensions in all, and the same in words.
    expected = {"head_wise": ((rows, layers, record.geometry.width), 3,
                              f"{rows} rows x {layers} layers x ({heads} heads x {head_dim})"),
                "layer_wise": ((rows, layers + 1), 3, f"{rows} rows x {layers + 1} residual streams"),
                "labels": ((rows,), 1, f"{rows} rows"), "question_ids": ((rows,), 1, f"{rows} rows")}
    for kind, (leading, ndim, described) in expected.items():
        if not found.path(kind).is_file():  # the residual streams are optional; the others were required before
            continue
        held = _load_npy(found, kind, mmap=True).shape
        if len(held) != ndim or held[:len(leading)] != leading:
            raise UsageError(f"{found.path(kind)} holds an array of shape {held}, not the {described} its record "
                             f"{found.path('meta').name} describes; {found.remake}")
    name = found.path("head_wise").name
    if record.model_name != wanted.model_name or record.dataset != wanted.dataset:
        raise UsageError(f"{name} was made for model {record.model_name}, dataset {record.dataset} (its record), "
                         f"not {wanted.model_name}, {wanted.dataset}: copied or renamed from another set; "
                         f"{found.remake}")
    if record.limit != found.limit:
        held = "all questions" if record.limit is None else f"the first {record.limit} questions"
        raise UsageError(f"{name} holds {held} (its record), not what its name says: renamed from another set; "
                         f"{found.remake}")
    return record


def verify_against_data(wanted: FeatureSet, tqa_path: str | None = None, probe_text=qa_prompt,
                        model_fingerprint: dict | None = None, prompts: bool = True, found: FeatureSet | None = None,
                        source: Source | None = None) -> FeatureRecord:
    """verify_feature_set, then against this run (from `source`, else the dataset file): the items, with `prompts`
    the prompt format and rows `probe_text` formats, and the model when `model_fingerprint` is given."""
    found = found or find_feature_set(wanted) or wanted
    record = verify_feature_set(wanted, found)
    source = source or load_source(wanted.dataset, tqa_path, wanted.dataset_path)
    expected = prompt_set_of(wanted.dataset, source, found.limit, 0 if record.seed is None else record.seed, probe_text)
    why = None
    if record.items != expected.items_digest:
        why = "were extracted from other items: the dataset changed since, or another file has this name"
    elif prompts and record.prompt_format != wanted.prompt_format:
        why = f"were extracted with --prompt_format {record.prompt_format}, this run asks for {wanted.prompt_format}"
    elif prompts and record.rows != expected.rows_digest():
        why = "were extracted from other prompts (another chat template or version)"
    elif model_fingerprint is not None and (reason := differs(record.model, model_fingerprint)) is not None:
        why = f"come from another model than this run's: {reason}"
    if why:
        raise UsageError(f"the features {found.path('head_wise').name} {why}; {found.remake}")
    return record
