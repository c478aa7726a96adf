"""Inference-Time Intervention: activations, probes, head shifts, evaluation, baking.

The library path (iti.api): `load_model`, `fit`, `apply` / `applied`, `generate`; `HeadShifts` (`.save`, `.load`,
`.scaled`); `export_pyvene`; `head_accuracy_heatmap`. They load on first use, so that importing a submodule (the
command lines read iti.cli before torch) stays light. No submodule is named like one of them: importing a
submodule binds it on the package, where it would hide the function of the same name from then on.
"""
from importlib import import_module

_PUBLIC = {"load_model": "iti.api", "fit": "iti.api", "apply": "iti.api", "applied": "iti.api",
           "generate": "iti.api", "HeadShifts": "iti.head_shifts", "export_pyvene": "iti.pyvene_export",
           "head_accuracy_heatmap": "iti.plots"}
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'iti' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)
