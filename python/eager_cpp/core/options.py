"""Every option of a run once: its type, default, check, help text, command-line flag and role.

``RunOptions`` is what every layer passes along (the API, the driver, the executors, the CLI), in the spirit
of llama.cpp server's one ``task_params``. Each field carries an ``OptionSpec`` (``option(...)``): the help
text, the CLI flag (``cli.options`` generates the parser of ``run``/``eval``/``bench`` from the specs), the
bounds or choices ``validate`` checks, and the role:

- ``"sampling"``: shapes the samples: recorded in a result's ``settings`` and sent to Ray workers;
- ``"placement"``: where a run executes (context, threads, KV memory, offload): sent to the workers, not
  recorded, so a result replays on another machine; ``Model`` and the Ray workers take it from here;
- ``"driver"``: the driver's own (which workers run the jobs): neither recorded nor sent.

Two forms leave the process: ``recorded()`` (versioned, read back by ``from_recorded``) and ``wire()``.

Adding an option the engine reads (four places): a field here with its ``option(...)`` spec (its CLI flag,
checks and role follow from it); the field of the same name in the C++ ``EngineConfig`` (cpp/engine.hpp);
its binding (src/bind_engine.cpp); and its line in the ``_core.pyi`` stub. ``engine.local.engine_config``
copies every option named as an engine field (an enum by its member's name); it needs a line only for an
option the engine reads under another name or form. An option the Python phases read needs only the first.
Pure: no native extension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Optional

from .checks import MAX_KV_MEMORY, check_bool, check_float, check_int, check_text, parse_kv_memory
from .vocabulary import (KV_LAYOUTS, LABEL_FREE_SIGNALS, MAX_CTX, MAX_ENTROPY_TOP_K, MAX_SEQUENCES, MAX_THREADS,
                         METHODS, REALLOCATIONS, RULES, THREADS_LIMIT, THRESHOLD_MODES, Method)

__all__ = ["MAX_KV_MEMORY", "MAX_SEQUENCES", "PRESETS", "OptionSpec", "RunOptions", "WireOptions", "check_extras_fit",
           "describe_preset", "option", "parse_kv_memory", "spec_of"]

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



@dataclass(frozen=True)
class OptionSpec:
    """What a field of ``RunOptions`` is besides its default (module docstring)."""

    help: str
    role: str = "sampling"  # "sampling", "placement" or "driver"
    flag: Optional[str] = None  # the CLI flag; None: "--" + the name with dashes
    short: Optional[str] = None  # a one-letter alias ("-M")
    value: Optional[type] = None  # the type of one value: int, float, str, bool; None: the default's
    choices: Optional[tuple[str, ...]] = None
    low: Optional[float] = None  # bounds of a number (inclusive; `low_open` excludes low)
    high: Optional[float] = None
    low_open: bool = False
    why: str = ""  # where a bound comes from, for the message
    repeat: bool = False  # a tuple of strings given once per flag (--stop A --stop B)
    own_form: bool = False  # a value of its own form (a list, a size, a pool), checked with the combinations
    metavar: Optional[str] = None


def option(default: Any, help: str, **spec: Any) -> Any:
    """A ``RunOptions`` field: its default and its ``OptionSpec``."""
    return field(default=default, metadata={"spec": OptionSpec(help=help, **spec)})


def _spec(f: Any) -> OptionSpec:
    """A field's spec; a field declared without one (a subclass's) is a plain sampling option."""
    return f.metadata.get("spec") or OptionSpec(help="")


def spec_of(name: str) -> OptionSpec:
    return next(_spec(f) for f in fields(RunOptions) if f.name == name)


@dataclass(frozen=True)
class RunOptions:
    """The options of one run (docs/api.md); `eager_cpp.run(**...)` takes each by name."""

    method: str = option("eager_init", "what phase (a) runs and what the saved budget does (docs/method.md)",
                         choices=METHODS)
    max_sequences: int = option(8, "sequences per prompt, M", short="-M", low=1, high=MAX_SEQUENCES)
    entropy_threshold: float = option(2.0, "entropy threshold θ (nats)", flag="--theta", low=0.0)
    reallocation: str = option("fresh", "how eager_adapt, eager and eager_label_free spend the saved budget: fresh "
                               "(new EAGer-init runs, the paper's) or tree (continue each prompt's tree at its most "
                               "uncertain points); eval and bench take a comma-separated list", choices=REALLOCATIONS)
    label_free_signals: tuple[str, ...] = option(
        LABEL_FREE_SIGNALS, "eager_label_free: the signals that make a prompt doubtful: votes, confidence, tree "
        "(comma-separated; fewer is an ablation)", value=str, metavar="SIGNALS", own_form=True)
    confidence_window: Optional[int] = option(
        None, "eager_label_free: tokens per window of the confidence signal (default: 16, or an eighth of a trace "
        "longer than 135 tokens, at most 2048)", value=int, low=1, high=MAX_CTX, metavar="TOKENS")
    # float32 in the engine: a temperature past ~3e38 would become inf there.
    temperature: float = option(0.6, "sampling temperature T", low=0.0, high=1e30)
    top_k_entropy: int = option(20, "K of the top-K entropy", low=2, high=MAX_ENTROPY_TOP_K)
    max_new_tokens: int = option(512, "tokens per sequence", low=1, high=MAX_CTX)
    seed: int = option(0, "seed of the per-sequence random streams", low=0, high=2**64 - 1)
    stop: tuple[str, ...] = option((), "stop string (repeatable; '\\n' is a newline)", value=str, repeat=True)
    record_entropies: bool = option(True, "keep every token's entropy in the result")
    top_k: int = option(0, "sample from the k most likely tokens (0: off)", low=0, high=2**31 - 1)
    top_p: float = option(1.0, "nucleus sampling mass (1: off)", low=0.0, high=1.0, low_open=True)
    min_p: float = option(0.0, "drop tokens below min-p x the best (0: off)", low=0.0, high=1.0)
    entropy_after_temperature: bool = option(False, "compute the entropy after the temperature")
    think_end_marker: Optional[str] = option("</think>", "end-of-thinking marker: no branch after it ('' = branch "
                                             "anywhere)", flag="--think-end", value=str)
    no_branch_window: int = option(1000, "steps without a branch after which a prompt stops branching", low=1)
    threshold_mode: str = option("fixed", "fixed θ, or θ raised to each prompt's running 99th entropy percentile",
                                 choices=THRESHOLD_MODES)
    chat: bool = option(False, "wrap prompts in the model's chat template")
    chat_template: Optional[str] = option(None, "llama.cpp built-in template name or template text", value=str)
    max_live_sequences: int = option(32, "live sequences admission aims at", flag="--max-live", low=1,
                                     high=MAX_SEQUENCES)
    ignore_eos: bool = option(False, "generate past end-of-sequence (fixed lengths, for benchmarks)")
    device_topk: Optional[bool] = option(None, "top candidates and entropy in the model's compute graph (default: "
                                         "on when the model is offloaded to a GPU)", value=bool)
    device_candidates: int = option(1024, "tokens per row that leave the device on the device path", low=2,
                                    high=2**31 - 1)
    n_ctx: Optional[int] = option(None, "KV cells (default: the model's, else from --kv-memory)", role="placement",
                                  value=int, low=1, high=MAX_CTX)
    kv_memory: Any = option(None, "memory for the KV cache: bytes or a size like 8GiB (default: auto, starting small "
                            "and doubling as the run needs cells, up to a quarter of the memory available); a full "
                            "cache preempts and recomputes prompts (docs/long-generations.md)", role="placement",
                            value=str, metavar="SIZE", own_form=True)
    n_threads: Optional[int] = option(None, "CPU threads (default: all cores; with --ray: threads per worker, "
                                      "default 1)", role="placement", flag="--threads", value=int, low=1,
                                      high=MAX_THREADS, why=THREADS_LIMIT)
    # "unified": one pool of KV cells (memory follows what the run holds; every token attends over the cells of
    # all live sequences). "per_sequence": a stream per sequence (each attends over its own only: faster per
    # token as sequences grow long; streams grow together with the longest sequence, up to prompt +
    # max_new_tokens; when kv_memory cannot hold every stream at the next size the run keeps fewer, longer ones,
    # preempting; a fork copies its parent's stream). "auto":
    # streams where they pay and the budget holds them whole (the engine's choose_kv_layout), else unified;
    # stats.kv_layout says which.
    kv_layout: str = option("auto", "KV cache layout: auto (per_sequence for max_new_tokens >= 512 when the budget "
                            "holds every live stream whole, else unified), unified (one pool of cells) or per_sequence "
                            "(a stream per sequence: faster per token for long generations; docs/long-generations.md)",
                            role="placement", choices=KV_LAYOUTS)
    # Whose rules: "eager_cpp" or "reference", the authors' code's: its per-row cap check, its answer matching
    # (Pass@k by int or substring; full EAGer's unsolved set by exact membership, gold "none" never unsolved) and
    # its retry loop (each try asks the full eᵢ, keeps what it overshoots, no try cap).
    rules: str = option("eager_cpp", "eager_cpp or reference: the authors' code's cap check per row, answer "
                        "matching and retry loop (docs/method.md, Reference rules)", choices=RULES)
    # Named settings (PRESETS) applied under the explicit options by `create`; recorded with them.
    preset: Optional[str] = option(None, "named settings under the options given: " + "; ".join(
        f"{name}: {describe_preset(name)}" for name in PRESETS), value=str, choices=tuple(PRESETS))
    # Copy the KV cells a prompt shares with the one admitted before it instead of prefilling them (few-shot
    # headers: faster prefill). Off by default: copied cells sit at other offsets and the rest is prefilled in a
    # smaller micro-batch, so a prompt's samples then depend, by llama.cpp's floating-point noise, on the prompt
    # before it, and a shard no longer reproduces an unsharded run. Recorded (so Ray workers and replays get it).
    share_prompt_prefixes: bool = option(False, "copy the KV cells a prompt shares with the one before it "
                                         "(faster few-shot prefill; samples then depend on the prompt order)")
    # Where the run executes (the executor is chosen from `cluster`, once: driver.open_executor).
    n_gpu_layers: int = option(0, "layers offloaded to the GPU of a GPU-enabled llama.cpp (-1: all); the entropy "
                               "then runs on the device (docs/gpu.md)", role="placement", flag="--gpu-layers",
                               low=-1, metavar="N")
    cluster: Any = option(None, "run on Ray workers: no value starts Ray on this machine, or a cluster address "
                          "('auto', 'host:6379', 'ray://host:10001'); the model path must exist on every node "
                          '(needs pip install "eager_cpp[ray]")', role="driver", flag="--ray", value=str,
                          metavar="ADDRESS", own_form=True)
    workers: Optional[int] = option(None, "Ray workers, each loading the model once (default: the cluster's CPUs "
                                    "// threads per worker)", role="driver", value=int, low=1)
    threads_per_worker: Optional[int] = option(None, "llama.cpp threads of each Ray worker (default: --threads, "
                                               "else 1)", role="driver", value=int, low=1, high=MAX_THREADS)

    # 3: reallocation; 4: share_prompt_prefixes off by default (earlier results replay without it
    # unless they recorded it on); 5: rules, preset and confidence_window (earlier results ran eager_cpp's
    # rules, no preset, a 16-token window).
    VERSION: ClassVar[int] = 5

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def with_role(cls, role: str) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls) if _spec(f).role == role)

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
        numbers = {f.name: self._check_field(f.name, _spec(f), f.default, "Optional[" in str(f.type))
                   for f in fields(self)}
        self._check_combinations()
        return replace(self, **{k: v for k, v in numbers.items() if isinstance(v, float)})

    def _check_field(self, name: str, spec: OptionSpec, default: Any, optional: bool) -> Any:
        """One field against its spec: None only where the field is optional; choices, bounds, types."""
        value = getattr(self, name)
        if value is None and (optional or default is None):
            return None
        kind = spec.value or type(default)
        if spec.own_form or spec.repeat:
            return value
        if spec.choices is not None:
            if value not in spec.choices:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, spec.choices))}")
        elif kind is bool:
            return check_bool(name, value)
        elif kind is int:
            high = None if spec.high is None else int(spec.high)
            return check_int(name, value, int(spec.low if spec.low is not None else -2**63), high, why=spec.why)
        elif kind is float:
            return check_float(name, value, spec.low if spec.low is not None else -math.inf,
                               spec.high if spec.high is not None else math.inf, low_open=spec.low_open)
        elif kind is str:
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a string or None, got {value!r}")
            return check_text(name, value)
        return value

    def _check_combinations(self) -> None:
        """The checks of one option that read another, and those of the options with a form of their own."""
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
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop must be a non-empty string or a list of non-empty strings")
        for i, s in enumerate(self.stop):
            check_text(f"stop string {i} ({s!r})", s)
        if self.device_topk and self.device_candidates < self.top_k_entropy:
            raise ValueError(f"device_candidates={self.device_candidates} must be at least "
                             f"top_k_entropy={self.top_k_entropy}")
        if self.device_topk and self.top_k > self.device_candidates:
            raise ValueError(f"top_k={self.top_k} exceeds device_candidates={self.device_candidates}; "
                             "raise device_candidates")
        parse_kv_memory(self.kv_memory)
        if self.cluster is None and (self.workers is not None or self.threads_per_worker is not None):
            raise ValueError("workers= and threads_per_worker= need cluster= (\"local\" or a Ray address)")
        if isinstance(self.cluster, str) and not self.cluster:
            raise ValueError('cluster must be "local", a Ray address or a RayWorkers pool, got an empty string')

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
        d = {name: getattr(self, name) for name in self.with_role("sampling")}
        d["stop"] = list(self.stop)
        d["label_free_signals"] = list(self.label_free_signals)
        d["options_version"] = self.VERSION
        if n_prompts is not None:
            d["n_prompts"] = n_prompts
        return d

    def wire(self) -> "WireOptions":
        """What a Ray worker runs with: every field but the driver's own, so a new option reaches the workers."""
        return WireOptions(tuple((name, getattr(self, name)) for name in self.names()
                                 if name not in self.with_role("driver")))

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
        known = {k: v for k, v in d.items() if k in cls.with_role("sampling")}
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
    """The options as shipped to Ray workers: (name, value) of every field but the driver's own (role "driver").

    Its own type, not the recorded form: the record leaves out where a run executes (n_ctx, kv_memory,
    n_threads), which a worker must still apply, and is versioned for files, which the wire is not
    (driver and workers run the same eager_cpp).
    """

    values: tuple[tuple[str, Any], ...]
