"""A GGUF file's layout (llama.cpp's format: magic, version, metadata, tensor table, then the aligned tensor data),
read with the standard library from its header alone: whether the file is as long as its tensor table says, and how
many weights it holds. A file cut short would otherwise fail deep inside the gguf package (an IndexError, a reshape
error) after seconds of parsing; this walk takes milliseconds, so --check_args can afford it."""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from iti.errors import UsageError

GGUF_MAGIC = b"GGUF"
# Metadata value types by their number in the format: the byte size of each fixed-size one; 8 is a string (a
# uint64 length, then the bytes), 9 an array (a uint32 element type, a uint64 count, then the elements).
_FIXED_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_ALIGNMENT_KEY = "general.alignment"
_DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class GGUFLayout:
    file_bytes: int
    data_start: int  # the header's length, padded to the alignment: mostly the vocabulary
    data_end: int    # where the last tensor's data ends: the length a whole file has at least
    weights: int     # elements of all tensors


class _CutShort(Exception):
    """The header claims bytes past the end of the file."""


class _Header:
    """Reads the header's fields in order from a memory map, in the byte order the version field shows."""

    def __init__(self, data: mmap.mmap):
        self.data, self.at = data, len(GGUF_MAGIC)
        self.order = "<" if struct.unpack_from("<I", data, self.at)[0] & 0xFFFF else ">"

    def skip(self, size: int) -> int:
        start, self.at = self.at, self.at + size
        if self.at > len(self.data):
            raise _CutShort
        return start

    def number(self, code: str) -> int:
        return struct.unpack_from(self.order + code, self.data, self.skip(struct.calcsize(code)))[0]

    def text(self) -> str:
        size = self.number("Q")
        return self.data[self.skip(size):self.at].decode("utf-8", errors="replace")

    def value(self, kind: int) -> int | None:
        """Step over one metadata value; an unsigned integer's value is returned (the alignment is one)."""
        if kind == _STRING:
            self.skip(self.number("Q"))
        elif kind == _ARRAY:
            element, count = self.number("I"), self.number("Q")
            if element in _FIXED_SIZES:
                self.skip(count * _FIXED_SIZES[element])
            else:
                for _ in range(count):
                    self.value(element)
        elif kind in (4, 10):
            return self.number("I" if kind == 4 else "Q")
        elif kind in _FIXED_SIZES:
            self.skip(_FIXED_SIZES[kind])
        else:
            raise ValueError(f"metadata value type {kind} is not one GGUF defines")
        return None


def gguf_layout(path: Path) -> GGUFLayout:
    """The layout a GGUF file's header describes; ValueError when it describes none (a type GGUF does not define),
    _CutShort when the header itself runs past the end of the file."""
    from gguf import GGML_QUANT_SIZES, READER_SUPPORTED_VERSIONS

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        header = _Header(data)
        version = header.number("I")
        if version not in READER_SUPPORTED_VERSIONS:
            raise ValueError(f"GGUF version {version}; the gguf package reads versions "
                             f"{', '.join(map(str, READER_SUPPORTED_VERSIONS))}")
        tensors, entries = header.number("Q"), header.number("Q")
        alignment = _DEFAULT_ALIGNMENT
        for _ in range(entries):
            key, kind = header.text(), header.number("I")
            value = header.value(kind)
            if key == _ALIGNMENT_KEY and value:
                alignment = value
        data_end, weights = 0, 0
        for _ in range(tensors):
            header.text()
            shape = [header.number("Q") for _ in range(header.number("I"))]
            kind, offset = header.number("I"), header.number("Q")
            if kind not in GGML_QUANT_SIZES:
                raise ValueError(f"tensor type {kind} is not one GGUF defines")
            block, block_bytes = GGML_QUANT_SIZES[kind]
            elements = 1
            for size in shape:
                elements *= size
            weights += elements
            data_end = max(data_end, offset + elements // block * block_bytes)
        data_start = -(-header.at // alignment) * alignment
        return GGUFLayout(len(data), data_start, data_start + data_end, weights)


def check_gguf_file(path: Path) -> GGUFLayout:
    """A model given as a file must be a whole GGUF file: its first four bytes say GGUF, and it is as long as its
    tensor table says (a download cut short is named here, before transformers fails on it with a traceback)."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(GGUF_MAGIC) + 4)
    except OSError as err:
        raise UsageError(f"{path} cannot be read ({err.strerror}); give a readable .gguf file") from None
    if magic[:len(GGUF_MAGIC)] != GGUF_MAGIC:
        raise UsageError(f"{path} is a file but not a GGUF model (it does not start with {GGUF_MAGIC!r}); "
                         "give --model_path a .gguf file, a model folder or a hub id")
    remedy = "give the whole file (download or copy it again)"
    try:
        layout = gguf_layout(path) if len(magic) > len(GGUF_MAGIC) else None
    except (_CutShort, struct.error):
        layout = None
    except ValueError as err:
        raise UsageError(f"truncated or not a GGUF file: {path} ({err}); {remedy}") from None
    if layout is None:
        raise UsageError(f"truncated or not a GGUF file: {path} ends inside its header; {remedy}")
    if layout.file_bytes < layout.data_end:
        raise UsageError(f"truncated or not a GGUF file: {path} has {layout.file_bytes} bytes, its tensor table "
                         f"needs {layout.data_end}; {remedy}")
    return layout
