"""Command lines generated from the option dataclasses of iti.config, with one-line errors. Standard library only,
so a script answers `--help` and rejects a bad flag before it imports torch."""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import typing
from typing import Any, Callable, TypeVar

from iti.errors import exit_on_usage_error, print_error

Config = TypeVar("Config")
# What argparse takes for a negative number rather than an option: its own -1 and -0.5, and scientific notation
# (`--alpha -1e3`), which it would otherwise refuse as an unknown option.
NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$|^-(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
INTERRUPTED = "interrupted; the files finished before are kept, and the ones being written were removed"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with bad input answered in one line (what was wrong, where to look) and exit code 2, negative
    numbers in scientific notation taken as values, and `--check_args`: parse, run `check` on the values (what
    it returns is what parse_args returns), then exit 0 without doing the work."""

    def __init__(self, description: str | None = None, check: Callable[[argparse.Namespace], Any] | None = None,
                 **kwargs):
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        # argparse's own pattern (a private attribute it reads in 3.11-3.13); tests/test_cli.py fails if it stops.
        self._negative_number_matcher = NEGATIVE_NUMBER
        self.check = check
        self.add_argument("--check_args", action="store_true",
                          help="only check the arguments: exit 0 if they are usable, else one line and exit 2")

    def error(self, message: str) -> typing.NoReturn:
        print_error(f"{message}; see `{self.prog} --help`")
        sys.exit(2)

    def parse_args(self, args=None, namespace=None):
        values = super().parse_args(args, namespace)
        check_only = vars(values).pop("check_args")
        checked = self.check(values) if self.check is not None else values
        if check_only:
            print("arguments ok")
            sys.exit(0)
        return checked


def build_parser(config_cls: type[Config], description: str | None = None,
                 several: str | None = None) -> ArgumentParser:
    """A parser whose parse_args returns the config, checked (config.check()); with `several`, the name of a field,
    that flag takes one or more values and parse_args returns a list of checked configs, one per value."""
    def check(values: argparse.Namespace):
        if several is None:
            return _checked_config(config_cls, vars(values))
        return [_checked_config(config_cls, {**vars(values), several: value})
                for value in dict.fromkeys(getattr(values, several))]

    parser = ArgumentParser(description, check=check)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        positional = f.metadata.get("positional", False)
        flags = [f.name] if positional else [f"--{f.name}", *f.metadata.get("aliases", ())]
        kwargs = {"help": f.metadata["help"]} if positional else {"dest": f.name, "default": f.default,
                                                                  "help": f.metadata["help"]}
        hint = hints[f.name]
        # X of `X | None` and of `tuple[X, ...]`
        value_type = next((arg for arg in typing.get_args(hint) if arg not in (type(None), ...)), hint)
        if value_type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        else:
            several_values = f.name == several
            kwargs.update(type=value_type, nargs="+" if typing.get_origin(hint) is tuple or several_values else None,
                          choices=f.metadata.get("choices"))
            if several_values:
                kwargs["default"] = [f.default]
        parser.add_argument(*flags, **kwargs)
    return parser


def _checked_config(config_cls: type[Config], values: dict) -> Config:
    for name, value in values.items():
        if isinstance(value, list):  # nargs="+": `--metrics mc ce` and `--metrics mc,ce` both work
            parts = (item.split(",") if isinstance(item, str) else [item] for item in value)
            values[name] = tuple(part for split in parts for part in split if part != "")
    config = config_cls(**values)
    config.check()
    return config


def parse_config(config_cls: type[Config], argv: list[str] | None = None, description: str | None = None) -> Config:
    """The config a command line asks for, checked (config.check()); `--check_args` stops here with exit 0."""
    return build_parser(config_cls, description).parse_args(argv)


def parse_configs(config_cls: type[Config], several: str, argv: list[str] | None = None,
                  description: str | None = None) -> list[Config]:
    """One checked config per value of the flag `several` (`--dataset_name a b`: two configs, the other options
    the same), repeated values once; `--check_args` checks them all."""
    return build_parser(config_cls, description, several).parse_args(argv)


def run_main(main) -> None:
    """Run a script's main with bad input turned into one line on stderr and exit code 2, and Ctrl-C into one
    line and exit code 130 (the temporaries of what was being written are removed on the way out)."""
    try:
        with exit_on_usage_error():
            main()
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
