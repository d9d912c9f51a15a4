"""Loading a GGUF model once and reusing it across runs."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Optional, Union

from .. import _core
from ..core.checks import parse_kv_memory
from .system import (CPU_BUFFER_CHOICES, check_threads_fit, default_model_path, guarded_cpu_buffers, memory_available,
                     resolve_cpu_buffers)
from ..core.vocabulary import MAX_CTX, MAX_THREADS, THREADS_LIMIT

# The limits, default_model_path and parse_kv_memory are re-exported: callers find them here.
__all__ = ["MAX_CTX", "MAX_THREADS", "THREADS_LIMIT", "Model", "check_gguf_path", "check_kv_memory_available",
           "default_model_path", "parse_kv_memory"]

GGUF_MAGIC = b"GGUF"

PathLike = Union[str, "os.PathLike[str]"]


def check_gguf_path(path: PathLike) -> str:
    """Return `path` as a string after checking it names a readable, well-formed GGUF file.

    Everything llama.cpp would only report on stderr, or assert on (ending the process), is a Python
    exception here: a missing or unreadable file, something that is not a regular file (a FIFO would
    block forever), a file that is not GGUF, and the header values in `gguf_header`.
    """
    from .gguf_header import check_gguf_header

    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"model path must be a str or os.PathLike, got {type(path).__name__}")
    raw = os.fspath(path)
    if not raw:
        raise ValueError("model path is empty: pass the path of a .gguf file")
    p = Path(raw).expanduser()
    try:
        st = p.stat()
    except FileNotFoundError:
        if p.is_symlink():
            raise FileNotFoundError(f"model path is a broken symbolic link: {p} -> {os.readlink(p)}") from None
        raise FileNotFoundError(f"model file not found: {p}") from None
    except OSError as e:  # a symlink loop (ELOOP), a name too long, a permission on a parent folder
        raise ValueError(f"cannot open the model path {p}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"model path is a directory, expected a .gguf file: {p}")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"model path is not a regular file (a FIFO, socket or device): {p}")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ValueError(f"cannot read the model file {p}: {e.strerror or e}") from None
    if magic != GGUF_MAGIC:
        raise ValueError(f"not a GGUF file (it does not start with b'GGUF'): {p}")
    check_gguf_header(str(p))
    return str(p)


def _size(n: int) -> str:
    for unit, scale in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def check_kv_memory_available(kv_memory: int, offloaded: bool) -> None:
    """A fixed kv_memory (bytes; 0 is "auto") more than this machine has for a KV cache is a ValueError
    naming both, before llama.cpp tries to allocate a context of that size (``system.memory_available``:
    the RAM available, or the GPU's free memory when layers are offloaded)."""
    found = memory_available(offloaded) if kv_memory else None
    if found is None:
        return
    available, what = found
    if kv_memory > available:
        raise ValueError(f"kv_memory={kv_memory} bytes ({_size(kv_memory)}) is more than the memory this machine has "
                         f"for the KV cache: {available} bytes ({_size(available)}) {what}; lower kv_memory, or "
                         "leave it 'auto'")


class Model:
    """A GGUF model loaded into llama.cpp, reusable across `eager_cpp.run` calls.

    n_ctx: KV cells shared by all sequences of a run (None: from kv_memory).
    kv_memory: bytes the KV cache of a run may take: an int, a size like "8GiB", or "auto"/None (the
    cache starts small and doubles as the run needs cells, up to a quarter of the memory available).
    More than the memory available is refused (``check_kv_memory_available``), here and at each run.
    A cache that fills preempts prompts and recomputes them later (docs/long-generations.md).
    n_threads: CPU threads (None: all cores). n_gpu_layers: layers offloaded to the GPU of a
    GPU-enabled llama.cpp (-1: all; docs/gpu.md); ignored by a CPU-only build.
    cpu_buffers: which of llama.cpp's CPU extra buffer types may hold the weights: "safe" (all but
    AMX, whose matmul crashes with SIGILL on some CPUs), "all" (AMX too, where it works) or "none";
    None: $EAGER_CPP_CPU_BUFFERS, else "safe" (eager_cpp.engine.system, docs/troubleshooting.md).

    Threads: a Model runs one generation at a time. `run()` calls on it from several threads take
    turns (each waits, without holding the GIL, for the one in progress); a call from inside a run on
    the same model (a progress callback calling `run()`) raises RuntimeError instead of deadlocking.
    Models of their own run in parallel.
    """

    def __init__(
        self,
        path: PathLike,
        n_ctx: Optional[int] = None,
        n_threads: Optional[int] = None,
        n_gpu_layers: int = 0,
        cpu_buffers: Optional[str] = None,
        kv_memory: Any = None,
    ) -> None:
        self.kv_memory = parse_kv_memory(kv_memory)
        if n_ctx is not None and (isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or not 1 <= n_ctx <= MAX_CTX):
            raise ValueError(f"n_ctx must be an int between 1 and {MAX_CTX} or None, got {n_ctx!r}")
        if n_threads is not None and (isinstance(n_threads, bool) or not isinstance(n_threads, int)
                                      or not 1 <= n_threads <= MAX_THREADS):
            raise ValueError(f"n_threads must be an int between 1 and {MAX_THREADS} or None ({THREADS_LIMIT}), "
                             f"got {n_threads!r}")
        if n_threads is not None:
            check_threads_fit(n_threads)
        if isinstance(n_gpu_layers, bool) or not isinstance(n_gpu_layers, int) or n_gpu_layers < -1:
            raise ValueError(f"n_gpu_layers must be an int >= -1 (-1: all layers), got {n_gpu_layers!r}")
        self.cpu_buffers = resolve_cpu_buffers(cpu_buffers)
        self.path = check_gguf_path(path)
        if n_ctx is None:  # a fixed n_ctx sizes the cache instead
            check_kv_memory_available(self.kv_memory, n_gpu_layers != 0 and bool(_core.supports_gpu_offload()))
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_gpu_layers = int(n_gpu_layers)
        self._lock = threading.Lock()
        self._holder: Optional[int] = None
        self._model = _core.Model(self.path, self.n_gpu_layers, CPU_BUFFER_CHOICES[self.cpu_buffers],
                                  guarded_cpu_buffers())

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the model for one generation: other threads wait (GIL released); the same thread raises."""
        me = threading.get_ident()
        if self._holder == me:
            raise RuntimeError("this Model is already generating in this thread (a progress callback called "
                               "run() on the model it reports on); use another Model for a nested run")
        self._lock.acquire()
        self._holder = me
        try:
            yield
        finally:
            self._holder = None
            self._lock.release()

    def generate(self, config: _core.EngineConfig, jobs: list[_core.PromptJob],
                 on_step: Optional[Callable[[int, int, int, int, float], None]] = None) -> _core.RunOutput:
        """The engine itself on explicit settings: `config` (e.g. ``local.engine_config(options, model)`` with
        fields changed, such as ``trace_rows``) over `jobs`, one generation at a time on this model. What
        tests and benchmarks drive directly; `eager_cpp.run` is the way to generate."""
        with self.exclusive():
            return _core.generate(self._model, config, jobs, on_step)

    def probe_fork(self, prefix: list[int], continuation: list[int], n_threads: int = 0) -> Any:
        """(parent, child, fresh) logits after `continuation`: decoded by a sequence, by a copy of it forked after
        `prefix` (llama_memory_seq_cp), and from scratch: what a fork must reproduce (a measuring probe)."""
        with self.exclusive():
            return self._model.probe_fork(prefix, continuation, n_threads)

    def probe_device_topk(self, prompts: list[list[int]], **settings: Any) -> Any:
        """Each prompt's last row through the device path's in-graph top-K (``_core.Model.probe_device_topk``'s
        settings) beside the full logits row: what the device path must agree with (a measuring probe)."""
        with self.exclusive():
            return self._model.probe_device_topk(prompts, **settings)

    def score_continuations(self, requests: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(log-likelihood, greedy) of each (context tokens, continuation tokens) pair: the sum over the
        continuation's tokens of the log-softmax of the logits that predict it, and whether each of them is its
        row's argmax. Decoded natively, many pairs per llama_decode call under distinct sequence ids (GIL
        released). A ValueError for an empty context (score one after the BOS token) or continuation, a token
        id outside the vocabulary, or a pair longer than the model's training context."""
        pairs = []
        for i, pair in enumerate(requests):
            try:
                context, continuation = pair
                pairs.append(([int(t) for t in context], [int(t) for t in continuation]))
            except (TypeError, ValueError):
                raise TypeError(f"request {i} must be a (context token ids, continuation token ids) pair, "
                                f"got {pair!r}"[:200]) from None
        with self.exclusive():
            return [(float(lp), bool(g)) for lp, g in self._model.score_continuations(pairs, self.n_threads or 0)]

    def token_to_piece(self, token: int) -> bytes:
        """The bytes of one token as the vocabulary spells it (no special-token handling)."""
        return self._model.token_to_piece(token)

    @property
    def weight_buffers(self) -> list[tuple[str, float]]:
        """(buffer type, MiB) of each buffer holding weights, as llama.cpp allocated them at load."""
        return [(name, float(mib)) for name, mib in self._model.weight_buffers]

    @property
    def cpu_buffer_plan(self) -> _core.CpuBufferPlan:
        """The CPU extra buffer types this load kept and those it kept the weights out of."""
        return self._model.cpu_buffer_plan

    @property
    def offloaded(self) -> bool:
        """Whether layers run on a GPU: n_gpu_layers != 0 with a GPU-enabled llama.cpp."""
        return self.n_gpu_layers != 0 and bool(_core.supports_gpu_offload())

    @property
    def n_vocab(self) -> int:
        return self._model.n_vocab

    @property
    def n_ctx_train(self) -> int:
        """The context length the model was trained with, from its GGUF metadata.

        llama.cpp stores it unsigned but hands it out as int32: a header value past 2**31 - 1 comes back
        negative, so it is read back as the unsigned value the file holds.
        """
        return self._model.n_ctx_train % 2**32

    @property
    def kv_bytes_per_cell(self) -> int:
        """Bytes one KV cell takes (keys and values of every layer): what kv_memory buys cells with."""
        return int(self._model.kv_bytes_per_cell)

    @property
    def description(self) -> str:
        return self._model.description

    @property
    def chat_template(self) -> str:
        """The chat template stored in the GGUF metadata ("" when there is none)."""
        return self._model.chat_template

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text is not valid Unicode ({e.reason} at character {e.start})") from None
        return self._model.tokenize(text, bool(add_special), True)

    def detokenize(self, tokens: list[int]) -> str:
        ids = list(tokens)
        n = self.n_vocab
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n:
                raise ValueError(f"token ids must be ints in [0, {n}), got {t!r}")
        return self._model.detokenize(ids).decode("utf-8", errors="replace")

    def format_chat(self, prompt: str, chat_template: Optional[str] = None) -> str:
        """Wrap `prompt` as a user message and open the assistant turn."""
        return self.format_messages([("user", prompt)], chat_template)

    def format_messages(self, messages: list[tuple[str, str]], chat_template: Optional[str] = None) -> str:
        """(role, content) messages through the chat template (None: the model's own), the assistant turn opened."""
        return self._model.apply_chat_template([(str(r), str(c)) for r, c in messages], chat_template or "")

    def __repr__(self) -> str:
        return f"eager_cpp.Model({self.path!r}, {self.description})"


def builtin_chat_templates() -> list[str]:
    """Names of llama.cpp's built-in chat templates, usable as `chat_template=`."""
    return list(_core.builtin_chat_templates())
