"""Writing outputs safely: every file goes to a unique temporary name beside its target and is renamed
into place, so a killed run never leaves a half-written file under a real name, and parallel runs
writing the same file never see each other's partial output."""
from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Callable

import numpy as np


def temporary_path(path: Path) -> Path:
    """A hidden, unique name in the target's folder (same file system, so os.replace is atomic)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` then rename tmp to `path`; on failure nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data) -> Path:
    return write_text(path, json.dumps(plain(data), indent=2) + "\n")


def write_csv(path: str | Path, frame) -> Path:
    """A pandas DataFrame, without its index."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def save_npy(path: str | Path, array) -> Path:
    """An .npy file that loads without pickle."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.lib.format.write_array(handle, np.asarray(array), allow_pickle=False)
    return atomic_write(path, write)


def plain(value):
    """JSON-ready: NaN and infinities -> null, numpy scalars and arrays -> Python numbers and lists."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
