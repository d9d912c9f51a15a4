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


def preload_llama() -> None:
    if not sys.platform.startswith("linux"):
        return  # other platforms resolve the library through the extension's own paths
    path = llama_cpp_lib_dir() / "libllama.so"
    if path.exists():
        ctypes.CDLL(os.fspath(path), mode=ctypes.RTLD_GLOBAL)
