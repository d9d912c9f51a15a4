"""eager_cpp: EAGer (entropy-aware generation) on llama.cpp."""

from ._library import preload_llama as _preload_llama

_preload_llama()

from . import _core  # noqa: E402
