"""Checks on a GGUF file's header that llama.cpp makes with assertions (which abort the process).

llama.cpp validates most of a GGUF file with errors it returns, but a few values reach assertions:
a layer count outside 1..512 (``n_layer_all``), a data alignment its buffers cannot honour, and
non-finite hyper-parameters (an epsilon of NaN fails at run time). This reads the header alone
(metadata, not tensors) and raises ValueError naming the key instead.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from typing import Any

MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
MIN_ALIGNMENT = 32  # GGUF's default; llama.cpp's CPU buffers assume at least this
SUPPORTED_VERSIONS = (2, 3)

# GGUF value types: struct format of the scalar ones.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_U64 = struct.Struct("<Q")
_FLOATS = (6, 12)


class HeaderReader:
    """Reads the fields of a GGUF header from a buffer, naming the file when it ends inside one."""

    def __init__(self, buf: Any, path: str) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise ValueError(f"GGUF file is truncated inside its header: {self.path}")
        value = struct.unpack_from("<" + fmt, self.buf, self.pos)[0]
        self.pos += size
        return value

    def string(self, what: str) -> bytes:
        n = self.take("Q")
        if n > len(self.buf) - self.pos:
            raise ValueError(f"GGUF header string ({what}) of {n} bytes runs past the end of the file: {self.path}")
        value = self.buf[self.pos:self.pos + n]
        self.pos += n
        return bytes(value)

    def skip_array(self, key: str) -> None:
        item_type, n = self.take("I"), self.take("Q")
        if item_type == _STRING:  # a tokenizer's vocabulary: 262,144 strings for Gemma 3, so a tight loop
            unpack, buf, pos, end = _U64.unpack_from, self.buf, self.pos, len(self.buf)
            for _ in range(n):
                if pos + 8 > end:
                    pos = end + 1
                    break
                pos += 8 + unpack(buf, pos)[0]
            if pos > end:
                raise ValueError(f"GGUF key {key!r}: array of {n} strings runs past the end of the file: {self.path}")
            self.pos = pos
            return
        fmt = _SCALARS.get(item_type)
        if fmt is None:
            raise ValueError(f"GGUF key {key!r}: array of unknown type {item_type}: {self.path}")
        size = struct.calcsize("<" + fmt) * n
        if size > len(self.buf) - self.pos:
            raise ValueError(f"GGUF key {key!r}: array of {n} items runs past the end of the file: {self.path}")
        self.pos += size


def check_gguf_header(path: str) -> None:
    """Raise ValueError naming the key when llama.cpp would assert on this file's metadata."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 24:
            raise ValueError(f"GGUF file is truncated ({size} bytes): {path}")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            _check(HeaderReader(buf, path), path)


def _check(r: HeaderReader, path: str) -> None:
    r.take("4s")  # the magic, checked by the caller
    version = r.take("I")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"GGUF version {version} is not supported (llama.cpp reads versions 2 and 3): {path}")
    n_tensors, n_kv = r.take("Q"), r.take("Q")
    # Each key/value takes at least 12 bytes and each tensor's info at least 24.
    if n_kv * 12 + n_tensors * 24 > len(r.buf):
        raise ValueError(f"GGUF header claims {n_kv} keys and {n_tensors} tensors, more than the file holds: {path}")
    scalars: dict[str, tuple[int, Any]] = {}
    for _ in range(n_kv):
        key = r.string("key").decode("utf-8", errors="replace")
        value_type = r.take("I")
        if value_type == _STRING:
            scalars[key] = (value_type, r.string(key).decode("utf-8", errors="replace"))
        elif value_type == _ARRAY:
            r.skip_array(key)
        elif value_type in _SCALARS:
            scalars[key] = (value_type, r.take(_SCALARS[value_type]))
        else:
            raise ValueError(f"GGUF key {key!r} has unknown value type {value_type}: {path}")
    arch = scalars.get("general.architecture", (None, None))[1]
    if isinstance(arch, str):
        layers = scalars.get(f"{arch}.block_count")
        if layers is not None and not (isinstance(layers[1], int) and 1 <= layers[1] <= MAX_LAYERS):
            raise ValueError(f"GGUF key '{arch}.block_count' is {layers[1]}; llama.cpp takes 1 to {MAX_LAYERS} "
                             f"layers: {path}")
    alignment = scalars.get("general.alignment")
    if alignment is not None:
        value = alignment[1]
        if not isinstance(value, int) or value < MIN_ALIGNMENT or value & (value - 1):
            raise ValueError(f"GGUF key 'general.alignment' is {value}; llama.cpp needs a power of two of at least "
                             f"{MIN_ALIGNMENT}: {path}")
    for key, (value_type, value) in scalars.items():
        if value_type in _FLOATS and not math.isfinite(value):
            raise ValueError(f"GGUF key {key!r} is {value}; a model's hyper-parameters must be finite: {path}")
