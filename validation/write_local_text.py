"""Write a local stand-in for OpenWebText when the hub is out of reach: real English prose that ships
with Python itself (the language reference behind `help()`), one paragraph per blank-line block, the
format `validate_2fold.py --owt_path` reads. CE and KL on it are comparable between runs of this
project, not with published OpenWebText figures. An existing --output is replaced only when it holds
this same text.

python validation/write_local_text.py --output features/python_reference_text.txt
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from iti.cli import parse_config, run_main  # noqa: E402
from iti.local_text import LocalTextConfig  # noqa: E402


def main() -> None:
    cfg = parse_config(LocalTextConfig, description=__doc__)

    from iti.files import write_text
    from iti.local_text import reference_paragraphs, reference_text

    paragraphs = reference_paragraphs(cfg.min_chars)
    output = write_text(cfg.output, reference_text(paragraphs))
    print(f"{len(paragraphs)} paragraphs -> {output}")


if __name__ == "__main__":
    run_main(main)
