"""Every option of a run once: its default, its check, its recorded form and its wire form.

``RunOptions`` is what every layer passes along (the API, the driver, the executors, the CLI, whose
flags take their defaults from it), in the spirit of llama.cpp server's one ``task_params``. Two forms
leave the process: ``recorded()`` (a result's ``settings``: what shapes the samples, versioned, read
back by ``from_recorded``) and ``wire()`` (a ``WireOptions``: what Ray workers run with, every field
but the driver's own). Adding an option means a field here, a line in ``local.engine_config`` when
the engine reads it, and the engine's config in C++ and its binding. Pure: no native extension.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Optional

from .budget import LABEL_FREE_SIGNALS
from .vocabulary import (KV_LAYOUTS, MAX_CTX, MAX_ENTROPY_TOP_K, MAX_SEQUENCES, MAX_THREADS, METHODS,
                         REALLOCATIONS, RULES, THREADS_LIMIT, THRESHOLD_MODES, Method)

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15, "K": 2**10, "M": 2**20,
          "G": 2**30, "T": 2**40, "P": 2**50, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "PIB": 2**50}
MAX_KV_MEMORY = 2**50  # 1 PiB: the largest kv_memory taken as a size (what a machine has is checked at the run)

# Settings under one name; explicit options override them (docs/method.md, "Reference rules").
PRESETS: dict[str, dict[str, Any]] = {
    # The paper's and its reference code's (main_vllm.py, entropy_generator_vllm.py): the chat template
    # with one user turn, M = 32, 32,000 new tokens (its 32,768-token context less room for a prompt: here
    # prompt + max_new_tokens must fit the model's context), T 0.6, θ 2.5 under the running p99 floor,
    # top-20 entropy, the 1000-step no-branch window, no top-k/top-p/min-p filter, the reference's rules.
    "paper": dict(chat=True, max_sequences=32, max_new_tokens=32000, temperature=0.6, entropy_threshold=2.5,
                  threshold_mode="p99", top_k_entropy=20, no_branch_window=1000, top_k=0, top_p=1.0, min_p=0.0,
                  rules="reference"),
}


def describe_preset(name: str) -> str:
    """What a preset sets, as one line: "chat=True, max_sequences=32, ..."."""
    return ", ".join(f"{k}={v!r}" for k, v in PRESETS[name].items())


def parse_kv_memory(value: Any) -> int:
    """Bytes for the KV cache from an int (numpy's too), a size such as "8GiB", "512MiB" or "2GB", or
    "auto"/None (0); at most 1 PiB (``MAX_KV_MEMORY``).

    0 means "auto": the cache starts with what the first prompts and live sequences of 64 tokens need and
    doubles as the run needs cells, up to a quarter of the memory available (RAM, or the GPU's free
    memory when layers are offloaded).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return 0
    shown = repr(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m is None or m.group(2).upper() not in _UNITS:
            raise ValueError(f"kv_memory {value!r} is not a size: use bytes, a size like '8GiB', '512MiB' or '2GB', "
                             "or 'auto'")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
        shown = f"{shown} ({value} bytes)"
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):  # numpy's integers too
        value = int(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"kv_memory must be a whole number of bytes, got {value!r}")
        value = int(value)
    else:
        raise TypeError(f"kv_memory must be a number of bytes, a size like '8GiB', or 'auto', got "
                        f"{type(value).__name__} {value!r}"[:300])
    if value < 1 or value > MAX_KV_MEMORY:
        raise ValueError(f"kv_memory must be between 1 byte and 1 PiB ({MAX_KV_MEMORY} bytes) or 'auto', got {shown}")
    return value


def check_int(name: str, value: Any, low: int, high: Optional[int] = None, why: str = "") -> int:
    """An int (not a bool) in [low, high]; `why` says where a bound comes from, in the message."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}{f' ({why})' if why else ''}, got {value}")
    return value


def check_text(name: str, value: str) -> str:
    """A str that is valid Unicode: a lone surrogate ("\\ud800") has no UTF-8 form for the engine."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode text ({e.reason} at character {e.start})") from None
    return value


def check_float(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False) -> float:
    """A real number (not a string, not a bool) in [low, high] (or (low, high]), finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or v > high or (low_open and v == low):
        lo = f"({low}" if low_open else f"[{low}"
        hi = f"{high}]" if math.isfinite(high) else "inf)"
        raise ValueError(f"{name} must be a finite number in {lo}, {hi}, got {value!r}")
    return v


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


@dataclass(frozen=True)
class RunOptions:
    """The options of one run (README, "Python API"); `eager_cpp.run(**...)` takes each by name."""

    method: str = "eager_init"
    max_sequences: int = 8  # M
    entropy_threshold: float = 2.0  # θ
    reallocation: str = "fresh"  # reallocating methods: "fresh" EAGer-init runs, or "tree" continuations
    # eager_label_free: the signals its doubt adds up (budget.plan_label_free); fewer is an ablation.
    label_free_signals: tuple[str, ...] = LABEL_FREE_SIGNALS
    # eager_label_free: the confidence signal's window in tokens; None: 16, or an eighth of a trace longer
    # than 135 tokens, at most 2048 (metrics.confidence_window).
    confidence_window: Optional[int] = None
    temperature: float = 0.6
    top_k_entropy: int = 20
    max_new_tokens: int = 512
    seed: int = 0
    stop: tuple[str, ...] = ()
    record_entropies: bool = True
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    entropy_after_temperature: bool = False
    think_end_marker: Optional[str] = "</think>"
    no_branch_window: int = 1000
    threshold_mode: str = "fixed"
    chat: bool = False
    chat_template: Optional[str] = None
    max_live_sequences: int = 32
    ignore_eos: bool = False
    device_topk: Optional[bool] = None  # None: on when the model is offloaded to a GPU
    device_candidates: int = 1024
    n_ctx: Optional[int] = None  # KV cells; None: the model's, else from kv_memory
    kv_memory: Any = None  # bytes of KV cache (int, "8GiB", or None/"auto"); None: the model's
    n_threads: Optional[int] = None  # None: the model's, else all cores
    # "unified": one pool of KV cells (memory follows what the run holds; every token attends over the
    # cells of all live sequences). "per_sequence": a stream per sequence (each attends over its own
    # only: faster per token as sequences grow long; streams grow together with the longest sequence, up
    # to prompt + max_new_tokens, and kv_memory buys streams of that length; a fork copies its parent's
    # stream). README, "KV layouts".
    kv_layout: str = "unified"
    # Whose rules: "eager_cpp" (the default) or "reference", the authors' code's: its per-row cap check,
    # its answer matching (Pass@k by int or substring; full EAGer's unsolved set by exact membership, gold
    # "none" never unsolved) and its retry loop (each try asks the full eᵢ, keeps what it overshoots, no try
    # cap). docs/method.md, "Reference rules". Recorded.
    rules: str = "eager_cpp"
    # Named settings (PRESETS) applied under the explicit options by `create`; recorded with them.
    preset: Optional[str] = None
    # Copy the KV cells a prompt shares with the one admitted before it instead of prefilling them
    # (few-shot headers: faster prefill). Off by default: copied cells sit at other offsets and the
    # rest is prefilled in a smaller micro-batch, so a prompt's samples then depend, by llama.cpp's
    # floating-point noise, on the prompt before it, and a shard no longer reproduces an unsharded run.
    # Recorded (so Ray workers and replays get it).
    share_prompt_prefixes: bool = False
    # Where the run executes (the executor is chosen from `cluster`, once: driver.open_executor).
    n_gpu_layers: int = 0  # layers to offload when the model is loaded from a path (-1: all)
    cluster: Any = None  # None: this process; "local", a Ray address or a distributed.RayWorkers pool: Ray actors
    workers: Optional[int] = None  # Ray actors to start (cluster "local" or an address)
    threads_per_worker: Optional[int] = None  # llama.cpp threads of each (default: n_threads, else 1)

    # 3: reallocation; 4: share_prompt_prefixes off by default (earlier results replay without it
    # unless they recorded it on); 5: rules, preset and confidence_window (earlier results ran eager_cpp's
    # rules, no preset, a 16-token window).
    VERSION: ClassVar[int] = 5
    # Where a run executes, not what it samples: not recorded, so a result replays on another machine.
    PLACEMENT: ClassVar[tuple[str, ...]] = ("n_ctx", "n_threads", "kv_memory", "kv_layout", "n_gpu_layers", "cluster",
                                            "workers", "threads_per_worker")
    # The driver's own: which workers run the jobs, never needed (nor picklable, for a pool) on a worker.
    DRIVER_ONLY: ClassVar[tuple[str, ...]] = ("cluster", "workers", "threads_per_worker")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def create(cls, **options: Any) -> "RunOptions":
        """Validated options from keyword arguments; an unknown name is a TypeError listing the known ones.

        A `preset` fills the options it names that are not given explicitly."""
        unknown = sorted(set(options) - set(cls.names()))
        if unknown:
            raise TypeError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                            f"run options are: {', '.join(cls.names())}")
        preset = options.get("preset")
        if preset is not None:
            if not isinstance(preset, str) or preset not in PRESETS:
                raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(map(repr, PRESETS))}")
            options = {**PRESETS[preset], **options}
        stop = options.get("stop")
        if stop is None:
            options["stop"] = ()
        elif isinstance(stop, str):
            options["stop"] = (stop,)
        elif isinstance(stop, (list, tuple)):
            options["stop"] = tuple(stop)
        else:
            raise TypeError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
        signals = options.get("label_free_signals")
        if isinstance(signals, str):
            options["label_free_signals"] = tuple(x.strip() for x in signals.split(",") if x.strip())
        elif isinstance(signals, list):
            options["label_free_signals"] = tuple(signals)
        return cls(**options).validate()

    def validate(self) -> "RunOptions":
        """Every check; returns the options with numbers normalised (floats as float)."""
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.reallocation not in REALLOCATIONS:
            raise ValueError(f"unknown reallocation {self.reallocation!r}; expected one of {', '.join(REALLOCATIONS)}")
        if self.rules not in RULES:
            raise ValueError(f"unknown rules {self.rules!r}; expected one of {', '.join(map(repr, RULES))}")
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; expected one of {', '.join(map(repr, PRESETS))}")
        if self.rules == "reference" and self.reallocation == "tree":
            raise ValueError('rules="reference" reproduces the paper\'s fresh tries; reallocation="tree" is beyond '
                             'the paper and has no reference rules: use reallocation="fresh" or rules="eager_cpp"')
        if self.reallocation == "tree" and not self.record_entropies:
            raise ValueError('reallocation="tree" ranks branch points by the recorded entropies: '
                             "it needs record_entropies=True")
        signals = self.label_free_signals
        if (not isinstance(signals, tuple) or not signals or len(set(signals)) != len(signals)
                or any(x not in LABEL_FREE_SIGNALS for x in signals)):
            raise ValueError(f"label_free_signals must be distinct names among {', '.join(LABEL_FREE_SIGNALS)}, "
                             f"got {signals!r}")
        if Method(self.method).label_free and not self.record_entropies and set(signals) & {"confidence", "tree"}:
            raise ValueError('method="eager_label_free" reads the recorded entropies (signals confidence, tree): '
                             "it needs record_entropies=True, or label_free_signals=('votes',)")
        check_int("max_sequences", self.max_sequences, 1, MAX_SEQUENCES)
        if self.confidence_window is not None:
            check_int("confidence_window", self.confidence_window, 1, MAX_CTX)
        theta = check_float("entropy_threshold", self.entropy_threshold, 0.0)
        # float32 in the engine: a temperature past ~3e38 would become inf there.
        temperature = check_float("temperature", self.temperature, 0.0, 1e30)
        check_int("top_k_entropy", self.top_k_entropy, 2, MAX_ENTROPY_TOP_K)
        check_int("max_new_tokens", self.max_new_tokens, 1, MAX_CTX)
        check_int("seed", self.seed, 0, 2**64 - 1)
        check_int("top_k", self.top_k, 0, 2**31 - 1)
        top_p = check_float("top_p", self.top_p, 0.0, 1.0, low_open=True)
        min_p = check_float("min_p", self.min_p, 0.0, 1.0)
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop must be a non-empty string or a list of non-empty strings")
        for i, s in enumerate(self.stop):
            check_text(f"stop string {i} ({s!r})", s)
        for name in ("record_entropies", "entropy_after_temperature", "chat", "ignore_eos", "share_prompt_prefixes"):
            check_bool(name, getattr(self, name))
        for name in ("think_end_marker", "chat_template"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string or None, got {getattr(self, name)!r}")
            if getattr(self, name) is not None:
                check_text(name, getattr(self, name))
        check_int("no_branch_window", self.no_branch_window, 1)
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ValueError(f"unknown threshold_mode {self.threshold_mode!r}; expected 'fixed' or 'p99'")
        check_int("max_live_sequences", self.max_live_sequences, 1, MAX_SEQUENCES)
        if self.device_topk is not None:
            check_bool("device_topk", self.device_topk)
        check_int("device_candidates", self.device_candidates, 2, 2**31 - 1)
        if self.device_topk and self.device_candidates < self.top_k_entropy:
            raise ValueError(f"device_candidates={self.device_candidates} must be at least "
                             f"top_k_entropy={self.top_k_entropy}")
        if self.device_topk and self.top_k > self.device_candidates:
            raise ValueError(f"top_k={self.top_k} exceeds device_candidates={self.device_candidates}; "
                             "raise device_candidates")
        if self.n_ctx is not None:
            check_int("n_ctx", self.n_ctx, 1, MAX_CTX)
        parse_kv_memory(self.kv_memory)
        if self.kv_layout not in KV_LAYOUTS:
            raise ValueError(f"unknown kv_layout {self.kv_layout!r}; expected one of {', '.join(map(repr, KV_LAYOUTS))}")
        if self.n_threads is not None:
            check_int("n_threads", self.n_threads, 1, MAX_THREADS, why=THREADS_LIMIT)
        check_int("n_gpu_layers", self.n_gpu_layers, -1)
        if self.cluster is None and (self.workers is not None or self.threads_per_worker is not None):
            raise ValueError("workers= and threads_per_worker= need cluster= (\"local\" or a Ray address)")
        if isinstance(self.cluster, str) and not self.cluster:
            raise ValueError('cluster must be "local", a Ray address or a RayWorkers pool, got an empty string')
        for name in ("workers", "threads_per_worker"):
            if getattr(self, name) is not None and (isinstance(getattr(self, name), bool)
                                                    or not isinstance(getattr(self, name), int)
                                                    or getattr(self, name) < 1):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        return replace(self, entropy_threshold=theta, temperature=temperature, top_p=top_p, min_p=min_p)

    @property
    def reallocates(self) -> bool:
        return Method(self.method).reallocates

    def resolved(self, model: Any) -> "RunOptions":
        """The options as they run on `model` (an eager_cpp.Model): the device path decided (auto follows the offload)."""
        device = model.offloaded if self.device_topk is None else self.device_topk
        return replace(self, device_topk=device).validate()

    def recorded(self, n_prompts: Optional[int] = None) -> dict[str, Any]:
        """The recorded form (a result's `settings`): every option that shapes the samples, versioned,
        and the prompt count when given."""
        d = {name: getattr(self, name) for name in self.names() if name not in self.PLACEMENT}
        d["stop"] = list(self.stop)
        d["label_free_signals"] = list(self.label_free_signals)
        d["options_version"] = self.VERSION
        if n_prompts is not None:
            d["n_prompts"] = n_prompts
        return d

    def wire(self) -> "WireOptions":
        """What a Ray worker runs with: every field but the driver's own, so a new option reaches the workers."""
        return WireOptions(tuple((name, getattr(self, name)) for name in self.names() if name not in self.DRIVER_ONLY))

    @classmethod
    def from_wire(cls, wire: "WireOptions") -> "RunOptions":
        if not isinstance(wire, WireOptions):
            raise TypeError(f"expected WireOptions, got {type(wire).__name__}")
        return cls(**dict(wire.values)).validate()

    @classmethod
    def from_recorded(cls, d: dict[str, Any]) -> "RunOptions":
        """Options from a recorded dict (this version's or version 1's, which had no options_version)."""
        version = d.get("options_version", 1)
        if not isinstance(version, int) or version > cls.VERSION:
            raise ValueError(f"these settings were written by a newer eager_cpp (options_version {version!r}); "
                             f"this one reads up to {cls.VERSION}")
        known = {k: v for k, v in d.items() if k in cls.names() and k not in cls.PLACEMENT}
        if version == 1:
            # Results written before the device path existed ran on the host kernel.
            known.setdefault("device_topk", False)
        if version < 5:
            known.setdefault("confidence_window", 16)  # the window was 16 tokens whatever the trace's length
        if version < 4:
            # Written before sharing was recorded (or when it defaulted on): replay without it unless on.
            known.setdefault("share_prompt_prefixes", False)
        return cls.create(**known)


def check_extras_fit(opts: RunOptions, n_ctx: int, longest_prompt: int) -> None:
    """A reallocating run's largest extra job must be able to start in a context the caller fixed (n_ctx).

    Only the start is checked here: the engine refuses a budget one sequence could outgrow (its prompt plus
    max_new_tokens), and preempts and recomputes when the sequences together outgrow the cache.
    """
    if not opts.reallocates or not n_ctx:
        return
    cap = min(MAX_SEQUENCES, Method(opts.method).extra_cap_factor * opts.max_sequences)
    first = cap if opts.reallocation == "tree" else 1  # a tree try starts one seed per extra
    need = longest_prompt + first + (opts.max_new_tokens - 1 if opts.reallocation == "tree" else 0)
    if need > n_ctx:
        raise ValueError(f"method={opts.method!r} may start {first} extra sequence{'s' if first > 1 else ''} of a "
                         f"prompt in one engine run: up to {need} KV cells with the longest prompt, but n_ctx is "
                         f"{n_ctx}; raise n_ctx or lower max_sequences")


@dataclass(frozen=True)
class WireOptions:
    """The options as shipped to Ray workers: (name, value) of every field but `RunOptions.DRIVER_ONLY`.

    Its own type, not the recorded form: the record leaves out where a run executes (n_ctx, kv_memory,
    n_threads), which a worker must still apply, and is versioned for files, which the wire is not
    (driver and workers run the same eager_cpp).
    """

    values: tuple[tuple[str, Any], ...]
