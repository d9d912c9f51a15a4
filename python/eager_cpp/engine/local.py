"""The executor that runs phase jobs on the engine in this process (Ray actors each hold one), and
the engine's config for a run (``engine_config``)."""

from __future__ import annotations

from typing import Any, Iterable, Optional

from .. import _core
from ..core.jobs import PhaseJob, PhaseOutput, ProgressFn, Seed
from .model import Model, check_kv_memory_available
from ..core.checks import parse_kv_memory
from ..core.options import RunOptions
from ..core.progress import ProgressEvent
from ..core.results import PromptResult, RunStats, Sequence
from .system import check_threads_fit

ENGINE_METHODS = {"parallel": _core.Method.PARALLEL, "eager_init": _core.Method.EAGER_INIT}
ENGINE_CAP_RULES = {"eager_cpp": _core.CapRule.PROMPT, "reference": _core.CapRule.ROW}
KV_CELL_PADDING = _core.KV_CELL_PADDING  # llama.cpp's smallest KV cache, and the step it pads one to
# Options the engine's config has under the same name but that are set below from another form (the engine's
# method is set per job list; the placement falls back on the model's).
SET_BELOW = ("method", "think_end_marker", "device_topk", "n_ctx", "kv_memory", "n_threads")


def _by_name(cfg: Any, name: str, value: Any) -> None:
    """An option copied to the engine's field of the same name: an enum by its member's name, a tuple as a list.
    So a new engine option named as its C++ field needs no line in engine_config."""
    current = getattr(cfg, name)
    if hasattr(type(current), "__members__"):  # a pybind11 enum: the option's value names its member
        value = type(current).__members__[str(value).upper()]
    elif isinstance(current, list):
        value = list(value)
    setattr(cfg, name, value)


def engine_config(options: RunOptions, model: Model) -> Any:
    """The engine's config for a run of `options` on `model` (context and threads: the options', else the model's).

    A fixed kv_memory is checked here, before any generation (so also where nothing is left to run, a
    finished output resumed): more than the machine has is refused (``model.check_kv_memory_available``),
    and, in one pool of cells, less than llama.cpp's smallest cache, with the engine's own message."""
    o = options.resolved(model)
    cfg = _core.EngineConfig()
    for name in RunOptions.names():
        if name not in SET_BELOW and hasattr(cfg, name):
            _by_name(cfg, name, getattr(o, name))
    cfg.sampling.temperature = o.temperature
    cfg.sampling.top_k = o.top_k
    cfg.sampling.top_p = o.top_p
    cfg.sampling.min_p = o.min_p
    cfg.entropy_k = o.top_k_entropy
    cfg.think_end_marker = o.think_end_marker or ""
    cfg.cap_rule = ENGINE_CAP_RULES[o.rules]
    cfg.device_topk = bool(o.device_topk)
    cfg.n_ctx = o.n_ctx or model.n_ctx or 0
    cfg.kv_memory = parse_kv_memory(o.kv_memory) or model.kv_memory
    if not cfg.n_ctx and cfg.kv_memory:  # a fixed n_ctx sizes the cache instead
        check_kv_memory_available(cfg.kv_memory, model.offloaded)
        per_cell = float(model.kv_bytes_per_cell)
        cells = int(cfg.kv_memory / max(1.0, per_cell))
        if o.kv_layout != "per_sequence" and cells < KV_CELL_PADDING:
            raise ValueError(f"kv_memory={cfg.kv_memory} bytes buys {cells} KV cells of {int(per_cell)} bytes; "
                             f"llama.cpp's smallest cache is {KV_CELL_PADDING} cells "
                             f"({int(KV_CELL_PADDING * per_cell)} bytes)")
    cfg.n_threads = o.n_threads or model.n_threads or 0
    if cfg.n_threads:
        check_threads_fit(cfg.n_threads)
    return cfg


class LocalExecutor:
    """Runs every job list as one batched engine run on `model`, with `options` (an `options.RunOptions`).

    Prompt texts become tokens as the options say (the chat template or plain text) each time a run needs
    them: kept per prompt, they would grow the run's memory by every prompt's tokens (a run of many prompts
    holds summaries, not prompts), and tokenizing costs little beside prefilling the same tokens.
    """

    def __init__(self, model: Model, options: RunOptions) -> None:
        self.model = model
        self.options = options.resolved(model)
        self.config = engine_config(self.options, model)

    @property
    def n_ctx(self) -> int:
        """The context the run is fixed to (0: it follows the KV memory)."""
        return self.config.n_ctx

    def check(self, prompts: Iterable[tuple[int, str]]) -> tuple[int, int]:
        """Every prompt tokenized as the run will (ValueError naming one too long): the longest, and n_vocab.
        `prompts` is read once, as it comes (a run's prompts may be read from a file as they are checked)."""
        return max((len(self.tokens(i, p)) for i, p in prompts), default=0), self.model.n_vocab

    def recorded(self, n_prompts: int) -> dict[str, Any]:
        return self.options.recorded(n_prompts)

    def account(self, stats: RunStats, elapsed: float, outcome: Any) -> None:
        """Nothing of its own to add: the engine's figures came with each output."""

    def tokens(self, index: int, prompt: str) -> list[int]:
        """The prompt's tokens, checked against the model's context (ValueError naming the prompt)."""
        text = self.model.format_chat(prompt, self.options.chat_template) if self.options.chat else prompt
        tokens = self.model.tokenize(text)
        limit = self.model.n_ctx_train
        need = len(tokens) + self.config.max_new_tokens
        if need > limit:
            raise ValueError(
                f"prompt {index} is {len(tokens)} tokens; with max_new_tokens={self.config.max_new_tokens} a "
                f"sequence would need {need} positions, beyond the model's context of {limit}")
        return tokens

    def run_jobs(self, jobs: list[PhaseJob], method: str, progress: Optional[ProgressFn]) -> PhaseOutput:
        stats = RunStats(method=method)
        if not jobs:
            return PhaseOutput(prompts=[], stats=stats)
        n_vocab = self.model.n_vocab
        core_jobs = [_core.PromptJob(self.tokens(j.index, j.prompt), j.max_sequences, j.theta, j.index,
                                     j.sequence_base, [branch_seed(s, j.index, n_vocab) for s in j.seeds])
                     for j in jobs]
        self.config.method = ENGINE_METHODS[method]
        on_step = None
        if progress is not None:
            phase, round_ = ("a", 0) if all(j.round == 0 for j in jobs) else ("c", max(j.round for j in jobs))

            def on_step(done: int, total: int, live: int, tokens: int, seconds: float) -> None:
                progress(ProgressEvent(phase, round_, done, total, live, tokens, seconds))

        out = self.model.generate(self.config, core_jobs, on_step)  # one generation at a time per model
        converted = [to_prompt_result(job, core) for job, core in zip(jobs, out.prompts)]
        s = out.stats
        for key in RunStats.SUMMED + RunStats.PEAKED + ("kv_ceiling_lowered", "kv_layout"):
            setattr(stats, key, getattr(s, key))
        return PhaseOutput(prompts=[p for p, _ in converted], stats=stats,
                           unavailable=[dropped for _, dropped in converted])


def branch_seed(seed: Seed, index: int, n_vocab: int) -> Any:
    """The engine's BranchSeed for `seed` of prompt `index`, its token ids checked against the vocabulary.

    The ids come from a result's sequences, which a caller may have edited or read from a file: one that
    is not an int in [0, n_vocab) is a ValueError here, where the engine's binding (32-bit ids) would
    answer an id past 2**31 with its signature instead.
    """
    for name, ids in (("prefix", seed.prefix), ("excluded tokens", seed.exclude)):
        for t in ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_vocab:
                raise ValueError(f"prompt {index}: a branch seed continuing sequence {seed.source} has a token id "
                                 f"outside the vocabulary [0, {n_vocab}) in its {name}: {t!r}")
    if isinstance(seed.rank, bool) or not isinstance(seed.rank, int) or not 1 <= seed.rank < 2**31:
        raise ValueError(f"prompt {index}: a branch seed's rank must be a positive int, got {seed.rank!r}")
    return _core.BranchSeed(list(seed.prefix), list(seed.exclude), seed.rank)


UNAVAILABLE = "unavailable"  # the engine's finish_reason for a seed whose point has no allowed token left


def to_prompt_result(job: PhaseJob, core_prompt: Any) -> tuple[PromptResult, tuple[int, ...]]:
    """The engine's sequences of one job as result Sequences numbered from the job's index base, and
    the positions of the seeds that came back "unavailable" (dropped here: the following sequences close
    the gap).

    A parent is in the same engine run, so full token_ids come from the chain within it, except for
    the job's seeds (tree reallocation): their parent is the earlier sequence they continue, and
    their prefix is the seed's.
    """
    result = PromptResult(index=job.index, prompt=job.prompt, sequences=[], prompt_tokens=core_prompt.prompt_tokens,
                          steps=core_prompt.steps)
    base = job.index_base
    kept: dict[int, Sequence] = {}  # engine-local index -> result sequence
    dropped: list[int] = []
    for local, cs in enumerate(core_prompt.sequences):
        if cs.finish_reason == UNAVAILABLE:
            if local >= len(job.seeds) or len(cs.own_tokens):
                raise RuntimeError(f"internal error: prompt {job.index}: sequence {local} is 'unavailable' but "
                                   "is not an untouched seed")
            dropped.append(local)
            continue
        own = list(cs.own_tokens)
        if local < len(job.seeds):
            parent, inherited = job.seeds[local].source, list(job.seeds[local].prefix)
        elif cs.parent >= 0:
            if cs.parent not in kept:
                raise RuntimeError(f"internal error: prompt {job.index}: sequence {local} branched from "
                                   f"sequence {cs.parent}, which the engine did not start")
            source = kept[cs.parent]
            parent, inherited = source.index, source.token_ids[: cs.branch_step]
        else:
            parent, inherited = None, []
        kept[local] = Sequence(
            index=base + len(result.sequences),
            text=cs.text.decode("utf-8", errors="replace"),
            token_ids=inherited + own,
            own_tokens=own,
            entropies=[float(h) for h in cs.entropies],
            parent=parent,
            branch_step=cs.branch_step,
            finish_reason=cs.finish_reason,
            round=job.round,
            branch_entropy=float(cs.branch_entropy) if parent is not None else None,
            marker_step=None if cs.marker_step < 0 else cs.marker_step,
        )
        result.sequences.append(kept[local])
    return result, tuple(dropped)
