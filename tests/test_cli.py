"""The command lines generated from iti.config: every field is a flag with its default, types and
defaults round-trip, errors are one line with exit code 2, and no script imports torch to parse."""
import dataclasses
import subprocess
import sys

import pytest

from iti.cli import build_parser, parse_config, parse_configs
from iti.errors import UsageError
from iti.config import ActivationsConfig, EditConfig, HeadAccuracyConfig, ValidationConfig
from tests.conftest import REPO_ROOT

CONFIGS = (ActivationsConfig, ValidationConfig, EditConfig, HeadAccuracyConfig)
SCRIPTS = {
    ActivationsConfig: "get_activations/get_activations.py",
    ValidationConfig: "validation/validate_2fold.py",
    EditConfig: "validation/edit_weight.py",
    HeadAccuracyConfig: "validation/plot_head_accuracies.py",
}


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda c: c.__name__)
def test_no_arguments_give_the_dataclass_defaults(config_cls):
    assert parse_config(config_cls, []) == config_cls()


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_is_a_flag_with_help(config_cls):
    parser = build_parser(config_cls)
    flags = {option for action in parser._actions for option in action.option_strings}
    for f in dataclasses.fields(config_cls):
        assert f"--{f.name}" in flags
        assert f.metadata.get("help"), f"{config_cls.__name__}.{f.name} has no help text"


def test_values_are_typed_as_the_fields():
    cfg = parse_config(ValidationConfig, [
        "--alpha", "2.5", "--num_heads", "8", "--limit", "40", "--metrics", "mc,ce", "kl",
        "--use_center_of_mass", "--no-sequential_loading", "--judge_name", "judge/folder", "--model_path", "org/model"])
    expected = dataclasses.replace(
        ValidationConfig(), alpha=2.5, num_heads=8, limit=40, metrics=("mc", "ce", "kl"), use_center_of_mass=True,
        sequential_loading=False, judge_model="judge/folder", model_path="org/model")
    assert cfg == expected
    assert cfg.method == "center_of_mass" and cfg.output_name == "smollm2_135M_instruct"


@pytest.mark.parametrize("argv, phrase", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--num_heads", "x"], "invalid int value"),
    (["--dtype", "float8"], "invalid choice"),
    (["--metrics", "mc", "bleu"], "unknown metric bleu"),
    (["--use_center_of_mass", "--use_random_dir"], "exclude each other"),
    (["--limit", "1"], "fewer questions than the 2 folds"),
    (["--val_ratio", "1.5"], "strictly between 0 and 1"),
])
def test_bad_input_is_one_line_and_exit_2(argv, phrase):
    result = subprocess.run([sys.executable, SCRIPTS[ValidationConfig], *argv, "--check_args"], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert phrase in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_flag_given_several_values_gives_one_config_per_value():
    argv = ["--limit", "3", "--dataset_name", "tqa_mc2", "tqa_gen_end_q", "tqa_mc2", "--batch_size", "4"]
    configs = parse_configs(ActivationsConfig, "dataset_name", argv)
    assert configs == [parse_config(ActivationsConfig, ["--limit", "3", "--batch_size", "4", "--dataset_name", name])
                       for name in ("tqa_mc2", "tqa_gen_end_q")]
    assert parse_configs(ActivationsConfig, "dataset_name", []) == [ActivationsConfig()]
    with pytest.raises(UsageError, match="unknown dataset 'tqa_mc3'"):
        parse_configs(ActivationsConfig, "dataset_name", ["--dataset_name", "tqa_mc2", "tqa_mc3"])


def test_check_args_checks_every_value_of_a_several_valued_flag():
    script = REPO_ROOT / SCRIPTS[ActivationsConfig]
    good, bad = (subprocess.run([sys.executable, str(script), "--dataset_name", "tqa_mc2", last, "--check_args"],
                                cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
                 for last in ("tqa_gen_end_q", "tqa_mc3"))
    assert (good.returncode, good.stdout.strip()) == (0, "arguments ok")
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: unknown dataset 'tqa_mc3'")


def test_edit_weight_refuses_both_direction_flags_like_validate():
    for config_cls in (ValidationConfig, EditConfig):
        with pytest.raises(UsageError, match="exclude each other"):
            parse_config(config_cls, ["--use_center_of_mass", "--use_random_dir"])


@pytest.mark.parametrize("config_cls", CONFIGS, ids=lambda c: c.__name__)
def test_scripts_parse_without_importing_torch(config_cls):
    """`--check_args` runs the script's parsing and checks; torch must not be imported by then."""
    probe = (f"import runpy, sys; sys.argv = [{SCRIPTS[config_cls]!r}, '--check_args']\n"
             f"try:\n    runpy.run_path({SCRIPTS[config_cls]!r}, run_name='__main__')\n"
             "except SystemExit as stop:\n    assert stop.code in (0, None), stop.code\n"
             "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


def test_negative_numbers_in_scientific_notation_are_values():
    cfg = parse_config(ValidationConfig, ["--alpha", "-1e3", "5", "-2.5E-1", "--num_heads", "8"])
    assert cfg.alpha == (-1000.0, 5.0, -0.25)


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    from iti.cli import run_main

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        run_main(interrupted)
    assert exit_info.value.code == 130
    err = capsys.readouterr().err
    assert err.startswith("interrupted; ") and len(err.strip().splitlines()) == 1
