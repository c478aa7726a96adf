"""The building blocks of every script's options: a field with its role and checks (`option`), the checks
every options class runs from that metadata (`Options`), the model and dataset options scripts share, and
the checks that need no data (names that become file names, folders, a §9 dataset file).

Standard library only at import (the CLI reads this before torch is imported).
"""
from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from iti.constants import BUNDLED_MODEL, DTYPES, PROMPT_FORMATS
from iti.errors import UsageError
from iti.identity import Role
from iti.registry import DATASET_NAMES, is_known_model, known_model_names

NUMBERS, SHIFTS, EXECUTION = Role.NUMBERS, Role.SHIFTS, Role.EXECUTION
DATASET_PATH_HELP = ("a contrastive dataset of your own (docs/method.md §9): .jsonl, .csv in TruthfulQA.csv's columns, "
                     "or hub:owner/name[:split]; --dataset_name then names its features and outputs")
# Names that become parts of file names: a letter or digit, then letters, digits, _ . + -; never a path.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][\w.+-]*")
# The tag of a `--limit` subset in feature file names: no dataset name may end with it.
LIMIT_TAG = re.compile(r"(^|_)limit_\d+$")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?|\d+")


def option(default, help: str, role: Role, *, named: bool = False, split: bool = False, location: bool = False,
           minimum: float | None = None, folder: str | None = None, **cli):
    """A dataclass field with its help and role; `cli` may hold `aliases` and `choices`; `folder` is "read"
    (must be a folder if it exists) or "write" (a folder, or a path where one can be made, that can be written);
    `location`: a path or source whose content, resolved when the work runs, is what enters an identity."""
    metadata = {"help": help, "role": role, "named": named, "split": split, "location": location,
                "minimum": minimum, "folder": folder, **cli}
    return field(default=default, metadata=metadata)


class Options:
    """What every options dataclass checks from its field metadata, before any data is read. `check()`
    runs the checks once per object (the script's parser and the run both ask)."""

    def check(self) -> None:
        if not getattr(self, "_checked", False):
            self._check()
            self._checked = True

    def _check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            for item in values_of(value):
                if item is None:
                    continue
                if "choices" in f.metadata and item not in f.metadata["choices"]:
                    raise UsageError(f"--{f.name} {item} is not one of {', '.join(map(str, f.metadata['choices']))}")
                if f.metadata.get("minimum") is not None and not item >= f.metadata["minimum"]:
                    raise UsageError(f"--{f.name} {item} must be at least {f.metadata['minimum']:g}")
            if f.metadata.get("folder") and value is not None:
                check_folder(f"--{f.name}", value, f.metadata["folder"] == "write")


@dataclass
class ModelOptions(Options):
    model_name: str = option(BUNDLED_MODEL, "registry name; with --model_path it only names outputs", NUMBERS,
                             named=True)
    model_prefix: str = option("", "prefix added to --model_name, e.g. local_ or honest_", NUMBERS, named=True)
    model_path: str | None = option(None, "hub id, local model folder or .gguf file (overrides the registry)", NUMBERS,
                                    location=True)
    device: str = option("auto", "auto (all GPUs, else CPU), cpu, cuda, cuda:N or a GPU index", EXECUTION)
    dtype: str = option("auto", "auto: float32 on CPU, the checkpoint's half precision on GPU", NUMBERS,
                        choices=DTYPES)
    trust_remote_code: bool = option(False, "allow the model's own code from the hub", EXECUTION)

    @property
    def output_name(self) -> str:
        """The name outputs carry: `{model_prefix}{model_name}`."""
        return f"{self.model_prefix}{self.model_name}"

    def _check(self) -> None:
        super()._check()
        check_plain_name("--model_name", self.model_name)
        if self.model_prefix and not re.fullmatch(r"[\w.+-]+", self.model_prefix):
            raise UsageError(f"--model_prefix {self.model_prefix!r} must be letters, digits, _ . + - (e.g. local_)")
        if self.model_path is None and not is_known_model(self.output_name):
            raise UsageError(f"unknown model name {self.output_name!r}; known names: {', '.join(known_model_names())}; "
                             "or give --model_path (hub id, local folder or .gguf file)")
        if not DEVICE.fullmatch(str(self.device)):
            raise UsageError(f"--device {self.device} is not a device; use auto, cpu, cuda, cuda:N or a GPU index N")


@dataclass
class DatasetOptions(ModelOptions):
    """Where the items come from (a built-in set, or a §9 file named by --dataset_name) and how they are prompted."""
    dataset_path: str | None = option(None, DATASET_PATH_HELP, NUMBERS, split=True, location=True)
    prompt_format: str = option("raw", "raw (`Q: {question} A: {answer}`, the public workflow) or chat (the model's "
                                       "chat template: question as the user turn, answer as the assistant turn)",
                                NUMBERS, choices=PROMPT_FORMATS)

    @property
    def custom(self) -> bool:
        return self.dataset_path is not None

    def check_custom_dataset(self, dataset_name: str, min_items: int = 1, limit: int | None = None) -> None:
        """A §9 file is read in full here (it is small and needs no heavy import), so bad items fail at once."""
        check_custom_dataset(self.dataset_path, dataset_name, min_items, limit)


def check_plain_name(flag: str, name: str) -> None:
    """Names that become parts of file names must stay inside their folder: no `/`, no `..`, no spaces."""
    if not PLAIN_NAME.fullmatch(name):
        raise UsageError(f"{flag} {name!r} becomes part of file names: use letters, digits and _ . + - only, "
                         "starting with a letter or digit (no / or ..)")


def check_folder(flag: str, path: str, write: bool) -> None:
    """A folder option: an existing file is refused; a folder to write must be writable, or creatable where its
    nearest existing parent is writable (probed with a temporary file, removed at once: nothing is left)."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder; give a folder")
    if not write:
        return
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, so no folder can be made there; give another path")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".iti-write-probe.")
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write in {existing} ({err.strerror}); give a folder you can "
                         "write to") from None
    os.close(handle)
    os.unlink(probe)


def check_custom_dataset(dataset_path: str, dataset_name: str, min_items: int = 1, limit: int | None = None) -> None:
    """--dataset_name must be a plain new name, and the file a §9 dataset with enough items (hub sets load later)."""
    from iti.contrastive import HUB_PREFIX, load_dataset_file

    check_plain_name("--dataset_name", dataset_name)
    if dataset_name in DATASET_NAMES:
        raise UsageError(f"--dataset_name {dataset_name!r} names your dataset's files: use a new name, not one of "
                         f"the built-in {', '.join(DATASET_NAMES)}")
    if LIMIT_TAG.search(dataset_name):
        raise UsageError(f"--dataset_name {dataset_name!r} ends like the `_limit_N` tag of a subset's files; "
                         "choose a name that does not end in limit_<number>")
    if dataset_path.startswith(HUB_PREFIX):
        return
    items = len(load_dataset_file(dataset_path, dataset_name))
    if limit is not None and limit > items:
        raise UsageError(f"--limit {limit} is more than the {items} items of {dataset_path}; use --limit {items} or less")
    if min(items, limit or items) < min_items:
        raise UsageError(f"{dataset_path} has {min(items, limit or items)} items, fewer than the {min_items} the run "
                         "needs to split them into folds and each fold's development items into training and "
                         "validation ones; add items, or use fewer folds")


def values_of(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def check_fraction(flag: str, value: float) -> None:
    if not 0 < value < 1:
        raise UsageError(f"{flag} {value} must lie strictly between 0 and 1, e.g. 0.2")
