"""Pieces shared by the command-line scripts: common flags and the model/feature naming they imply."""
from __future__ import annotations

import argparse


def add_model_args(parser: argparse.ArgumentParser, default_model: str = "smollm2_135M_instruct") -> None:
    parser.add_argument("--model_name", default=default_model, help="registry name; with --model_path it only names outputs")
    parser.add_argument("--model_prefix", default="", help="prefix added to --model_name, e.g. local_ or honest_")
    parser.add_argument("--model_path", default=None, help="hub id, local model folder or .gguf file (overrides the registry)")
    parser.add_argument("--device", default="auto", help="auto (all GPUs, else CPU), cpu, cuda, cuda:N or a GPU index")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--trust_remote_code", action="store_true", help="allow the model's own code from the hub")


def output_model_name(args: argparse.Namespace) -> str:
    return f"{args.model_prefix}{args.model_name}"


def run_main(main) -> None:
    """Run a script's main with bad input turned into one line on stderr and exit code 2."""
    from iti.errors import exit_on_usage_error

    with exit_on_usage_error():
        main()
