"""Messages that name the option at fault (issue 40, item 5): kv_memory's sizes and types, a budget beyond the
memory available refused before generation, and the CLI checking --kv-memory before anything else complains."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

import eager_cpp
from eager_cpp.core.options import MAX_KV_MEMORY, RunOptions, parse_kv_memory
from eager_cpp.engine.system import memory_available

Q = "Country: Peru\nCapital:"
PIB = 2**50


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eager_cpp", *args], capture_output=True, text=True, timeout=120,
                          env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eager-cpp: error: "), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ----------------------------------------------------------------------------- kv_memory as a size


@pytest.mark.parametrize("size", ["1PiB", "1 pib", "1P", "1024TiB", PIB])
def test_one_pib_is_a_size_the_documented_bound(size):
    assert MAX_KV_MEMORY == PIB
    assert parse_kv_memory(size) == PIB
    assert RunOptions.create(kv_memory=size).kv_memory == size  # taken as a size (the machine is checked at the run)


@pytest.mark.parametrize("size, shown", [("2PiB", "'2PiB' (2251799813685248 bytes)"), (PIB + 1, str(PIB + 1)),
                                         ("1.5PB", "'1.5PB' (1500000000000000 bytes)")])
def test_past_the_bound_is_refused_naming_kv_memory_and_the_bound(size, shown):
    message = f"kv_memory must be between 1 byte and 1 PiB (1125899906842624 bytes) or 'auto', got {shown}"
    with pytest.raises(ValueError, match=re.escape(message)):
        RunOptions.create(kv_memory=size)


def test_numpy_integers_and_whole_floats_are_sizes(model):
    for size in (np.int64(10**8), np.int32(10**8), np.uint64(10**8), 1e8, np.float64(1e8)):
        assert parse_kv_memory(size) == 10**8 and type(parse_kv_memory(size)) is int, size
    cells = 10**8 // int(model.kv_bytes_per_cell) // 256 * 256
    r = eager_cpp.run(model, [Q], max_new_tokens=2, max_sequences=1, kv_memory=np.int64(10**8))
    assert r.stats.kv_cells == cells


@pytest.mark.parametrize("size, error, message", [
    (True, TypeError, "kv_memory must be a number of bytes, a size like '8GiB', or 'auto', got bool True"),
    (np.bool_(True), TypeError, "kv_memory must be a number of bytes"),
    ([10**8], TypeError, "got list"),
    (1.5e8 + 0.5, ValueError, "kv_memory must be a whole number of bytes, got 150000000.5"),
    (np.float64(2.5), ValueError, "kv_memory must be a whole number of bytes"),
    (float("inf"), ValueError, "kv_memory must be a whole number of bytes"),
    (np.int64(-1), ValueError, "kv_memory must be between 1 byte and 1 PiB"),
])
def test_other_types_stay_refused_naming_what_is_wrong(model, size, error, message):
    with pytest.raises(error, match=re.escape(message)):
        eager_cpp.run(model, [Q], max_new_tokens=2, max_sequences=1, kv_memory=size)


# ----------------------------------------------------------------------------- more than the machine has


def test_the_memory_available_is_what_the_engine_reads():
    available, what = memory_available()
    with open("/proc/meminfo") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))
    assert abs(available - kib * 1024) < 2**30 and what == "of RAM available (MemAvailable)"


@pytest.mark.parametrize("size, bytes_", [("1TiB", 2**40), (PIB, PIB), ("1PiB", PIB)])
def test_a_budget_beyond_the_memory_available_is_refused_before_generation(model, size, bytes_):
    started = time.perf_counter()
    with pytest.raises(ValueError, match=rf"kv_memory={bytes_} bytes \(1\.0 [TP]iB\) is more than the memory this "
                                         r"machine has for the KV cache: \d+ bytes \([0-9.]+ [GMT]iB\) of RAM available "
                                         r"\(MemAvailable\); lower kv_memory, or leave it 'auto'"):
        eager_cpp.run(model, [Q], max_new_tokens=2, max_sequences=1, kv_memory=size)
    assert time.perf_counter() - started < 2.0  # not a context of millions of cells tried first
    with pytest.raises(ValueError, match=rf"kv_memory={bytes_} bytes .* is more than the memory this machine has"):
        eager_cpp.Model(model.path, kv_memory=size)
    # A fixed n_ctx sizes the cache instead: kv_memory is not what the run would allocate then.
    assert eager_cpp.run(model, [Q], max_new_tokens=2, max_sequences=1, kv_memory=size, n_ctx=256).stats.kv_cells == 256


def test_the_cli_refuses_a_budget_beyond_the_memory_available_before_loading_the_model(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Country: Peru\\nCapital:\n")
    out = tmp_path / "out.jsonl"
    assert_one_line_error(cli("run", str(prompts), "-o", str(out), "--kv-memory", "1TiB", "--quiet"),
                          "--kv-memory: kv_memory=1099511627776 bytes (1.0 TiB) is more than the memory this machine "
                          "has for the KV cache")
    assert not out.exists()


# ----------------------------------------------------------------------------- the CLI's order of checks


def test_bench_reports_a_bad_kv_memory_before_missing_matplotlib(tmp_path):
    # matplotlib installed but unimportable: what a machine without it sees.
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")]))
    data = tmp_path / "capitals.jsonl"
    data.write_text(json.dumps({"prompt": Q, "answer": "Lima"}) + "\n")
    out_dir = tmp_path / "bench"
    line = assert_one_line_error(cli("bench", str(data), "--kv-memory", "abc", "--out-dir", str(out_dir), env=env),
                                 "--kv-memory 'abc' is not a size")
    assert "matplotlib" not in line and not out_dir.exists()
    # With a good size the missing matplotlib is what is reported, still before any run.
    assert_one_line_error(cli("bench", str(data), "--kv-memory", "64MiB", "--out-dir", str(out_dir), env=env),
                          "bench draws its plots with matplotlib")
    assert not out_dir.exists()


def test_resume_of_a_finished_output_checks_kv_memory(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Country: Peru\\nCapital:\nCountry: Chile\\nCapital:\n")
    out = tmp_path / "out.jsonl"
    args = ["run", str(prompts), "-o", str(out), "-M", "2", "--max-new-tokens", "4", "--stop", "\\n", "--quiet"]
    assert cli(*args).returncode == 0
    written = out.read_text()
    # 4 MiB buys 227 cells of this model's 18 KiB: below llama.cpp's smallest cache, refused as a fresh run refuses it.
    assert_one_line_error(cli(*args, "--resume", "--kv-memory", "4MiB"),
                          "kv_memory=4194304 bytes buys 227 KV cells of 18432 bytes; llama.cpp's smallest cache is "
                          "256 cells (4718592 bytes)")
    assert_one_line_error(cli(*args, "--resume", "--kv-memory", "1TiB"), "--kv-memory: kv_memory=1099511627776 bytes")
    assert out.read_text() == written
    proc = cli(*args, "--resume", "--kv-memory", "64MiB")  # a budget that fits: nothing left to do
    assert proc.returncode == 0 and "wrote 2 prompts" in proc.stdout, proc.stderr
    assert out.read_text() == written


THREADS_UNDER_A_LIMIT = r"""
import re, resource, sys
import eager_cpp
path = eager_cpp.default_model_path()
m = eager_cpp.Model(path, n_threads=1)
vm = int(re.search(r"VmSize:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
# 1 GiB of room: 512 threads' 8 MiB stacks (4 GiB) do not fit; llama.cpp's OpenMP runtime would exit the process.
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
for make in (lambda: eager_cpp.Model(path, n_threads=512),
             lambda: eager_cpp.run(m, ["hi"], max_new_tokens=2, max_sequences=1, n_threads=512)):
    try:
        make()
        print("no error")
    except ValueError as e:
        print("ValueError:", e)
print(eager_cpp.run(m, ["hi"], max_new_tokens=2, max_sequences=1, n_threads=2).stats.generated_tokens)
"""


def test_threads_the_address_space_cannot_hold_are_a_value_error_not_an_exit():
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_STACKSIZE", "GOMP_STACKSIZE")}
    out = subprocess.run([sys.executable, "-c", THREADS_UNDER_A_LIMIT], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[2] == "2", lines  # the process lives on and a run that fits still runs
    for line in lines[:2]:
        assert line.startswith("ValueError: n_threads=512 needs 4096 MiB of address space"), line
        assert "RLIMIT_AS" in line


CONTEXT_UNDER_A_LIMIT = r"""
import re, resource, sys
import eager_cpp
m = eager_cpp.Model(eager_cpp.default_model_path(), n_threads=1)
vm = int(re.search(r"VmSize:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
# Less room than the first context takes (~615 MiB here: compute buffer ~515 MiB, output 16, KV 40, graph).
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]) * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
try:
    eager_cpp.run(m, ["Country: Peru\nCapital:"], method="eager", reallocation="tree", answers=["zzz"],
                  max_sequences=16, max_new_tokens=192, entropy_threshold=100.0, ignore_eos=True)
    print("ran")
except RuntimeError as e:
    print("RuntimeError:", e)
"""


@pytest.mark.parametrize("room_mib", [60, 80, 200, 610])
def test_a_context_the_memory_cannot_hold_is_an_error_not_an_abort(room_mib):
    # With 60-80 MiB of room llama.cpp's large buffers are mapped but a small allocation after them fails and
    # llama.cpp asserts (GGML_ASSERT(ctx->mem_buffer != NULL), SIGABRT); with 610 the process exited 1. A context
    # is now tried only when the memory it takes can be mapped: one RuntimeError naming the limit.
    out = subprocess.run([sys.executable, "-c", CONTEXT_UNDER_A_LIMIT, str(room_mib)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    last = out.stdout.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: llama.cpp could not create a context with"), last
    assert "RLIMIT_AS" in last and "kv_memory" in last
