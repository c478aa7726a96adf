"""Reading back validate_2fold's summary JSONs (results_dump/summary_dump/*.json) for the scripts that
compare and collect runs: a file that is not one (cut short, another program's JSON) is named with why."""
from __future__ import annotations

from pathlib import Path

from iti.errors import UsageError
from iti.files import read_json

REMEDY = "give the files validate_2fold writes to results_dump/summary_dump/"
# What every summary holds, and of which JSON type; a complete one also holds its final metrics.
_FIELDS = {"config": dict, "resolved": dict, "folds": list, "complete": bool}


def read_summary(path: str | Path) -> dict:
    """The record of one validate_2fold run; UsageError naming the file and what is wrong with it."""
    record = read_json(path, "validate_2fold summary", REMEDY)
    problem = _problem(record)
    if problem:
        raise UsageError(f"{path} is not a validate_2fold summary JSON ({problem}); {REMEDY}")
    return record


def _problem(record) -> str | None:
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    wrong = [key for key, kind in _FIELDS.items() if not isinstance(record.get(key), kind)]
    if wrong:
        return f"{', '.join(wrong)} missing or of the wrong type"
    if not record["complete"]:
        return None
    final = record.get("final")
    if not isinstance(final, dict) or not all(_is_number(v) or v is None for v in final.values()):
        return "complete, but its final metrics are not numbers"
    resolved, config = record["resolved"], record["config"]
    if not (isinstance(resolved.get("method"), str) and isinstance(resolved.get("intervenes"), bool)):
        return "complete, but its resolved method is missing"
    if not all(_is_number(config.get(key)) or _is_number_list(config.get(key)) for key in ("num_heads", "alpha")):
        return "complete, but its K or alpha is missing"
    if not all(_is_fold(fold) for fold in record["folds"]):
        return "complete, but a fold lacks its answer file, test questions or results"
    return None


def _is_fold(fold) -> bool:
    """A fold entry as the readers of its answers need it (iti.evaluation.read_fold_answers)."""
    return (isinstance(fold, dict) and isinstance(fold.get("files"), dict)
            and isinstance(fold["files"].get("answers"), str) and isinstance(fold.get("test"), list)
            and isinstance(fold.get("results"), dict))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_number_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_number(v) for v in value)
