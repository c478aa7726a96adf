"""Every option field declares its role, and the run's identity follows the roles: changing any field that can
change a number changes every file name of a run; changing an execution setting changes none."""
from __future__ import annotations

import dataclasses

import pytest

from iti import config
from iti.identity import IDENTITY_ROLES, Role, identity_fields, without
from iti.runs import Run

OPTION_CLASSES = [cls for cls in vars(config).values()
                  if isinstance(cls, type) and dataclasses.is_dataclass(cls) and issubclass(cls, config.Options)]
# What validate_2fold resolves these fields to (iti.validate.set_up): the test varies the resolved value.
RESOLVED = {"model_path": "m0", "dtype": "float32", "dataset_path": None, "tqa_path": "items0", "owt_path": "owt0",
            "features_dir": {"probing": "p0", "tuning": "t0"}, "judge_model": "judge0", "info_model": "info0"}


def test_every_field_of_every_options_class_has_a_role():
    assert {cls.__name__ for cls in OPTION_CLASSES} >= {"ActivationsConfig", "ValidationConfig", "EditConfig",
                                                       "HeadAccuracyConfig", "ExportConfig"}
    for cls in OPTION_CLASSES:
        for field in dataclasses.fields(cls):
            assert isinstance(field.metadata.get("role"), Role), f"{cls.__name__}.{field.name} has no role"


def another_value(field: dataclasses.Field, value):
    """A different valid value of the field's type."""
    choices = field.metadata.get("choices")
    if choices:
        items = value if isinstance(value, tuple) else (value,)
        other = next(c for c in choices if c not in items)
        return (other,) if isinstance(value, tuple) else other
    if isinstance(value, bool):
        return not value
    if isinstance(value, tuple):
        return value + (value[0] + 1,) if value and not isinstance(value[0], str) else ("mc",)
    if isinstance(value, int):
        return value + 3
    if isinstance(value, float):
        return value / 2 + 0.05
    if value is None:
        return {"limit": 6, "instruction_prompt": "none", "max_kl": 0.5, "activations_dataset": "tqa_gen",
                "model_path": "/elsewhere"}.get(field.name, "something")
    return value + "x"


def test_each_number_changing_field_changes_every_file_name():
    base = config.ValidationConfig(limit=8)
    run = Run.resolve(base, RESOLVED)
    files = lambda r: [r.name, r.summary_path, r.fold_file(0, "answer_dump"), r.fold_file(1, "head_shifts_dump", ""),
                       r.fold_file(0, "probe_report", "_heads.csv")]
    reference = files(run)
    for field in dataclasses.fields(config.ValidationConfig):
        if field.metadata["role"] not in IDENTITY_ROLES:
            continue
        if field.name in RESOLVED:
            changed = Run.resolve(base, {**RESOLVED, field.name: "other"})
        else:
            changed = Run.resolve(dataclasses.replace(base, **{field.name: another_value(field, getattr(base, field.name))}),
                                  RESOLVED)
        assert all(a != b for a, b in zip(files(changed), reference)), field.name


def test_execution_settings_change_no_file_name():
    base = config.ValidationConfig(limit=8)
    for field in dataclasses.fields(config.ValidationConfig):
        if field.metadata["role"] is Role.EXECUTION:
            other = dataclasses.replace(base, **{field.name: another_value(field, getattr(base, field.name))})
            if field.name == "results_dir":
                assert Run.resolve(other, RESOLVED).name == Run.resolve(base, RESOLVED).name
            else:
                assert Run.resolve(other, RESOLVED).summary_path == Run.resolve(base, RESOLVED).summary_path, field.name


def test_split_files_change_with_what_fixes_the_folds_only():
    base = Run.resolve(config.ValidationConfig(limit=8), RESOLVED)
    assert Run.resolve(config.ValidationConfig(limit=8, val_ratio=0.3), RESOLVED).split_path(0, "train") != \
        base.split_path(0, "train")
    assert Run.resolve(config.ValidationConfig(limit=8, alpha=3.0), RESOLVED).split_path(0, "train") == \
        base.split_path(0, "train")


def test_repeats_and_baselines_share_what_the_roles_say():
    values = Run.resolve(config.ValidationConfig(limit=8, seed=1), RESOLVED).identity
    other_seed = Run.resolve(config.ValidationConfig(limit=8, seed=2), RESOLVED).identity
    baseline = Run.resolve(config.ValidationConfig(limit=8, seed=1, num_heads=0, use_center_of_mass=True),
                           {**RESOLVED, "features_dir": None}).identity
    cls = config.ValidationConfig
    assert without(values, cls, names=("seed",)) == without(other_seed, cls, names=("seed",))
    assert without(values, cls, (Role.SHIFTS,)) == without(baseline, cls, (Role.SHIFTS,))
    assert without(values, cls) != without(baseline, cls)
    assert set(identity_fields(cls, (Role.SHIFTS,))) >= {"num_heads", "alpha", "features_dir", "use_center_of_mass"}


@pytest.mark.parametrize("cls", [config.ActivationsConfig, config.HeadAccuracyConfig])
def test_other_scripts_declare_what_names_their_outputs(cls):
    assert {"model_name", "dataset_name", "limit"} <= set(f.name for f in dataclasses.fields(cls)
                                                         if f.metadata.get("named"))


def test_a_bakes_folder_changes_with_each_number_changing_field_and_with_no_execution_setting():
    from iti.bake import bake_dir, bake_identity

    resolved = {"model_path": "m0", "dtype": "float32", "features_dir": {"probing": "p0", "tuning": "t0"}}

    def folder(cfg, **other):
        values = {**resolved, **other}
        return bake_dir(cfg, bake_identity(cfg, values["model_path"], values["dtype"], values["features_dir"]))

    base = config.EditConfig(limit=8)
    for field in dataclasses.fields(config.EditConfig):
        if field.name in resolved:
            changed = folder(base, **{field.name: "other"})
        elif field.name in ("dataset_path", "tqa_path"):
            continue  # their items enter through the features' record ids
        else:
            changed = folder(dataclasses.replace(base, **{field.name: another_value(field, getattr(base, field.name))}))
        assert (changed != folder(base)) == (field.metadata["role"] in IDENTITY_ROLES), field.name


def test_every_named_field_is_a_part_of_names():
    from iti.identity import NAME_PARTS, PART_FIELDS, flagged_fields

    spelled = set(NAME_PARTS) | {name for fields in PART_FIELDS.values() for name in fields}
    for cls in OPTION_CLASSES:
        assert set(flagged_fields(cls, "named")) <= spelled, cls.__name__


def test_names_spell_the_named_settings_as_the_public_workflow_does():
    """Each name written out by hand: a run's, a --dataset_path run's, a bake's, a split file's, a sweep table's and a
    sweep log's."""
    from iti.collect import table_stem
    from iti.identity import LOG_LABEL, LOG_SPELLING, readable_name
    from iti.runs import RunFile, RunRecord, Resolved

    cfg = config.ValidationConfig(model_name="m", model_prefix="p_", num_heads=(16, 48), alpha=(0.0, 2.5), seed=3,
                                  limit=8, use_center_of_mass=True)
    assert readable_name(cfg) == "p_m_seed_3_top_16-48_heads_alpha_0-2.5_limit_8"
    assert readable_name(dataclasses.replace(cfg, dataset_path="mine.jsonl", dataset_name="my_set")) == \
        "p_m_my_set_seed_3_top_16-48_heads_alpha_0-2.5_limit_8"
    run = Run.resolve(cfg, RESOLVED)
    assert run.summary_path.name == f"{run.name}_com.json" and run.name.startswith("p_m_seed_3_top_16-48_heads_")
    assert run.split_path(1, "val").name.startswith("fold_1_val_seed_3_limit_8_")
    edit = config.EditConfig(model_name="m", num_heads=8, alpha=15.0, use_random_dir=True)
    assert readable_name(edit) == "m_seed_42_top_8_heads_alpha_15"  # a bake's folder spells no method
    collect = config.CollectConfig(model_name="m", use_center_of_mass=True, seed=2)
    record = RunRecord(config={"limit": 8}, identity={"seed": 2}, resolved=Resolved(method="x", intervenes=True),
                       folds=[], complete=True)
    assert table_stem(collect, [RunFile(Run.resolve(cfg, RESOLVED).summary_path, record)]).startswith(
        "m_center_of_mass_limit_8_seed_2_")
    assert readable_name({"model": "m", "alpha": "0.0", "num_heads": "4", "seed": None}, LOG_LABEL,
                         LOG_SPELLING) == "m_a0.0_k4"
