"""Type stubs of the native extension eager_cpp._core (see src/)."""

from typing import Any, Callable, Optional

import numpy as np
import numpy.typing as npt

class Model:
    def __init__(self, path: str, n_gpu_layers: int = 0, cpu_buffers: CpuBuffers = ...,
                 guarded: list[str] = ...) -> None: ...
    @property
    def cpu_buffer_plan(self) -> CpuBufferPlan: ...
    @property
    def weight_buffers(self) -> list[tuple[str, float]]: ...
    @property
    def path(self) -> str: ...
    @property
    def n_vocab(self) -> int: ...
    @property
    def n_ctx_train(self) -> int: ...
    @property
    def kv_bytes_per_cell(self) -> float: ...
    @property
    def add_bos(self) -> bool: ...
    @property
    def description(self) -> str: ...
    @property
    def chat_template(self) -> str: ...
    @property
    def context_n_ctx(self) -> int: ...
    def meta(self, key: str) -> str: ...
    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]: ...
    def token_to_piece(self, token: int) -> bytes: ...
    def detokenize(self, tokens: list[int]) -> bytes: ...
    def is_eog(self, token: int) -> bool: ...
    def apply_chat_template(self, messages: list[tuple[str, str]], template: str = "") -> str: ...
    def probe_fork(
        self, prefix: list[int], continuation: list[int], n_threads: int = 0
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32]]: ...
    def score_continuations(
        self, requests: list[tuple[list[int], list[int]]], n_threads: int = 0
    ) -> list[tuple[float, bool]]: ...
    def probe_device_topk(
        self,
        prompts: list[list[int]],
        candidates: int = 256,
        entropy_k: int = 20,
        entropy_temperature: float = 1.0,
        sample_temperature: float = 1.0,
        n_threads: int = 0,
    ) -> list[dict[str, Any]]: ...

def builtin_chat_templates() -> list[str]: ...
def supports_gpu_offload() -> bool: ...

class Method:
    PARALLEL: "Method"
    EAGER_INIT: "Method"

class ThresholdMode:
    FIXED: "ThresholdMode"
    P99: "ThresholdMode"

class CapRule:
    PROMPT: "CapRule"
    ROW: "CapRule"

class KvLayout:
    UNIFIED: "KvLayout"
    PER_SEQUENCE: "KvLayout"
    AUTO: "KvLayout"

class WindowCache:
    AUTO: "WindowCache"
    FULL: "WindowCache"
    WINDOW: "WindowCache"

class SamplingParams:
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    def __init__(self) -> None: ...

class EngineConfig:
    method: Method
    max_new_tokens: int
    seed: int
    sampling: SamplingParams
    entropy_k: int
    entropy_after_temperature: bool
    record_entropies: bool
    stop: list[str]
    think_end_marker: str
    no_branch_window: int
    threshold_mode: ThresholdMode
    cap_rule: CapRule
    max_live_sequences: int
    ignore_eos: bool
    n_threads: int
    n_ctx: int
    kv_memory: int
    device_topk: bool
    device_candidates: int
    trace_steps: bool
    trace_rows: bool
    share_prompt_prefixes: bool
    window_cache: WindowCache
    kv_layout: KvLayout
    def __init__(self) -> None: ...

class BranchSeed:
    prefix: list[int]
    exclude: list[int]
    rank: int
    def __init__(self, prefix: list[int], exclude: list[int], rank: int = 1) -> None: ...

class PromptJob:
    tokens: list[int]
    max_sequences: int
    theta: float
    stream_id: int
    sequence_index_base: int
    seeds: list[BranchSeed]
    def __init__(
        self, tokens: list[int], max_sequences: int, theta: float, stream_id: int, sequence_index_base: int = 0,
        seeds: list[BranchSeed] = ...,
    ) -> None: ...

class SequenceResult:
    own_tokens: list[int]
    entropies: list[float]
    parent: int
    branch_step: int
    branch_entropy: float
    text: bytes
    finish_reason: str
    marker_step: int

class PromptResult:
    sequences: list[SequenceResult]
    prompt_tokens: int
    steps: int

class RowTrace:
    prompt: int
    sequence: int
    position: int
    entropy: float
    top1: int
    top2: int
    sampled: int
    draw: float

class StepTrace:
    tokens: int
    prompts: int
    decode_ms: float
    kv_span: int
    kv_used: int
    kv_span_swa: int
    kv_used_swa: int
    kv_held: int

class RunStats:
    prefill_seconds: float
    decode_seconds: float
    row_kernel_seconds: float
    bookkeeping_seconds: float
    steps: int
    generated_tokens: int
    prompt_tokens: int
    reprocessed_tokens: int
    shared_prompt_tokens: int
    max_live_sequences: int
    kv_cells: int
    peak_kv_cells: int
    kv_grows: int
    preemptions: int
    recomputed_tokens: int
    kv_ceiling_lowered: str
    kv_layout: str
    device_dropped_mass_max: float
    step_trace: list[StepTrace]
    row_trace: list[RowTrace]

class RunOutput:
    prompts: list[PromptResult]
    stats: RunStats

def generate(
    model: Model,
    config: EngineConfig,
    jobs: list[PromptJob],
    progress: Optional[Callable[[int, int, int, int, float], None]] = None,
) -> RunOutput: ...
def bench_bare_decode(model: Model, prompt: list[int], n_sequences: int, n_steps: int, n_threads: int = 0) -> float: ...
def topk_entropy(
    logits: npt.NDArray[np.float32], k: int = 20, temperature: float = 1.0, n_threads: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32], npt.NDArray[np.int32]]: ...

def nth_not_excluded(logits: npt.NDArray[np.float32], exclude: list[int], rank: int = 1) -> int: ...
def cuda_status() -> tuple[bool, str]: ...
MAX_SEQUENCES: int  # llama.cpp's sequence-id limit (vocabulary.MAX_SEQUENCES)
MAX_ENTROPY_TOP_K: int  # the largest K of the top-K entropy (vocabulary.MAX_ENTROPY_TOP_K)
KV_CELL_PADDING: int  # llama.cpp's smallest KV cache, and the step it pads one to

class CpuBuffers:
    SAFE: "CpuBuffers"
    ALL: "CpuBuffers"
    NONE: "CpuBuffers"

class CpuBufferPlan:
    use_extra_bufts: bool
    keep: list[str]
    dropped: list[str]

def plan_cpu_buffers(offered: list[str], choice: CpuBuffers, guarded: list[str]) -> CpuBufferPlan: ...
def default_guarded_cpu_buffers() -> list[str]: ...
def offered_cpu_buffers() -> list[str]: ...

class CpuBufferScope:
    """Only the `keep` CPU extra buffer types are registered while a model loads inside it."""

    def __init__(self, keep: list[str]) -> None: ...
    def __enter__(self) -> CpuBufferScope: ...
    def __exit__(self, *exc: Any) -> None: ...

def ram_available_bytes() -> int: ...
def system_info() -> dict[str, Any]: ...

# Only in a build with CUDA (cuda_status() says why not otherwise).
def cuda_topk_entropy(
    logits: npt.NDArray[np.float32], k: int = 20, temperature: float = 1.0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32], npt.NDArray[np.float32], float, float]: ...

class _Policies:
    """eager_cpp._core.policies: the engine's branch policy, admission and KV scheduler, without a model."""

    class BranchState:
        open: bool
        steps_without_branch: int
        history: list[float]
        def __init__(self) -> None: ...

    class BranchPolicy:
        def __init__(self, method: Method, threshold_mode: ThresholdMode, no_branch_window: int,
                     cap_rule: CapRule = ...) -> None: ...
        def may_branch(self, state: _Policies.BranchState, past_marker: bool, n_sequences: int,
                       max_sequences: int, row_position: int = 0, at_step_start: int | None = None) -> bool: ...
        def branches(self, entropy: float, top1: int, top2: int, theta: float, state: _Policies.BranchState) -> bool: ...
        def observe(self, state: _Policies.BranchState, entropy: float) -> None: ...
        def mark_branch(self, state: _Policies.BranchState) -> None: ...
        def end_step(self, state: _Policies.BranchState, n_sequences: int, max_sequences: int) -> bool: ...
        def close_if_capped(self, state: _Policies.BranchState, n_sequences: int, max_sequences: int) -> bool: ...

    class PromptLoad:
        def __init__(self, max_sequences: int, n_sequences: int, live: int, branching: bool,
                     live_tokens: int = 0) -> None: ...

    class Admission:
        def __init__(self, method: Method, max_live_sequences: int, max_new_tokens: int, ids_available: int,
                     cells: int) -> None: ...
        def may_admit(
            self, job: PromptJob, in_flight: list[_Policies.PromptLoad], live: int, cells_held: int, staggered: bool = False
        ) -> bool: ...
        def admitted(self, job: PromptJob) -> None: ...
        def released(self, job: PromptJob) -> None: ...
        def count_final(self, n_sequences: int) -> None: ...
        def sequence_finished(self, length: int) -> None: ...
        def growth_estimate(self) -> float: ...
        def expected_length(self) -> float: ...
        def expected_live(self, in_flight: list[_Policies.PromptLoad], estimate: float) -> float: ...
        def expected_growth(self, in_flight: list[_Policies.PromptLoad], estimate: float) -> float: ...

    class SequenceStatus:
        RUNNING: "_Policies.SequenceStatus"
        HELD_BACK: "_Policies.SequenceStatus"
        PAUSED: "_Policies.SequenceStatus"
        FINISHED: "_Policies.SequenceStatus"

    class PromptStatus:
        WAITING: "_Policies.PromptStatus"
        RUNNING: "_Policies.PromptStatus"
        DONE: "_Policies.PromptStatus"

    class KvHarness:
        """The sequence table and the KV scheduler over synthetic prompts, stepped as the engine steps them."""

        def __init__(self, config: EngineConfig, prompt_tokens: list[int], lengths: list[int], max_sequences: int,
                     cells: int, ceiling: int, n_ids: int = 256, stream_budget_cells: int = 0,
                     whole_stream_cells: int = 0) -> None: ...
        def schedule(self) -> list[int]: ...
        def step(self, failed_decodes: int = 0) -> int: ...
        def branch(self, slot: int) -> int: ...
        def run(self, max_steps: int = 100000) -> int: ...
        def sequences(self) -> list[tuple[int, int, int, _Policies.SequenceStatus, int, int]]: ...
        def results(self) -> list[list[tuple[int, str, int]]]: ...
        def prompt_status(self, prompt: int) -> _Policies.PromptStatus: ...
        @property
        def in_flight(self) -> list[int]: ...
        @property
        def running(self) -> int: ...
        @property
        def paused(self) -> int: ...
        @property
        def cells_held(self) -> int: ...
        @property
        def capacity(self) -> int: ...
        @property
        def streams(self) -> int: ...
        @property
        def grows(self) -> int: ...
        @property
        def peak_cells(self) -> int: ...
        @property
        def preemptions(self) -> int: ...
        @property
        def recomputed_tokens(self) -> int: ...
        @property
        def ceiling_lowered(self) -> str: ...
        def limit_memory(self, cells: int) -> None: ...
        @property
        def ops(self) -> list[tuple[Any, ...]]: ...

    @staticmethod
    def percentile_99(values: list[float]) -> float: ...

policies: _Policies
