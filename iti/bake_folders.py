"""Bake folders (docs/method.md §7): where one may be written, how much space it needs, and its record (bake.json:
every file the bake wrote, with size and SHA-256, and the edit_weight call that makes it again), which loading and
publishing check. Torch-free, so `--check_args` can ask it."""
from __future__ import annotations

import dataclasses
import math
import os
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from iti.constants import EDITED_MODELS_DIR
from iti.errors import UsageError
from iti.files import check_sha256, read_json, sha256_of, why_not_a_file, write_json
from iti.head_shifts import METADATA_FILE, RESAVE, TENSORS_FILE
from iti.identity import json_value
from iti.records import read_record, record_json
from iti.registry import HF_NAMES

BAKE_RECORD = "bake.json"
EDIT_WEIGHT = "validation/edit_weight.py"
# Room for what a bake writes besides the weights: safetensors headers (about 100 bytes a tensor), config files,
# head shifts, this record and the tokenizer files, the largest part (Gemma 3's tokenizer.json is 33 MB).
BESIDE_WEIGHTS = 64 * 2**20
DTYPE_SIZES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class BakedFile:
    """One file a bake wrote: its path in the folder (POSIX, relative), size in bytes and SHA-256 (hex)."""
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class BakeRecord:
    """bake.json, written last: the files of the bake (all but this record) and the edit_weight call that remakes it."""
    command: str
    files: list[BakedFile]


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False, bake: dict | None = None) -> None:
    """UsageError unless a bake may go to `output_dir`: a new path, or with `overwrite` an earlier bake (a folder
    holding the head-shift files save_baked_model writes) of the same identity `bake`, when it is known; the folder's
    head shifts record their own (None before bakes recorded one).

    A folder that is not a bake, or a bake of other settings, is never replaced, whatever the flags.
    """
    out = Path(output_dir)
    if not out.exists():
        return
    if not ((out / TENSORS_FILE).is_file() and (out / METADATA_FILE).is_file()):
        raise UsageError(f"--output_dir {out} exists and is not a baked model (no {TENSORS_FILE} and {METADATA_FILE}); "
                         "it is left as it is: give a new folder")
    if bake is not None:
        metadata = read_json(out / METADATA_FILE, "head shifts file", RESAVE)
        provenance = metadata.get("provenance") if isinstance(metadata, dict) else None
        recorded = provenance.get("identity") if isinstance(provenance, dict) else None
        if recorded != json_value(bake):
            raise UsageError(f"--output_dir {out} holds a bake made with other settings (or by a version that "
                             "recorded none); it is kept: give a new folder")
    if not overwrite:
        raise UsageError(f"--output_dir {out} holds an earlier bake; add --overwrite to replace it, or give a new folder")


def check_bake_target(cfg) -> None:
    """What `--check_args` can tell of an edit_weight call's output before any model loads: the folder may be
    written (check_output_dir), and its file system has room for the weights where their size is known without
    loading them (stored_parameter_count); the bake checks the space again, exactly, before it writes."""
    if cfg.output_dir is not None:
        check_output_dir(cfg.output_dir, cfg.overwrite)  # the bake's identity is checked once it is known
    parameters = stored_parameter_count(cfg)
    if parameters is not None:
        # "auto" is float32 on CPU and half precision on a GPU: the smaller size, as a GPU may run the bake.
        itemsize = DTYPE_SIZES.get(cfg.dtype, 4 if cfg.device == "cpu" else 2)
        check_space(Path(cfg.output_dir or EDITED_MODELS_DIR), space_needed(parameters * itemsize))


def stored_parameter_count(cfg) -> int | None:
    """The number of weights in the model's safetensors files (their headers only), when those lie on this machine:
    --model_path a folder, or a hub model in the local hub cache. None when that cannot be told without loading it
    (a .gguf file, a bake named by --model_prefix, a model not downloaded yet, a file that does not read)."""
    from safetensors import SafetensorError, safe_open

    folder = _local_model_folder(cfg)
    files = sorted(folder.glob("*.safetensors")) if folder is not None and folder.is_dir() else []
    count = 0
    try:
        for path in files:
            with safe_open(str(path), framework="np") as weights:
                count += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    except (OSError, SafetensorError):
        return None
    return count or None


def _local_model_folder(cfg) -> Path | None:
    if cfg.model_path is not None:
        return Path(cfg.model_path).expanduser()
    hub_id = HF_NAMES.get(cfg.output_name)
    if hub_id is None:
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(hub_id, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


def space_needed(weight_bytes: int) -> int:
    """The bytes a bake of `weight_bytes` of weights (at the dtype saved) writes, with room for the rest to spare."""
    return weight_bytes + BESIDE_WEIGHTS


def check_space(folder: Path, needed: int) -> None:
    """A UsageError, before anything is written, when the file system `folder` is (or will be) on has less room
    than `needed` (with --overwrite the old bake stays until the new one is whole, so it frees nothing)."""
    free = free_space(folder)
    if needed > free:
        raise UsageError(no_space(folder, needed, free))


def free_space(folder: Path) -> int:
    """Free bytes on the file system of `folder`, or of its nearest existing parent (it may not exist yet)."""
    existing = Path(folder).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return shutil.disk_usage(existing).free


def no_space(folder: Path, needed: int, free: int) -> str:
    return (f"the bake {folder} needs about {readable_size(needed)} (the weights at their dtype and "
            f"{readable_size(BESIDE_WEIGHTS)} for tokenizer, config and head shifts), its file system has "
            f"{readable_size(free)} free: free some space there or give another --output_dir")


def readable_size(num_bytes: float) -> str:
    for unit in ("B", "kB", "MB"):
        if num_bytes < 1000:
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1000
    return f"{num_bytes:.1f} GB"


def edit_weight_command(cfg) -> str:
    """The edit_weight call that makes this bake again into its folder: every option not at its default."""
    words = ["python", EDIT_WEIGHT]
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name == "overwrite" or value == field.default:
            continue
        if isinstance(value, bool):
            words.append(f"--{field.name}" if value else f"--no-{field.name}")
        else:
            words += [f"--{field.name}", *map(str, value if isinstance(value, tuple) else (value,))]
    return shlex.join([*words, "--overwrite"])


def record_bake(folder: Path, command: str) -> None:
    """Write bake.json listing every file now in `folder` (a bake being staged), so it is the last file written."""
    files = [BakedFile(path.relative_to(folder).as_posix(), path.stat().st_size, sha256_of(path))
             for path in sorted(folder.rglob("*")) if path.is_file()]
    write_json(folder / BAKE_RECORD, record_json(BakeRecord(command, files)))


def read_bake_record(folder: Path) -> BakeRecord | None:
    """A bake folder's record; None where there is none (a model folder not baked, or baked before bakes recorded
    their files)."""
    path = Path(folder) / BAKE_RECORD
    if not path.is_file():
        return None
    remedy = f"bake the model again with {EDIT_WEIGHT}"
    record = read_record(BakeRecord, read_json(path, "bake record", remedy), f"bake record {path}", remedy)
    for entry in record.files:
        name = PurePosixPath(entry.name)
        if name.is_absolute() or ".." in name.parts or entry.name in ("", BAKE_RECORD):
            raise UsageError(f"bake record {path} lists {entry.name!r}, which is no file of the bake's folder; "
                             f"{remedy}")
    return record


def check_bake(folder: str | os.PathLike) -> BakeRecord | None:
    """A bake folder's record, each file it lists checked to hold the bytes recorded when it was written; the first
    that differs (or is missing) is a UsageError naming it and the edit_weight call that remakes the bake. A folder
    without a record passes unchecked (None)."""
    folder = Path(folder).expanduser()
    record = read_bake_record(folder) if folder.is_dir() else None
    for entry in record.files if record is not None else []:
        remedy, path = f"bake it again with `{record.command}`", folder / entry.name
        if not path.is_file():  # a named pipe would never end a read
            raise UsageError(f"baked model file {path} {why_not_a_file(path)}; {remedy}")
        check_sha256(path, entry.sha256, "baked model file", remedy)
    return record
