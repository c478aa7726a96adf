"""Write a local stand-in for OpenWebText when the hub is out of reach: real English prose that ships
with Python itself (the language reference behind `help()`), one paragraph per blank-line block, the
format `validate_2fold.py --owt_path` reads. CE and KL on it are comparable between runs of this
project, not with published OpenWebText figures.

python validation/write_local_text.py --output features/python_reference_text.txt
"""
import re
import sys
from pathlib import Path

import pydoc_data.topics

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import ArgumentParser, run_main  # noqa: E402
from iti.files import write_text  # noqa: E402

# The shortest paragraph kept; 128 tokens of prose need about 500 characters.
MIN_CHARS = 400


def reference_paragraphs(min_chars: int) -> list[str]:
    paragraphs = []
    for text in pydoc_data.topics.topics.values():
        for block in re.split(r"\n\s*\n", text):
            # Indented blocks are grammar rules and code samples; keep the prose.
            if block.startswith((" ", "\t")) or "*****" in block or "=====" in block:
                continue
            prose = " ".join(block.split())
            if len(prose) >= min_chars:
                paragraphs.append(prose)
    return paragraphs


def main() -> None:
    parser = ArgumentParser(__doc__)
    parser.add_argument("--output", default="features/python_reference_text.txt")
    parser.add_argument("--min_chars", type=int, default=MIN_CHARS, help="shortest paragraph kept")
    args = parser.parse_args()
    paragraphs = reference_paragraphs(args.min_chars)
    output = write_text(args.output, "\n\n".join(paragraphs) + "\n")
    print(f"{len(paragraphs)} paragraphs -> {output}")


if __name__ == "__main__":
    run_main(main)
