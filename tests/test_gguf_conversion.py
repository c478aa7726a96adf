"""The bundled GGUF's conversion with its metadata parsed once equals transformers' own round trip, byte for byte."""
import contextlib

import gguf
import pytest

import iti.models as models


def converted(cache, monkeypatch):
    monkeypatch.setenv("ITI_CACHE", str(cache))
    folder = models.gguf_to_folder(models.bundled_gguf_path())
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.slow
def test_parsing_once_changes_no_byte_of_the_converted_folder(tmp_path, monkeypatch):
    parses = []

    class CountedReader(gguf.GGUFReader):
        def __init__(self, *args, **kwargs):
            parses.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", CountedReader)
    once = converted(tmp_path / "once", monkeypatch)
    assert len(parses) == 1 and gguf.GGUFReader is CountedReader
    parses.clear()
    monkeypatch.setattr(models, "gguf_parsed_once", contextlib.nullcontext)
    assert converted(tmp_path / "round_trip", monkeypatch) == once
    assert len(parses) > 1  # what parsing once saves: transformers reads the file again for each part
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(once)
