"""A local stand-in for OpenWebText: real English prose that ships with Python itself (the language reference
behind `help()`), one paragraph per blank-line block, the format `validate_2fold.py --owt_path` reads; and the
options of validation/write_local_text.py, which writes it. Standard library only (the CLI reads it before
anything heavy is imported)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pydoc_data.topics

from iti.errors import UsageError
from iti.options import EXECUTION, NUMBERS, Options, option

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


def reference_text(paragraphs: list[str]) -> str:
    """The file's content: the paragraphs, a blank line between them."""
    return "\n\n".join(paragraphs) + "\n"


@dataclass
class LocalTextConfig(Options):
    output: str = option("features/python_reference_text.txt", "the text file to write", EXECUTION, file="write")
    min_chars: int = option(MIN_CHARS, "shortest paragraph kept", NUMBERS, minimum=1)

    def _check(self) -> None:
        super()._check()
        paragraphs = reference_paragraphs(self.min_chars)
        if not paragraphs:
            longest = max(map(len, reference_paragraphs(1)))
            raise UsageError(f"--min_chars {self.min_chars}: no paragraph of the text is that long, so there is "
                             f"nothing to write (the longest has {longest} characters); use --min_chars {longest} "
                             "or less")
        output = Path(self.output).expanduser()
        if output.is_file() and not _holds(output, reference_text(paragraphs)):
            raise UsageError(f"--output {self.output} exists and holds other text; it is kept: give another path")


def _holds(path: Path, text: str) -> bool:
    """Whether the file holds exactly `text` (what this script writes, so replacing it loses nothing)."""
    try:
        return path.read_bytes() == text.encode("utf-8")
    except OSError:
        return False
