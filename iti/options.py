"""The building blocks of every script's options: a field with its role and checks (`option`), the checks every
options class runs from that metadata (`Options`), the model and dataset options scripts share, and the checks that
need no data. Standard library only at import (the CLI reads this before torch is imported)."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from iti.constants import BUNDLED_MODEL, DTYPES, PROMPT_FORMATS
from iti.errors import UsageError
from iti.gguf_file import check_gguf_file
from iti.identity import Role, spelled
from iti.registry import DATASET_NAMES, check_dataset_name, check_model_name

NUMBERS, SHIFTS, EXECUTION = Role.NUMBERS, Role.SHIFTS, Role.EXECUTION
DATASET_PATH_HELP = ("a contrastive dataset of your own (docs/method.md §9): .jsonl, .csv in TruthfulQA.csv's columns, "
                     "or hub:owner/name[:split]; --dataset_name then names its features and outputs")
# Names that become parts of file names: a letter or digit, then letters, digits, _ . + -; never a path.
PLAIN_NAME = re.compile(r"[A-Za-z0-9][\w.+-]*")
# The tag of a `--limit` subset in feature file names: no dataset name may end with it.
LIMIT_TAG = re.compile(r"(^|_)limit_\d+$")
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?|\d+")
# The largest |α|: float16's largest finite number (see check_alpha).
MAX_ALPHA = 65504.0
# The largest seed: NumPy's generators take 0 to 2**32 - 1.
MAX_SEED = 2**32 - 1
# Where a GGUF model's conversion to an ordinary folder is kept, and the variable that moves it.
CACHE_VARIABLE = "ITI_CACHE"


def option(default, help: str, role: Role, *, named: bool = False, split: bool = False, location: bool = False,
           minimum: float | None = None, maximum: float | None = None, fraction: bool = False,
           folder: str | None = None, file: str | None = None, **cli):
    """A dataclass field with its help and role; `cli` may hold `aliases`, `choices` and `positional`.
    `minimum`/`maximum`: the range of every value; `fraction`: strictly between 0 and 1. `folder` is "read" (must
    be a folder if it exists), "existing" (must be a folder) or "write" (a folder, or a path where one can be made,
    that can be written); `file` is "read" (a readable file) or "write" (a file that can be written, never a
    folder); `location`: a path or source whose content, resolved when the work runs, is what enters an identity.
    Every path is refused when empty."""
    metadata = {"help": help, "role": role, "named": named, "split": split, "location": location,
                "minimum": minimum, "maximum": maximum, "fraction": fraction, "folder": folder, "file": file, **cli}
    return field(default=default, metadata=metadata)


def seed_option(help: str, default: int | None = 42, **kwargs):
    """A seed: NumPy takes 0 to 2**32 - 1 (`np.random.seed`, the public split generator), so every seed does."""
    return option(default, help, NUMBERS, minimum=0, maximum=MAX_SEED, **kwargs)


class Options:
    """What every options dataclass checks from its field metadata, before any data is read. `check()`
    runs the checks once per object (the script's parser and the run both ask)."""

    def check(self) -> None:
        if not getattr(self, "_checked", False):
            self._check()
            self._check_counts()
            self._checked = True

    def _check_counts(self) -> None:
        """Checks that need every other check passed (options whose counts are known, e.g. from --limit)."""

    def _check(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            flag = f.name.replace("_", " ") if f.metadata.get("positional") else f"--{f.name}"
            for item in () if value is None else values_of(value):
                if "choices" in f.metadata and item not in f.metadata["choices"]:
                    raise UsageError(f"{flag} {item} is not one of {', '.join(map(str, f.metadata['choices']))}")
                check_range(flag, item, f.metadata["minimum"], f.metadata["maximum"])
                if f.metadata["fraction"]:
                    check_fraction(flag, item)
                if f.metadata["location"] or f.metadata["folder"] or f.metadata["file"]:
                    check_path(flag, item, f.metadata["folder"], f.metadata["file"])


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

    @property
    def converted_from_gguf(self) -> bool:
        """Whether the model is a GGUF file, converted once into the cache folder before it loads."""
        if self.model_path is None:
            return self.output_name == BUNDLED_MODEL
        return Path(self.model_path).expanduser().is_file()

    def _check(self) -> None:
        super()._check()
        check_plain_name("--model_name", self.model_name)
        if self.model_prefix and not re.fullmatch(r"[\w.+-]+", self.model_prefix):
            raise UsageError(f"--model_prefix {self.model_prefix!r} must be letters, digits, _ . + - (e.g. local_)")
        if self.model_path is None:
            check_model_name(self.output_name)
        check_device(str(self.device))
        if self.model_path is not None:
            check_model_path(self.model_path)
        if self.converted_from_gguf:
            cache_folder()


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


def check_plain_name(flag: str, name: str) -> None:
    """Names that become parts of file names must stay inside their folder: no `/`, no `..`, no spaces."""
    if not PLAIN_NAME.fullmatch(name):
        raise UsageError(f"{flag} {name!r} becomes part of file names: use letters, digits and _ . + - only, "
                         "starting with a letter or digit (no / or ..)")


def check_range(flag: str, value, minimum: float | None, maximum: float | None) -> None:
    if value != value:  # NaN: compares false with every bound
        raise UsageError(f"{flag} {value} is not a number")
    if minimum is not None and value < minimum:
        raise UsageError(f"{flag} {value} must be at least {spelled(minimum)}")
    if maximum is not None and value > maximum:
        raise UsageError(f"{flag} {value} must be at most {spelled(maximum)}")


def check_fraction(flag: str, value: float) -> None:
    if not 0 < value < 1:
        raise UsageError(f"{flag} {value} must lie strictly between 0 and 1, e.g. 0.2")


def check_alpha(alpha: float, what: str = "--alpha", reach: float = 0.0, largest: float = math.inf,
                dtype: str = "") -> None:
    """α's range, checked here alone (options, head shifts made or loaded, shifts meeting a model). |α| is at most
    float16's largest number: θ is a unit vector (|θ_i| ≤ 1) and σ the spread of activations that a half-precision
    model holds below 65504, so every α·σ·θ_i stays below 65504² ≈ 4.3e9, finite in float32, in which shifts are
    built. Once σ is known (options know none: reach 0), `reach` is the largest |σ·θ_i|: every shift α·σ·θ_i must
    then be at most `largest`, the largest number of the `dtype` it is used in (beyond, it is infinite there and
    every later activation NaN)."""
    check_range(what, alpha, -MAX_ALPHA, MAX_ALPHA)
    if abs(alpha) * reach > largest:
        raise UsageError(f"{what} {alpha:g} shifts a head by up to {abs(alpha) * reach:.4g} (alpha·σ·θ), beyond the "
                         f"largest {dtype} number ({largest:.5g}); use |alpha| at most {largest / reach:.4g}")


def check_path(flag: str, path: str, folder: str | None = None, file: str | None = None) -> None:
    """A path option: never empty (an empty path would silently mean the current folder), then what `folder`
    or `file` asks for (see `option`); a folder to write is probed with a temporary file, removed at once."""
    if not path.strip():
        raise UsageError(f"{flag} is empty; give a path" + (" (. for the current folder)" if folder else ""))
    kind = path_kind(flag, path) if folder or file else None
    if folder and kind not in (None, "folder"):
        raise UsageError(f"{flag} {path} is a file, not a folder; give a folder")
    if file and kind == "folder":
        raise UsageError(f"{flag} {path} is a folder, not a file; give a file")
    if kind is None and (folder == "existing" or file == "read"):
        raise UsageError(f"{flag} {path} does not exist; give {'an existing folder' if folder else 'a file'}")
    if file == "read" and not os.access(Path(path).expanduser(), os.R_OK):
        raise UsageError(f"{flag} {path} cannot be read (permission denied); check its permissions")
    if file == "write":
        from iti.files import check_output_file  # imports NumPy: only where an output file is named

        check_output_file(Path(path).expanduser(), flag)
    if "write" in (folder, file):
        check_writable(flag, path, Path(path).expanduser() if folder else Path(path).expanduser().parent)


def path_kind(flag: str, path: str | Path) -> str | None:
    """"folder", "file", "other" (a device, a socket...) or None when nothing is there (a parent that is a file
    included). A symbolic link that leads nowhere or into a loop, or a path that cannot be looked at, is a
    UsageError: Path.exists() says False for those, and writing there fails later."""
    local = Path(path).expanduser()
    try:
        mode = os.stat(local).st_mode
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(local):
            raise UsageError(f"{flag} {path} is a symbolic link to {os.readlink(local)}, which does not exist; give "
                             "another path or fix the link") from None
        return None
    except OSError as err:
        raise UsageError(f"{flag} {path} cannot be used ({err.strerror}); give another path") from None
    return "folder" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def nearest_existing(flag: str, path: Path) -> tuple[Path, str]:
    """The path itself or its closest ancestor that exists, and its kind (see path_kind)."""
    while (kind := path_kind(flag, path)) is None:
        path = path.parent
    return path, kind


def check_writable(flag: str, path: str, folder: Path) -> None:
    """Files can be written in `folder`, or in the folder that can be made there."""
    existing, kind = nearest_existing(flag, folder)
    if kind != "folder":
        raise UsageError(f"{flag} {path}: {existing} is a file, so no folder can be made there; give another path")
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".iti-write-probe.")
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write in {existing} ({err.strerror}); give a folder you can "
                         "write to") from None
    os.close(handle)
    os.unlink(probe)


def cache_folder() -> Path:
    """Where converted models are kept: $ITI_CACHE, else ~/.cache/iti. Set empty (it would mean the current folder)
    or to a file, or a path under a file, it is a UsageError saying what to set."""
    value = os.environ.get(CACHE_VARIABLE)
    if value is None:
        return Path.home() / ".cache" / "iti"
    remedy = (f"set {CACHE_VARIABLE} to a folder for converted models (it may not exist yet), or unset it to use "
              "~/.cache/iti")
    if not value.strip():
        raise UsageError(f"{CACHE_VARIABLE} is set but empty; {remedy}")
    folder = Path(value).expanduser()
    existing, kind = nearest_existing(CACHE_VARIABLE, folder)
    if kind != "folder":
        what = "a file" if kind == "file" else "not a file or folder"
        raise UsageError(f"{CACHE_VARIABLE} {value} is not a folder ({existing} is {what}); {remedy}")
    return folder


def check_device(device: str) -> None:
    """A device name torch can use here: GPUs are asked of torch (imported only when a GPU is named)."""
    if not DEVICE.fullmatch(device):
        raise UsageError(f"--device {device} is not a device; use auto, cpu, cuda, cuda:N or a GPU index N")
    if device in ("auto", "cpu"):
        return
    import torch

    if device == "mps":
        if not torch.backends.mps.is_available():
            raise UsageError("--device mps asks for an Apple GPU but torch sees none; use --device cpu")
        return
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.rpartition(":")[2]) if device != "cuda" else 0
    if index >= count:
        others = f", or a GPU index below {count}" if count else ""
        raise UsageError(f"--device {device} names a GPU that torch does not see (it sees {count}); use --device "
                         f"cpu{others}")


def check_model_path(model_path: str) -> None:
    """A local model folder (holding config.json), a .gguf file, or a hub id (owner/name); a path that is not
    there is refused, as anything that looks like a path and is not a hub id."""
    kind = path_kind("--model_path", model_path)
    local = Path(model_path).expanduser()
    if kind == "other":
        raise UsageError(f"--model_path {model_path} is neither a file nor a folder; give a model folder, a .gguf "
                         "file or a hub id")
    if kind == "file":
        check_gguf_file(local)
    elif kind == "folder" and path_kind("--model_path", local / "config.json") != "file":
        raise UsageError(f"--model_path {model_path} is a folder without config.json, so not a model folder; give the "
                         "folder save_pretrained wrote, a .gguf file or a hub id")
    elif kind is None and (model_path.startswith((".", "/", "~")) or model_path.endswith(".gguf")
                           or model_path.count("/") != 1):
        raise UsageError(f"--model_path {model_path} does not exist (give a local folder, a .gguf file or a hub id)")


def check_dataset(dataset_path: str | None, dataset_name: str, min_items: int = 1,
                  limit: int | None = None) -> int | None:
    """A built-in --dataset_name, or for --dataset_path a plain new name and a §9 dataset with enough items, read in
    full here (it is small and needs no heavy import; hub sets load later): the number of items a run takes from it
    (None for a built-in or hub set)."""
    from iti.contrastive import HUB_PREFIX, load_dataset_file

    if dataset_path is None:
        return check_dataset_name(dataset_name)
    check_plain_name("--dataset_name", dataset_name)
    if dataset_name in DATASET_NAMES:
        raise UsageError(f"--dataset_name {dataset_name!r} names your dataset's files: use a new name, not one of "
                         f"the built-in {', '.join(DATASET_NAMES)}")
    if LIMIT_TAG.search(dataset_name):
        raise UsageError(f"--dataset_name {dataset_name!r} ends like the `_limit_N` tag of a subset's files; "
                         "choose a name that does not end in limit_<number>")
    if dataset_path.startswith(HUB_PREFIX):
        return None
    items = len(load_dataset_file(dataset_path, dataset_name))
    if limit is not None and limit > items:
        raise UsageError(f"--limit {limit} is more than the {items} items of {dataset_path}; use --limit {items} or less")
    if (limit or items) < min_items:
        raise UsageError(f"{dataset_path} has {limit or items} items, fewer than the {min_items} the run needs to "
                         "split them into folds and each fold's development items into training and validation ones; "
                         "add items, or use fewer folds")
    return limit or items


def values_of(value) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)
