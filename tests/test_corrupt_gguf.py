"""Malformed GGUF files give a Python exception naming the problem, never an abort of the process."""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys

import pytest

import eager_cpp
from eager_cpp.engine.gguf_header import HeaderReader
from conftest import write_gguf as conftest_write_gguf

pytest.importorskip("gguf")


def write_gguf(path, arch="gemma3", **keys):
    return conftest_write_gguf(path, arch, **keys)


@pytest.mark.parametrize("key, value, match", [
    ("gemma3.block_count", 0, "'gemma3.block_count' is 0; llama.cpp takes 1 to 512 layers"),
    ("gemma3.block_count", 1000, "'gemma3.block_count' is 1000"),
    ("gemma3.block_count", 2**32 - 1, "'gemma3.block_count' is 4294967295"),
    ("general.alignment", 1, "'general.alignment' is 1; llama.cpp needs a power of two of at least 32"),
    ("general.alignment", 48, "'general.alignment' is 48"),
    ("gemma3.attention.layer_norm_rms_epsilon", float("nan"), "'gemma3.attention.layer_norm_rms_epsilon' is nan"),
    ("gemma3.rope.freq_base", float("inf"), "must be finite"),
])
def test_values_llama_cpp_asserts_on_are_value_errors(tmp_path, key, value, match):
    path = write_gguf(tmp_path / "bad.gguf", **{key: value})
    with pytest.raises(ValueError, match=match):
        eager_cpp.Model(path)


def test_not_a_regular_file_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        eager_cpp.Model(fifo)
    with pytest.raises(ValueError, match="model path is empty"):
        eager_cpp.Model("")
    loop = tmp_path / "loop.gguf"
    os.symlink(loop, loop)
    with pytest.raises(ValueError, match="symbolic links"):
        eager_cpp.Model(loop)


def test_load_errors_carry_llama_cpps_reason(tmp_path):
    path = tmp_path / "bad_version.gguf"
    write_gguf(path)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 4, 1)  # GGUF version 1, which llama.cpp no longer reads
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="GGUF version 1 is not supported"):
        eager_cpp.Model(path)
    empty = write_gguf(tmp_path / "empty.gguf", arch="llama")
    with pytest.raises(RuntimeError, match="could not load the model .*: .*"):  # llama.cpp's own words follow
        eager_cpp.Model(empty)


def _header_length(path: str) -> int:
    """Bytes of the default model's metadata and tensor infos (what the corruptions below edit)."""
    with open(path, "rb") as f:
        buf = f.read(16 * 1024 * 1024)
    r = HeaderReader(buf, path)
    r.take("4s"), r.take("I")
    n_tensors, n_kv = r.take("Q"), r.take("Q")
    for _ in range(n_kv):
        key = r.string("key")
        t = r.take("I")
        if t == 8:
            r.string(key)
        elif t == 9:
            r.skip_array(key)
        else:
            r.take({0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}[t])
    for _ in range(n_tensors):
        r.string("tensor")
        dims = r.take("I")
        for _ in range(dims):
            r.take("Q")
        r.take("I"), r.take("Q")
    return r.pos


CAMPAIGN = """
import json, sys, eager_cpp
outcomes = {}
for path in json.loads(sys.argv[1]):
    try:
        eager_cpp.Model(path, n_threads=1)
        outcomes[path] = "loaded"
    except (ValueError, RuntimeError, OSError) as e:
        outcomes[path] = type(e).__name__ + ": " + str(e)[:200]
    print(path, flush=True)  # the last line names the file if the process dies
print(json.dumps(outcomes))
"""


@pytest.mark.slow
def test_corrupted_headers_of_the_default_model_never_crash(tmp_path, model_path):
    """Byte flips, absurd counts and truncations in the real model's header: each a clean exception."""
    n = _header_length(model_path)
    with open(model_path, "rb") as f:
        header = f.read(n)
    rng = random.Random(7)
    cases = []
    for k in range(60):  # byte flips anywhere in the header
        data = bytearray(header)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(8, n)] ^= 1 << rng.randrange(8)
        cases.append(bytes(data))
    for cut in sorted(rng.sample(range(5, n), 20)):  # truncations
        cases.append(header[:cut])
    for count in (0, 2**40, 2**63, 2**64 - 1):  # absurd tensor and key counts
        cases.append(header[:8] + struct.pack("<Q", count) + header[16:])
        cases.append(header[:16] + struct.pack("<Q", count) + header[24:])
    paths = []
    for k, data in enumerate(cases):
        p = tmp_path / f"case{k:03d}.gguf"
        p.write_bytes(data)
        paths.append(str(p))
    proc = subprocess.run([sys.executable, "-c", CAMPAIGN, json.dumps(paths)], capture_output=True, text=True,
                          timeout=900)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "(nothing)"
    assert proc.returncode == 0, f"exit {proc.returncode} after {last}: {proc.stderr[-1500:]}"
    outcomes = json.loads(last)
    assert len(outcomes) == len(paths)
    # The header alone holds no tensor data: nothing loads, and every failure is an exception with a reason.
    assert all(v != "loaded" for v in outcomes.values())
    assert all(len(v.split(": ", 1)[1]) > 10 for v in outcomes.values())
