"""Command lines generated from the option dataclasses of iti.config, with one-line errors.

Imports only the standard library and iti.config, so a script parses its arguments, answers `--help`
and rejects a bad flag before it imports torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import TypeVar

Config = TypeVar("Config")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with bad input answered in one line (what was wrong, where to look) and exit code 2."""

    def __init__(self, description: str | None = None, **kwargs):
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        print(f"error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def _value_type(annotation):
    """(element type, is_tuple) of a field's annotation: `int | None` -> int, `tuple[str, ...]` -> str."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


def build_parser(config_cls: type, description: str | None = None) -> ArgumentParser:
    parser = ArgumentParser(description)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        flags = [f"--{f.name}", *f.metadata.get("aliases", ())]
        kwargs = {"dest": f.name, "default": f.default, "help": f.metadata.get("help")}
        value_type, is_tuple = _value_type(hints[f.name])
        if value_type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        else:
            kwargs["type"] = value_type
            if is_tuple:
                kwargs["nargs"] = "+"
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(*flags, **kwargs)
    parser.add_argument("--check_args", action="store_true",
                        help="only check the arguments: exit 0 if they are usable, else one line and exit 2")
    return parser


def parse_config(config_cls: type[Config], argv: list[str] | None = None, description: str | None = None) -> Config:
    """The config a command line asks for, checked (config.check()); `--check_args` stops here with exit 0."""
    values = vars(build_parser(config_cls, description).parse_args(argv))
    check_only = values.pop("check_args")
    hints = typing.get_type_hints(config_cls)
    for name, value in values.items():
        value_type, is_tuple = _value_type(hints[name])
        if is_tuple and value_type is str:
            # `--metrics mc ce` and `--metrics mc,ce` both work.
            values[name] = tuple(part for item in value for part in item.split(",") if part)
        elif is_tuple:
            values[name] = tuple(value)
    config = config_cls(**values)
    config.check()
    if check_only:
        print("arguments ok")
        sys.exit(0)
    return config


def run_main(main) -> None:
    """Run a script's main with bad input turned into one line on stderr and exit code 2."""
    from iti.errors import exit_on_usage_error

    with exit_on_usage_error():
        main()
