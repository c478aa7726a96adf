"""What identifies a run or a feature set (docs/method.md §10): each option field's metadata declares its role, and
names, hashes, grouping and resume follow from the roles. NUMBERS changes every run's numbers (model, dtype, data,
seed, metrics); SHIFTS changes them only through the head shifts (features, heads, directions, α), so an unshifted
baseline does not depend on it; EXECUTION changes only how or where the work runs (batch size, device, folders).
An identity is every NUMBERS and SHIFTS field with its value as resolved (a model name, `--dtype auto`, a data file,
a folder of features enter as what they resolved to), so two runs that could hold different numbers never share one.
Standard library only (the CLI reads the roles before torch is imported).
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
from typing import Any, Iterable, Mapping


class Role(enum.Enum):
    NUMBERS = "numbers"
    SHIFTS = "shifts"
    EXECUTION = "execution"


IDENTITY_ROLES = (Role.NUMBERS, Role.SHIFTS)


def identity_fields(config_cls, roles: Iterable[Role] = IDENTITY_ROLES) -> tuple[str, ...]:
    """The fields of these roles, in declaration order."""
    wanted = set(roles)
    return tuple(f.name for f in dataclasses.fields(config_cls) if f.metadata["role"] in wanted)


def flagged_fields(config_cls, flag: str) -> tuple[str, ...]:
    """The fields whose metadata sets `flag`: "split" (they decide which questions each fold trains, validates and
    tests on), "named" (spelled out in readable file names; the rest enter through the hash), "location" or
    "choice_only" (they change which scored setting a selection chooses, never a score)."""
    return tuple(f.name for f in dataclasses.fields(config_cls) if f.metadata.get(flag, False))


# Each part of a readable name as file names spell it. A part is one named field, or for the model and the method
# two: the model is `{model_prefix}{model_name}`, the method the word its two flags choose.
NAME_PARTS = {"model": "{}", "method": "_{}", "dataset_name": "_{}", "seed": "_seed_{}", "num_heads": "_top_{}_heads",
              "alpha": "_alpha_{}", "limit": "_limit_{}"}
PART_FIELDS = {"model": ("model_prefix", "model_name"), "method": ("use_center_of_mass", "use_random_dir")}
# The parts of a run's or a bake's name, in order (the public workflow's names, then the hash).
RUN_NAME = ("model", "dataset_name", "seed", "num_heads", "alpha", "limit")
# A sweep table's: the options that select its runs.
TABLE_NAME = ("model", "method", "dataset_name", "limit", "seed")
# A sweep log's label, as the sweep scripts have always named their logs.
LOG_LABEL = ("model", "alpha", "num_heads", "seed")
LOG_SPELLING = {**NAME_PARTS, "alpha": "_a{}", "num_heads": "_k{}"}


def named_values(options) -> dict[str, Any]:
    """The parts of names that `options` (an options dataclass) declares named, each as names spell its value: the
    dataset only for a --dataset_path set (TruthfulQA runs keep the public names)."""
    named = set(flagged_fields(type(options), "named"))
    values = {part: getattr(options, part) for part in NAME_PARTS if part in named}
    if named >= set(PART_FIELDS["model"]):
        values["model"] = options.output_name
    if named >= set(PART_FIELDS["method"]):
        values["method"] = options.method
    if "dataset_name" in values and not options.custom:
        del values["dataset_name"]
    return values


def readable_name(named, parts: Iterable[str] = RUN_NAME, spelling: Mapping[str, str] = NAME_PARTS) -> str:
    """`parts` of a name, in order, from an options object's named fields (`named_values`) or from those values
    given as a mapping; a part without a value (None, or not named) is left out. Several values (a grid of K or
    α) are joined with `-`; a number is written with `:g` (α 15.0 -> "15": the public int(α) made sweeps over
    fractional α collide); a string as it is (a glob's `*`, a value as the user typed it)."""
    values = named if isinstance(named, Mapping) else named_values(named)
    return "".join(spelling[part].format(spelled(values[part])) for part in parts if values.get(part) is not None)


def spelled(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "-".join(map(spelled, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def json_value(value: Any) -> Any:
    """Tuples as lists, so a value read back from JSON compares equal to the one written."""
    return json.loads(json.dumps(value))


def identity(config, resolved: Mapping[str, Any] | None = None, names: Iterable[str] | None = None) -> dict[str, Any]:
    """{field: value} over `names` (default: every NUMBERS and SHIFTS field), each as resolved where `resolved` says."""
    resolved = resolved or {}
    names = identity_fields(type(config)) if names is None else names
    added = added_defaults(type(config))
    values = {name: json_value(resolved[name] if name in resolved else getattr(config, name)) for name in names}
    return {name: value for name, value in values.items() if name not in added or value != added[name]}


def added_defaults(config_cls) -> dict[str, Any]:
    """The options added after runs were recorded (metadata `added`) with their defaults: an identity leaves such an
    option out while it holds its default (a record made before it lacks it), so those runs keep their names."""
    return {f.name: json_value(f.default) for f in dataclasses.fields(config_cls) if f.metadata.get("added", False)}


def declared(record: Mapping[str, Any], config_cls) -> dict[str, Any]:
    """The identity fields of a config as written in a record (`dataclasses.asdict`), without the locations (paths
    and sources whose content only a run resolves): what a sweep can compare without loading anything."""
    locations, added = set(flagged_fields(config_cls, "location")), added_defaults(config_cls)
    values = {name: json_value(record.get(name, added.get(name))) for name in identity_fields(config_cls)
              if name not in locations}
    return {name: value for name, value in values.items() if name not in added or value != added[name]}


def without(values: Mapping[str, Any], config_cls, roles: Iterable[Role] = (), names: Iterable[str] = ()) -> dict:
    """`values` less the fields of these roles and these names: what runs compared on the rest share."""
    dropped = set(identity_fields(config_cls, roles)) | set(names)
    return {name: value for name, value in values.items() if name not in dropped}


def digest(value: Any) -> str:
    """sha256 (hex) of a JSON-able value, keys sorted, so equal values give equal digests anywhere."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def short_digest(value: Any) -> str:
    """The first 8 hex digits of `digest`: what file names carry."""
    return digest(value)[:8]
