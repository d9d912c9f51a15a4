"""Load llama.cpp's shared library the way llama-cpp-python does, before the extension.

llama-cpp-python's wheel ships ``libllama.so`` and ``libllama.so.0`` as two separate files.
It opens ``llama_cpp/lib/libllama.so`` by path; the extension names ``libllama.so.0`` (the
soname).  Opening the very file llama-cpp-python opens first, with RTLD_GLOBAL, makes both
resolve to one loaded copy, whichever package is imported first.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path


def llama_cpp_lib_dir() -> Path:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise ImportError(
            "eager_cpp needs llama-cpp-python==0.3.36 (it provides llama.cpp); "
            "install it with: pip install llama-cpp-python==0.3.36"
        )
    return Path(spec.origin).parent / "lib"


# llama.cpp's CPU threads meet at a barrier after every operation of the graph: in llama-cpp-python's build an
# OpenMP barrier, where libgomp spins 300,000 times (a few milliseconds) before it sleeps. Where another process
# shares the cores (two workers on a node, a test run beside a benchmark), a thread waiting for a descheduled
# partner burns the core that partner needs: two processes together made 0.40x the tok/s of one alone. With
# 1,000 spins a process alone runs as fast (0.98x, within noise) and two together make 1.03x
# (benchmarks/bench_shared_cores.py). libgomp reads its settings once, when it is loaded (with llama.cpp, below),
# so a user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY, set before importing eager_cpp, wins.
OPENMP_SPIN_COUNT = "1000"


def default_openmp_wait() -> None:
    if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN_COUNT


def preload_llama() -> None:
    default_openmp_wait()
    if not sys.platform.startswith("linux"):
        return  # other platforms resolve the library through the extension's own paths
    path = llama_cpp_lib_dir() / "libllama.so"
    if path.exists():
        ctypes.CDLL(os.fspath(path), mode=ctypes.RTLD_GLOBAL)
