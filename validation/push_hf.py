"""Upload a baked model folder or a head-shift folder to the Hugging Face hub, with a model card.

The kind is detected: a folder from validation/edit_weight.py (config.json, safetensors weights
and head_shifts.*) is pushed as a model that loads with AutoModelForCausalLM; a folder holding
only head_shifts.* is pushed as an artifact to apply to its base model at run time. A README.md
model card (base model, heads, α, data, seed, how to load) is generated and replaces any README.
Only the files the bake wrote (the list its bake.json records, each checked against its SHA-256) or
the head-shift (and pyvene export) files go; every other file is left out and named, and a folder
holding a symbolic link is refused.

python validation/push_hf.py validation/results_dump/edited_models_dump/llama2_chat_7B_seed_42_top_48_heads_alpha_15_HASH \\
    --repo_id you/honest_llama2_chat_7B --private
python validation/push_hf.py FOLDER --repo_id you/name --dry_run     # show files and card, no network
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.config import PushConfig  # noqa: E402


def main() -> None:
    args = parse_config(PushConfig, description=__doc__)
    from iti.publish import prepare_upload, upload

    prepared = prepare_upload(Path(args.folder), args.repo_id)
    if args.dry_run:
        print(prepared.dry_run_report(args.repo_id, args.private))
        return
    if prepared.left_out:
        print(prepared.left_out_line())
    url = upload(prepared, args.repo_id, args.private)
    print(f"uploaded {len(prepared.files) + 1} files to {args.repo_id}: {url}")


if __name__ == "__main__":
    run_main(main)
