"""Command lines generated from the option dataclasses of iti.config, with one-line errors.

Imports only the standard library and iti.config, so a script parses its arguments, answers `--help`
and rejects a bad flag before it imports torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import types
import typing
from typing import Any, Callable, TypeVar

Config = TypeVar("Config")
# argparse takes every argument that starts with "-" for an option unless it looks like -1 or -0.5, so
# `--alpha -1e3` would lose its value. Such a number reaches argparse behind a leading space (no option
# starts with one) and loses the space again before it is converted.
NEGATIVE_SCIENTIFIC = re.compile(r"-(\d+\.?\d*|\.\d+)[eE][+-]?\d+")
VALUE_MARK = " "
INTERRUPTED = "interrupted; the files finished before are kept, and the ones being written were removed"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with bad input answered in one line (what was wrong, where to look) and exit code 2, negative
    numbers in scientific notation taken as values, and `--check_args`: parse, run `check` on the values (what
    it returns is what parse_args returns), then exit 0 without doing the work."""

    def __init__(self, description: str | None = None, check: Callable[[argparse.Namespace], Any] | None = None,
                 **kwargs):
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        self.check = check
        self.add_argument("--check_args", action="store_true",
                          help="only check the arguments: exit 0 if they are usable, else one line and exit 2")

    def error(self, message: str) -> typing.NoReturn:
        from iti.errors import print_error

        print_error(f"{message}; see `{self.prog} --help`")
        sys.exit(2)

    def add_argument(self, *args, **kwargs):
        if kwargs.get("action", "store") in ("store", "append"):
            kwargs["type"] = _unmarked(kwargs.get("type", str))
        return super().add_argument(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        marked = [VALUE_MARK + arg if NEGATIVE_SCIENTIFIC.fullmatch(arg) else arg for arg in args]
        return super().parse_known_args(marked, namespace)

    def parse_args(self, args=None, namespace=None):
        values = super().parse_args(args, namespace)
        check_only = vars(values).pop("check_args")
        checked = self.check(values) if self.check is not None else values
        if check_only:
            print("arguments ok")
            sys.exit(0)
        return checked


def _unmarked(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """`convert` of the argument as the user wrote it (without the mark parse_known_args may have added)."""
    def value(text: str):
        original = text[len(VALUE_MARK):] if text.startswith(VALUE_MARK) and NEGATIVE_SCIENTIFIC.fullmatch(
            text[len(VALUE_MARK):]) else text
        try:
            return convert(original)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"invalid {value.__name__} value: {original!r}") from None

    value.__name__ = getattr(convert, "__name__", "argument")
    return value


def _value_type(annotation):
    """(element type, is_tuple) of a field's annotation: `int | None` -> int, `tuple[str, ...]` -> str."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    if typing.get_origin(annotation) is tuple:
        return typing.get_args(annotation)[0], True
    return annotation, False


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
        kwargs = {"help": f.metadata.get("help")} if positional else {"dest": f.name, "default": f.default,
                                                                      "help": f.metadata.get("help")}
        value_type, is_tuple = _value_type(hints[f.name])
        if value_type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction if f.default else "store_true"
        else:
            kwargs["type"] = value_type
            if is_tuple or f.name == several:
                kwargs["nargs"] = "+"
            if f.name == several:
                kwargs["default"] = [f.default]
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(*flags, **kwargs)
    return parser


def _checked_config(config_cls: type[Config], values: dict) -> Config:
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
    from iti.errors import exit_on_usage_error

    try:
        with exit_on_usage_error():
            main()
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
