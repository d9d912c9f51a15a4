"""The words every layer shares: the methods and what each does, the reallocation modes, the limits.

Pure (no native extension, no Ray): `options`, `phases`, `tree`, `budget` and the CLI read it, and a
test checks the limits against the engine's (`_core`), which is their source.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["LABEL_FREE_SIGNALS", "MAX_CTX", "MAX_ENTROPY_TOP_K", "MAX_SEQUENCES", "MAX_THREADS", "MAX_TRIES",
           "METHODS", "Method", "REALLOCATING_METHODS", "REALLOCATIONS", "RULES", "THREADS_LIMIT", "THRESHOLD_MODES"]


class Method(str, Enum):
    """A run's method (docs/method.md): what phase (a) runs and what phases (b) and (c) do with the saved budget."""

    PARALLEL = "parallel"  # M independent samples per prompt
    EAGER_INIT = "eager_init"  # branch where the top-K entropy exceeds θ
    EAGER_ADAPT = "eager_adapt"  # then the saved budget to prompts that reached M
    EAGER = "eager"  # then the saved budget to prompts with no correct sequence (needs labels)
    EAGER_LABEL_FREE = "eager_label_free"  # then the saved budget to prompts whose own answers show doubt

    @property
    def reallocates(self) -> bool:
        """Phases (b) and (c) follow phase (a)."""
        return self in (Method.EAGER_ADAPT, Method.EAGER, Method.EAGER_LABEL_FREE)

    @property
    def needs_labels(self) -> bool:
        return self is Method.EAGER

    @property
    def label_free(self) -> bool:
        """Recipients from the run's own answers and entropies (budget.plan_label_free)."""
        return self is Method.EAGER_LABEL_FREE

    @property
    def engine_method(self) -> str:
        """What the engine runs in phase (a): "parallel", or "eager_init" for every EAGer method."""
        return "parallel" if self is Method.PARALLEL else "eager_init"

    @property
    def extra_cap_factor(self) -> int:
        """A prompt's extra sequences are capped at this many times M (0: the method gives none)."""
        return {Method.EAGER_ADAPT: 3, Method.EAGER_LABEL_FREE: 3, Method.EAGER: 1}.get(self, 0)


METHODS = tuple(m.value for m in Method)
REALLOCATING_METHODS = tuple(m.value for m in Method if m.reallocates)
REALLOCATIONS = ("fresh", "tree")  # how extras start: new EAGer-init runs, or continuations of the tree
THRESHOLD_MODES = ("fixed", "p99")  # θ as given, or each prompt's 99th entropy percentile
# Whose rules decide the cap check, answer matching and the retry loop (docs/method.md, "Reference rules"):
# eager_cpp's (the default) or the authors' reference code's.
RULES = ("eager_cpp", "reference")
LABEL_FREE_SIGNALS = ("votes", "confidence", "tree")  # the terms of eager_label_free's doubt (budget.doubt)
# The KV cache: one pool of cells for all sequences, or a stream per sequence (docs/long-generations.md, "KV layout").
KV_LAYOUTS = ("auto", "unified", "per_sequence")

# The engine's limits, written here so the pure layers can check against them (tests/test_options.py
# compares each with the extension's value).
MAX_SEQUENCES = 256  # llama.cpp's sequence-id limit: _core.MAX_SEQUENCES; one engine run of a prompt holds at most this
MAX_ENTROPY_TOP_K = 64  # _core.MAX_ENTROPY_TOP_K: the engine ranks a point's tokens within its top 64
# ggml's GGML_MAX_N_THREADS (ggml.h of the pinned llama.cpp): the most threads a graph computes with. Past it,
# where the address space is limited, libgomp fails to create threads and ends the process (exit 1, no exception).
MAX_THREADS = 512
THREADS_LIMIT = "ggml's limit, GGML_MAX_N_THREADS"
MAX_CTX = 1 << 24  # KV cells: far past any model's training context, below what allocation sizes overflow on
MAX_TRIES = 8  # reallocation tries per run; what they leave is reported as unspent
