"""Which folders a bake may be written to (docs/method.md §7): torch-free, so `--check_args` can ask it."""
from __future__ import annotations

import os
from pathlib import Path

from iti.errors import UsageError
from iti.files import read_json
from iti.head_shifts import METADATA_FILE, RESAVE, TENSORS_FILE
from iti.identity import json_value


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
