"""The bundled GGUF's conversion with its metadata parsed once equals transformers' own round trip, byte for byte, and
records its files' digests, which a later load checks; a GGUF file cut short, a cache that is no folder, cannot be
written or has no room end in one line and leave nothing."""
import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

import gguf
import pytest

import iti
import iti.models as models
from iti.errors import UsageError
from iti.gguf_file import GGUFLayout, check_gguf_file
from tests.conftest import mounted_tmpfs


def converted(cache, monkeypatch):
    monkeypatch.setenv("ITI_CACHE", str(cache))
    folder = models.gguf_to_folder(models.bundled_gguf_path())
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.mark.slow
def test_parsing_once_changes_no_byte_and_the_record_catches_a_changed_one(tmp_path, monkeypatch):
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
    # The record lists every other file with the SHA-256 of its bytes (hashlib here), and a later load checks them.
    record = json.loads(once.pop(models.CONVERSION_RECORD))
    assert record == {name: hashlib.sha256(data).hexdigest() for name, data in once.items()}
    monkeypatch.setenv("ITI_CACHE", str(tmp_path / "once"))
    folder = models.gguf_to_folder(models.bundled_gguf_path())
    weights = folder / "model.safetensors"
    flipped = bytearray(weights.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    weights.write_bytes(bytes(flipped))
    with pytest.raises(UsageError, match=rf"^converted model file {re.escape(str(weights))} is not the file that was "
                                         rf"written there: .*; remove {re.escape(str(folder))} so that"):
        models.gguf_to_folder(models.bundled_gguf_path())
    assert weights.read_bytes() == bytes(flipped)


@pytest.fixture(scope="module")
def bundled_gguf():
    """The bundled GGUF and what the gguf package reads of its tensors: where their data ends, how many weights."""
    path = models.bundled_gguf_path()
    reader = gguf.GGUFReader(path)
    return path, reader.data_offset, max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), \
        sum(int(t.n_elements) for t in reader.tensors)


def test_the_header_walk_finds_the_layout_gguf_reads(bundled_gguf):
    path, data_start, data_end, weights = bundled_gguf
    assert check_gguf_file(path) == GGUFLayout(path.stat().st_size, data_start, data_end, weights)
    assert data_end == path.stat().st_size


def cut_copy(source: Path, target: Path, length: int, header: int) -> Path:
    """`source`'s first `header` bytes (at most `length`), then zeros up to `length` (a sparse file: cheap)."""
    with open(source, "rb") as handle:
        target.write_bytes(handle.read(min(header, length)))
    os.truncate(target, length)
    return target


CUTS = {"inside its header": lambda size: 1000, "in half": lambda size: size // 2, "one byte short": lambda size: size - 1}


@pytest.mark.parametrize("cut", CUTS)
def test_a_truncated_gguf_is_one_line_and_leaves_nothing_in_the_cache(bundled_gguf, cut, tmp_path, monkeypatch):
    path, data_start, data_end, _ = bundled_gguf
    length = CUTS[cut](data_end)
    cut_file = cut_copy(path, tmp_path / "model.gguf", length, data_start + 4096)
    monkeypatch.setenv("ITI_CACHE", str(tmp_path / "cache"))
    where = ("ends inside its header" if length < data_start
             else f"has {length} bytes, its tensor table needs {data_end}")
    expected = f"truncated or not a GGUF file: {cut_file} {where}; give the whole file (download or copy it again)"
    for load in (lambda: check_gguf_file(cut_file), lambda: models.gguf_to_folder(cut_file),
                 lambda: iti.load_model(str(cut_file), device="cpu")):
        with pytest.raises(UsageError) as refused:
            load()
        assert str(refused.value) == expected
    assert not (tmp_path / "cache").exists()


CACHES = {
    "set empty": (lambda root: "", "ITI_CACHE is set but empty; set ITI_CACHE to a folder for converted models"),
    "a file": (lambda root: str(root / "notes.txt"), "ITI_CACHE {root}/notes.txt is not a folder ({root}/notes.txt is "
                                                     "a file); set ITI_CACHE to a folder"),
    "under a file": (lambda root: str(root / "notes.txt" / "cache"),
                     "ITI_CACHE {root}/notes.txt/cache is not a folder ({root}/notes.txt is a file)"),
}


@pytest.mark.parametrize("cache", CACHES)
def test_a_cache_that_is_no_folder_is_one_line_and_writes_nothing(cache, tmp_path, monkeypatch):
    """`ITI_CACHE=''` would put the conversion (half a gigabyte) in the current folder."""
    value, phrase = CACHES[cache]
    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ITI_CACHE", value(tmp_path))
    with pytest.raises(UsageError, match=re.escape(phrase.format(root=tmp_path))):
        models.gguf_to_folder(models.bundled_gguf_path())
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_read_only_cache_is_one_line(tmp_path, monkeypatch):
    with mounted_tmpfs(tmp_path / "read_only", "ro,size=1m") as disk:
        monkeypatch.setenv("ITI_CACHE", str(disk / "iti"))
        with pytest.raises(UsageError) as refused:
            models.gguf_to_folder(models.bundled_gguf_path())
        assert str(refused.value) == (f"ITI_CACHE {disk}/iti/gguf: cannot write in {disk} (Read-only file system); "
                                      "give a folder you can write to")


def test_a_cache_without_room_is_refused_before_writing(bundled_gguf, tmp_path, monkeypatch):
    _, _, _, weights = bundled_gguf
    with mounted_tmpfs(tmp_path / "small_disk", "size=3m") as disk:
        monkeypatch.setenv("ITI_CACHE", str(disk))
        with pytest.raises(UsageError) as refused:
            models.gguf_to_folder(models.bundled_gguf_path())
        needed = re.search(r"needs about (\d+) MiB in (.*), 3 MiB are free there; free some space or set ITI_CACHE",
                           str(refused.value))
        assert needed and needed[2] == f"{disk}/gguf", str(refused.value)
        assert int(needed[1]) >= 4 * weights / 2**20  # the float32 weights alone
        assert list(disk.iterdir()) == []


@pytest.mark.slow
def test_a_disk_that_fills_during_the_conversion_is_one_line_and_keeps_nothing(tmp_path, monkeypatch):
    """Room enough when checked, none later (another writer took it): what safetensors raises becomes one line."""
    monkeypatch.setattr(models, "check_conversion_space", lambda *args: None)
    with mounted_tmpfs(tmp_path / "small_disk", "size=32m") as disk:
        monkeypatch.setenv("ITI_CACHE", str(disk))
        with pytest.raises(UsageError, match=f"the conversion of .* could not be written to {disk}/gguf .*No space "
                                             "left on device.*; it was removed: free some space there"):
            models.gguf_to_folder(models.bundled_gguf_path())
        assert list((disk / "gguf").iterdir()) == []
