"""HeadShifts to and from the folder format of pyvene's `IntervenableModel.save` / `.load`.

An export holds, per edited layer, one pyvene `AdditionIntervention` on `<layer>.<o_proj>.input`
whose constant source is the layer's offset δ_l (every selected head's α·σ·θ in its slice), written
by pyvene's own `save` (`config.json` + one `intkey_*.bin` state file per layer: a dict of tensors,
which loads with `torch.load(weights_only=True)`). So `pyvene.IntervenableModel.load(folder, model)`
alone applies the shifts: at every position when called without `unit_locations` (as a baked model
does, docs/method.md §7), or at the positions `unit_locations` names. The HeadShifts files (head_shifts.json /
.safetensors) go beside them so that an import gives back α, σ, directions and provenance exactly;
a folder written by pyvene alone imports by splitting each offset into its heads (α = 1, σ = |shift|).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import torch

from iti.config import ExportConfig
from iti.errors import UsageError
from iti.files import read_json, staged_folder
from iti.geometry import HeadGeometry
from iti.head_shifts import METADATA_FILE, HeadShifts, ShiftProvenance
from iti.models import model_sites, resolve_model_source

PYVENE_CONFIG = "config.json"
_ADDITION = "AdditionIntervention"
REEXPORT = "export the head shifts again with validation/export_head_shifts.py"
_UNIT_TOLERANCE = 1e-5


def model_source(cfg: ExportConfig, shifts: HeadShifts | None) -> str:
    """--model_path if given, else the model the head shifts record (`shifts`, or those beside an import; a folder
    pyvene wrote holds none), else --model_name's."""
    if shifts is None and (Path(cfg.import_from) / METADATA_FILE).is_file():
        shifts = HeadShifts.load(cfg.import_from)
    recorded = shifts.model_source if shifts is not None else None
    if cfg.model_path or recorded is None:
        return resolve_model_source(cfg.model_name, cfg.model_prefix, cfg.model_path)
    try:
        return resolve_model_source(cfg.model_name, model_path=recorded)
    except UsageError as err:
        raise UsageError(f"the head shifts were made from {recorded}, which is not there any more; give that model's "
                         "place with --model_path") from err


def is_export(folder: Path) -> bool:
    config = folder / PYVENE_CONFIG
    return config.is_file() and "intervention_types" in read_json(config, "pyvene config", REEXPORT)


def export_pyvene(shifts: HeadShifts, model_config, folder: str | os.PathLike) -> Path:
    """Write the pyvene folder for `shifts` on a model with `model_config`; the folder appears whole or not at all,
    and replaces an existing one only when that is an earlier export (never other files)."""
    from transformers import AutoModelForCausalLM

    from iti.intervenable import pv

    target = Path(folder)
    if target.exists() and any(target.iterdir()) and not is_export(target):
        raise UsageError(f"{target} exists and is not a pyvene export; give a new or empty folder")
    with torch.device("meta"):  # pyvene needs the modules to name, not their weights
        skeleton = AutoModelForCausalLM.from_config(model_config)
    sites = model_sites(skeleton)
    components = [{"component": f"{sites.o_proj_of(layer)}.input",
                   "intervention": pv.AdditionIntervention(source_representation=torch.as_tensor(offset),
                                                           embed_dim=shifts.geometry.width)}
                  for layer, offset in sorted(shifts.layer_offsets().items())]
    with staged_folder(target, replace=True) as staging:
        with contextlib.redirect_stdout(io.StringIO()):  # pyvene prints where it saves
            pv.IntervenableModel(components, skeleton).save(str(staging))
        shifts.save(staging)
    return target


def _read_state(folder: Path, key: str) -> dict[str, torch.Tensor]:
    """One intervention's state from its .bin (the only form pyvene writes and loads), read weights-only."""
    path = folder / f"intkey_{key}.bin"
    if not path.is_file():
        raise UsageError(f"{folder} lacks the state file {path.name} that its {PYVENE_CONFIG} lists; export again")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(f"{path} is not a plain tensor file ({type(err).__name__}); only tensor state files are "
                         "read (no pickled objects): export it again") from err


def read_pyvene_offsets(folder: str | os.PathLike) -> dict[int, np.ndarray]:
    """Per layer, the constant vector a pyvene export adds to that layer's o_proj input."""
    folder = Path(folder)
    if not is_export(folder):
        raise UsageError(f"{folder} holds no pyvene export ({PYVENE_CONFIG} with intervention_types); "
                         "make one with validation/export_head_shifts.py")
    config = read_json(folder / PYVENE_CONFIG, "pyvene config", REEXPORT)
    offsets: dict[int, np.ndarray] = {}
    for key, kind, representation, constant in zip(config["sorted_keys"], config["intervention_types"],
                                                   config["representations"], config["intervention_constant_sources"]):
        component = representation[1]
        match = re.search(r"\[(\d+)\]\.[\w.]+\.input$", component)
        if _ADDITION not in kind or not constant or match is None:
            raise UsageError(f"{folder}: intervention {kind} on {component} is not a constant addition to a layer's "
                             "attention output input, so it is not a set of head shifts")
        layer = int(match.group(1))
        if layer in offsets:
            raise UsageError(f"{folder}: layer {layer} has two interventions; head shifts have one per layer")
        offsets[layer] = _read_state(folder, key)["source_representation"].float().numpy()
    return offsets


def heads_from_offsets(offsets: dict[int, np.ndarray], geometry: HeadGeometry, provenance: ShiftProvenance) -> HeadShifts:
    """Split each layer offset into its heads' shifts: α = 1, σ = |shift|, direction = shift / |shift|."""
    layers, heads, directions, sigmas = [], [], [], []
    for layer, offset in sorted(offsets.items()):
        if offset.shape != (geometry.width,):
            raise UsageError(f"the offset of layer {layer} has {offset.shape[0]} values but the model's o_proj input "
                             f"has {geometry.width}: the export was made for another model")
        for head, shift in enumerate(offset.reshape(geometry.num_heads, geometry.head_dim).astype(np.float64)):
            norm = float(np.linalg.norm(shift))
            if norm > 0:
                layers.append(layer), heads.append(head), directions.append(shift / norm), sigmas.append(norm)
    return HeadShifts(np.array(layers, dtype=np.int64), np.array(heads, dtype=np.int64),
                      np.array(directions).reshape(len(layers), geometry.head_dim), np.array(sigmas),
                      np.full(len(layers), np.nan), alpha=1.0, num_layers=geometry.num_layers,
                      num_heads=geometry.num_heads, head_dim=geometry.head_dim, provenance=provenance)


def import_pyvene(folder: str | os.PathLike, geometry: HeadGeometry) -> HeadShifts:
    """HeadShifts from a pyvene export: our own files when they agree with the interventions, else split."""
    folder = Path(folder)
    offsets = read_pyvene_offsets(folder)
    if (folder / METADATA_FILE).is_file():
        shifts = HeadShifts.load(folder)
        shifts.check_geometry(geometry)
        ours = shifts.layer_offsets()
        if set(ours) == set(offsets) and all(np.allclose(ours[l], offsets[l], atol=_UNIT_TOLERANCE) for l in ours):
            return shifts
        raise UsageError(f"{folder}: the interventions in {PYVENE_CONFIG} differ from {METADATA_FILE}; one of them "
                         "was edited: export again")
    return heads_from_offsets(offsets, geometry, ShiftProvenance(imported_from=str(folder)))
