"""`eager_cpp.run`: EAGer-init, Full Parallel and the reallocating methods over many prompts.

The reallocating methods run in separable phases, so each could run on another worker:
(a) EAGer-init over all prompts, (b) `budget.plan_reallocation` on the per-prompt summaries,
(c) one batched EAGer-init run of the chosen prompts, each capped at its extra count.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence as Seq, Union

from . import _core
from .budget import PromptSummary, ReallocationPlan, plan_reallocation
from .model import Model
from .results import PromptResult, RunResult, RunStats, Sequence

METHODS = ("parallel", "eager_init", "eager_adapt", "eager")
THRESHOLD_MODES = {"fixed": _core.ThresholdMode.FIXED, "p99": _core.ThresholdMode.P99}
MAX_SEQUENCES_LIMIT = 256  # llama.cpp's sequence-id limit

ProgressCallback = Callable[[dict], None]


@dataclass
class _Settings:
    """Validated options of one run, shared by its phases."""

    method: str
    max_sequences: int
    theta: float
    config: Any  # _core.EngineConfig
    chat: bool
    chat_template: Optional[str]


def run(
    model: Union[str, "os.PathLike[str]", Model],
    prompts: Seq[str],
    method: str = "eager_init",
    max_sequences: int = 8,
    entropy_threshold: float = 2.0,
    temperature: float = 0.6,
    top_k_entropy: int = 20,
    max_new_tokens: int = 512,
    seed: int = 0,
    answers: Optional[Seq[Any]] = None,
    scorer: Optional[Callable[[str, str], bool]] = None,
    stop: Optional[Union[str, Seq[str]]] = None,
    record_entropies: bool = True,
    *,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    entropy_after_temperature: bool = False,
    think_end_marker: Optional[str] = "</think>",
    no_branch_window: int = 1000,
    threshold_mode: str = "fixed",
    chat: bool = False,
    chat_template: Optional[str] = None,
    max_live_sequences: int = 32,
    ignore_eos: bool = False,
    progress: Union[None, bool, ProgressCallback] = None,
    n_ctx: Optional[int] = None,
    n_threads: Optional[int] = None,
    prompt_indices: Optional[Seq[int]] = None,
    n_gpu_layers: int = 0,
    device_topk: Optional[bool] = None,
    device_candidates: int = 1024,
    cluster: Any = None,
    workers: Optional[int] = None,
    threads_per_worker: Optional[int] = None,
) -> RunResult:
    """Generate up to `max_sequences` samples per prompt with EAGer or Full Parallel.

    method: "parallel" (M independent samples), "eager_init" (branch where top-K entropy >
    entropy_threshold), "eager_adapt" (EAGer-init, then the saved budget goes to prompts that
    reached M), "eager" (the saved budget goes to prompts with no correct sequence; needs answers).
    prompt_indices: the indices results carry and random streams derive from (default 0..N-1);
    a shard of a larger set passes its global indices so its samples match an unsharded run.
    n_gpu_layers: layers to offload when `model` is a path (-1: all; needs a GPU-enabled llama.cpp).
    device_topk: select each row's top `device_candidates` tokens and its entropy in the model's
    compute graph, so only those leave the GPU (None: on when the model is offloaded). Sampling is
    then renormalised over the candidates; stats.device_dropped_mass_max says what that left out.
    cluster: None (this process), "local" (start Ray on this machine), a Ray address, or an
    `eager_cpp.distributed.RayWorkers` pool: the phases then run on Ray actors (`workers` of them,
    `threads_per_worker` threads each); see eager_cpp.distributed. Needs `pip install "eager_cpp[ray]"`.
    Returns a RunResult; see DESIGN.md §3 for its fields.
    """
    prompts = _check_prompts(prompts)
    indices = _check_indices(prompt_indices, len(prompts))
    settings = _check_settings(
        method, max_sequences, entropy_threshold, temperature, top_k_entropy, max_new_tokens, seed, stop,
        record_entropies, top_k, top_p, min_p, entropy_after_temperature, think_end_marker, no_branch_window,
        threshold_mode, chat, chat_template, max_live_sequences, ignore_eos, n_ctx, n_threads,
    )
    if answers is not None:
        answers = list(answers)
        if len(answers) != len(prompts):
            raise ValueError(f"got {len(answers)} answers for {len(prompts)} prompts")
    if method == "eager" and answers is None:
        raise ValueError('method="eager" needs answers= (one gold answer per prompt); use "eager_adapt" without labels')
    if scorer is not None and not callable(scorer):
        raise TypeError("scorer must be a callable (text, answer) -> bool")
    if cluster is not None:
        from .distributed import run_distributed

        options = dict(
            max_sequences=max_sequences, entropy_threshold=entropy_threshold, temperature=temperature,
            top_k_entropy=top_k_entropy, max_new_tokens=max_new_tokens, seed=seed, stop=stop,
            record_entropies=record_entropies, top_k=top_k, top_p=top_p, min_p=min_p,
            entropy_after_temperature=entropy_after_temperature, think_end_marker=think_end_marker,
            no_branch_window=no_branch_window, threshold_mode=threshold_mode, chat=chat, chat_template=chat_template,
            max_live_sequences=max_live_sequences, ignore_eos=ignore_eos, device_topk=device_topk,
            device_candidates=device_candidates,
        )
        return run_distributed(model, prompts, indices, settings, options, answers, scorer, progress, cluster=cluster,
                               workers=workers, threads_per_worker=threads_per_worker or n_threads, n_ctx=n_ctx,
                               n_gpu_layers=n_gpu_layers)
    if workers is not None or threads_per_worker is not None:
        raise ValueError("workers= and threads_per_worker= need cluster= (\"local\" or a Ray address)")

    _check_int("device_candidates", device_candidates, 2)
    if device_topk is not None and not isinstance(device_topk, bool):
        raise TypeError(f"device_topk must be True, False or None, got {device_topk!r}")

    owned = not isinstance(model, Model)
    llm = Model(model, n_ctx=n_ctx, n_threads=n_threads, n_gpu_layers=n_gpu_layers) if owned else model
    if not owned:
        settings.config.n_ctx = n_ctx or llm.n_ctx or 0
        settings.config.n_threads = n_threads or llm.n_threads or 0
    _set_device_path(settings.config, llm, device_topk, device_candidates)
    reporter = _make_reporter(progress)
    started = time.perf_counter()

    tokens = [_tokenize(llm, p, settings, i) for i, p in zip(indices, prompts)]
    results = [PromptResult(index=i, prompt=p, sequences=[], prompt_tokens=len(t))
               for i, p, t in zip(indices, prompts, tokens)]
    stats = RunStats(method=method)

    # Phase (a): every prompt, one batched engine run.
    jobs = [_core.PromptJob(t, settings.max_sequences, settings.theta, i, 0) for i, t in zip(indices, tokens)]
    _run_phase(llm, settings, jobs, list(range(len(prompts))), results, stats, round_index=0, reporter=reporter)
    if answers is not None:
        _score(results, answers, scorer)

    if method in ("eager_adapt", "eager"):
        _reallocate(llm, settings, results, tokens, stats, answers, scorer, reporter)

    _finish(stats, results, time.perf_counter() - started, reporter)
    return RunResult(prompts=results, stats=stats, settings=_settings_dict(settings, len(prompts)))


def reallocate(
    model: Union[str, "os.PathLike[str]", Model],
    result: RunResult,
    method: str = "eager_adapt",
    answers: Optional[Seq[Any]] = None,
    scorer: Optional[Callable[[str, str], bool]] = None,
    progress: Union[None, bool, ProgressCallback] = None,
    cluster: Any = None,
) -> RunResult:
    """Phases (b) and (c) on the result of an EAGer-init run (possibly gathered from shards).

    The saved budget of `result` goes to the prompts `method` selects ("eager_adapt": those
    that reached M; "eager": those with no correct sequence, which needs `answers`). The extra
    sequences are appended to `result` in place (round 1) and `result` is returned.
    cluster: an `eager_cpp.distributed.RayWorkers` pool (or "local" / a Ray address) to run phase (c) on.
    """
    if method not in ("eager_adapt", "eager"):
        raise ValueError(f'reallocate needs method "eager_adapt" or "eager", got {method!r}')
    if result.settings.get("method") != "eager_init":
        raise ValueError("reallocate takes the result of an eager_init run")
    if method == "eager" and answers is None and any(p.gold_answer is None for p in result.prompts):
        raise ValueError('method="eager" needs answers= (one gold answer per prompt)')
    if cluster is not None:
        from .distributed import reallocate_distributed

        return reallocate_distributed(model, result, method, answers, scorer, progress, cluster=cluster)
    settings = _settings_from_dict(result.settings)
    settings.method = method
    llm = model if isinstance(model, Model) else Model(model)
    _bind_to_model(settings, llm)
    if answers is not None:
        _score(result.prompts, list(answers), scorer)
    tokens = [_tokenize(llm, p.prompt, settings, p.index) for p in result.prompts]
    reporter = _make_reporter(progress)
    started = time.perf_counter()
    stats = result.stats
    stats.method = method
    _reallocate(llm, settings, result.prompts, tokens, stats, answers, scorer, reporter)
    _finish(stats, result.prompts, stats.wall_seconds + time.perf_counter() - started, reporter)
    result.settings["method"] = method
    return result


def _reallocate(llm: Model, settings: _Settings, results: list[PromptResult], tokens: list[list[int]],
                stats: RunStats, answers: Optional[list[Any]], scorer: Optional[Callable[[str, str], bool]],
                reporter: Optional["_Reporter"]) -> None:
    """Phase (b): a pure plan from the summaries; phase (c): the extra sequences, batched."""
    plan = plan_reallocation(summarize(results, settings.theta), settings.max_sequences, settings.method)
    position = {p.index: k for k, p in enumerate(results)}
    extra_jobs, extra_positions = [], []
    for extra in plan.extras:
        k = position[extra.index]
        base = len(results[k].sequences)
        extra_jobs.append(_core.PromptJob(tokens[k], extra.extra_sequences, extra.theta, extra.index, base))
        extra_positions.append(k)
    if extra_jobs:
        _run_phase(llm, settings, extra_jobs, extra_positions, results, stats, round_index=1, reporter=reporter)
        stats.rounds = 2
        if answers is not None:
            _score(results, answers, scorer)
    stats.reallocated_sequences = sum(1 for p in results for s in p.sequences if s.round > 0)


def _run_extras(llm: Model, settings: dict[str, Any], extras: Seq[tuple[int, str, int, float, int]],
                progress: Union[None, bool, ProgressCallback] = None) -> RunResult:
    """Phase (c) for given extras, on this process (what a Ray worker runs).

    extras: (prompt index, prompt text, extra sequences, θ, index of its first new sequence).
    Returns one PromptResult per extra holding only the new round-1 sequences (indices from the
    base on, as `_reallocate` would number them); the caller appends them to its prompts.
    """
    s = _settings_from_dict(settings)
    _bind_to_model(s, llm)
    reporter = _make_reporter(progress)
    started = time.perf_counter()
    tokens = [_tokenize(llm, prompt, s, index) for index, prompt, _, _, _ in extras]
    results = [PromptResult(index=e[0], prompt=e[1], sequences=[], prompt_tokens=len(t)) for e, t in zip(extras, tokens)]
    jobs = [_core.PromptJob(t, n, theta, index, base) for (index, _, n, theta, base), t in zip(extras, tokens)]
    stats = RunStats(method=s.method)
    if jobs:
        _run_phase(llm, s, jobs, list(range(len(jobs))), results, stats, round_index=1, reporter=reporter)
    _finish(stats, results, time.perf_counter() - started, reporter)
    return RunResult(prompts=results, stats=stats, settings=dict(settings))


def _bind_to_model(settings: _Settings, llm: Model) -> None:
    """Rebuilt settings take the context size and threads of the model they will run on."""
    settings.config.n_ctx = llm.n_ctx or 0
    settings.config.n_threads = llm.n_threads or 0


def _count(stats: RunStats, prompts: list[PromptResult]) -> None:
    """#S and #T over the prompts, as every entry point (and the Ray driver) reports them."""
    stats.sequences = sum(p.n_sequences for p in prompts)
    stats.generated_tokens = sum(p.generated_tokens for p in prompts)


def _finish(stats: RunStats, prompts: list[PromptResult], wall_seconds: float, reporter: Optional["_Reporter"]) -> None:
    """The totals every entry point reports, and the end of its progress line."""
    _count(stats, prompts)
    stats.wall_seconds = wall_seconds
    if reporter is not None:
        reporter.finish()


def summarize(results: list[PromptResult], theta: float) -> list[PromptSummary]:
    """Phase (a) → the planner's input: nᵢ per prompt and whether any sequence is correct."""
    out = []
    for p in results:
        solved = None if p.gold_answer is None else any(bool(s.correct) for s in p.sequences)
        out.append(PromptSummary(index=p.index, sequences=p.n_sequences, solved=solved, theta=theta))
    return out


def _run_phase(llm: Model, settings: _Settings, jobs: list, positions: list[int], results: list[PromptResult],
               stats: RunStats, round_index: int, reporter: Optional["_Reporter"]) -> None:
    cfg = settings.config
    if settings.method == "parallel":
        cfg.method = _core.Method.PARALLEL
    else:
        cfg.method = _core.Method.EAGER_INIT
    callback = reporter.update if reporter is not None else None
    out = _core.generate(llm._model, cfg, jobs, callback)
    for job, position, core_prompt in zip(jobs, positions, out.prompts):
        _append_sequences(results[position], core_prompt, round_index, job.sequence_index_base)
    s = out.stats
    stats.prompt_tokens += s.prompt_tokens
    stats.prefill_seconds += s.prefill_seconds
    stats.decode_seconds += s.decode_seconds
    stats.row_kernel_seconds += s.row_kernel_seconds
    stats.bookkeeping_seconds += s.bookkeeping_seconds
    stats.steps += s.steps
    stats.max_live_sequences = max(stats.max_live_sequences, s.max_live_sequences)
    stats.device_dropped_mass_max = max(stats.device_dropped_mass_max, s.device_dropped_mass_max)


def _append_sequences(prompt: PromptResult, core_prompt: Any, round_index: int, base: int) -> None:
    """Turn the engine's sequences into result Sequences: full token_ids from the parent chain.

    A parent is always in the same engine run, so it is found among the sequences this call appends
    (`prompt` may hold only those, as in `_run_extras`, or the earlier rounds too).
    """
    start = len(prompt.sequences)
    for local, cs in enumerate(core_prompt.sequences):
        parent = None if cs.parent < 0 else cs.parent + base
        own = list(cs.own_tokens)
        inherited = prompt.sequences[start + cs.parent].token_ids[: cs.branch_step] if parent is not None else []
        prompt.sequences.append(
            Sequence(
                index=base + local,
                text=cs.text.decode("utf-8", errors="replace"),
                token_ids=inherited + own,
                own_tokens=own,
                entropies=[float(h) for h in cs.entropies],
                parent=parent,
                branch_step=cs.branch_step,
                finish_reason=cs.finish_reason,
                round=round_index,
                branch_entropy=float(cs.branch_entropy) if parent is not None else None,
            )
        )


def _score(results: list[PromptResult], answers: list[Any], scorer: Optional[Callable[[str, str], bool]]) -> None:
    RunResult(prompts=results, stats=RunStats(method="")).score([str(a) for a in answers], scorer)


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not a single string (wrap it: [prompt])")
    try:
        prompts = list(prompts)
    except TypeError:
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}") from None
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} is {type(p).__name__}, expected str")
        if not p:
            raise ValueError(f"prompt {i} is empty")
    return prompts


def _check_indices(indices: Optional[Seq[int]], n: int) -> list[int]:
    if indices is None:
        return list(range(n))
    out = list(indices)
    if len(out) != n:
        raise ValueError(f"got {len(out)} prompt_indices for {n} prompts")
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in out) or len(set(out)) != n:
        raise ValueError("prompt_indices must be distinct non-negative ints")
    return out


def _check_int(name: str, value: Any, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _check_float(name: str, value: Any, low: float, allow_equal: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v) or v < low or (not allow_equal and v == low):
        raise ValueError(f"{name} must be {'>=' if allow_equal else '>'} {low}, got {value}")
    return v


def _check_settings(method, max_sequences, theta, temperature, top_k_entropy, max_new_tokens, seed, stop,
                    record_entropies, top_k, top_p, min_p, entropy_after_temperature, think_end_marker,
                    no_branch_window, threshold_mode, chat, chat_template, max_live_sequences, ignore_eos,
                    n_ctx, n_threads) -> _Settings:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    _check_int("max_sequences", max_sequences, 1, MAX_SEQUENCES_LIMIT)
    theta = _check_float("entropy_threshold", theta, 0.0)
    temperature = _check_float("temperature", temperature, 0.0)
    if math.isinf(temperature):
        raise ValueError("temperature must be finite")
    _check_int("top_k_entropy", top_k_entropy, 2, 64)
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("seed", seed, 0)
    _check_int("top_k", top_k, 0)
    top_p = _check_float("top_p", top_p, 0.0, allow_equal=False)
    if top_p > 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    min_p = _check_float("min_p", min_p, 0.0)
    if min_p > 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    _check_int("no_branch_window", no_branch_window, 1)
    _check_int("max_live_sequences", max_live_sequences, 1, MAX_SEQUENCES_LIMIT)
    if threshold_mode not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold_mode {threshold_mode!r}; expected 'fixed' or 'p99'")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    else:
        stops = list(stop)
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError("stop must be a non-empty string or a list of non-empty strings")
    if think_end_marker is not None and not isinstance(think_end_marker, str):
        raise TypeError("think_end_marker must be a string or None")
    if n_ctx is not None:
        _check_int("n_ctx", n_ctx, 1)
    if n_threads is not None:
        _check_int("n_threads", n_threads, 1)

    cfg = _core.EngineConfig()
    cfg.max_new_tokens = max_new_tokens
    cfg.seed = seed
    cfg.sampling.temperature = temperature
    cfg.sampling.top_k = top_k
    cfg.sampling.top_p = top_p
    cfg.sampling.min_p = min_p
    cfg.entropy_k = top_k_entropy
    cfg.entropy_after_temperature = bool(entropy_after_temperature)
    cfg.record_entropies = bool(record_entropies)
    cfg.stop = stops
    cfg.think_end_marker = think_end_marker or ""
    cfg.no_branch_window = no_branch_window
    cfg.threshold_mode = THRESHOLD_MODES[threshold_mode]
    cfg.max_live_sequences = max_live_sequences
    cfg.ignore_eos = bool(ignore_eos)
    cfg.n_ctx = n_ctx or 0
    cfg.n_threads = n_threads or 0
    return _Settings(method, max_sequences, theta, cfg, bool(chat), chat_template)


def _set_device_path(cfg: Any, llm: Model, device_topk: Optional[bool], device_candidates: int) -> None:
    cfg.device_topk = llm.offloaded if device_topk is None else device_topk
    cfg.device_candidates = device_candidates
    if cfg.device_topk and device_candidates < cfg.entropy_k:
        raise ValueError(f"device_candidates={device_candidates} must be at least top_k_entropy={cfg.entropy_k}")
    if cfg.device_topk and cfg.sampling.top_k > device_candidates:
        raise ValueError(f"top_k={cfg.sampling.top_k} exceeds device_candidates={device_candidates}; "
                         "raise device_candidates")


def _tokenize(llm: Model, prompt: str, settings: _Settings, index: int) -> list[int]:
    text = llm.format_chat(prompt, settings.chat_template) if settings.chat else prompt
    tokens = llm.tokenize(text)
    limit = llm.n_ctx_train
    need = len(tokens) + settings.config.max_new_tokens
    if need > limit:
        raise ValueError(
            f"prompt {index} is {len(tokens)} tokens; with max_new_tokens={settings.config.max_new_tokens} a "
            f"sequence would need {need} positions, beyond the model's context of {limit}"
        )
    return tokens


def _settings_dict(settings: _Settings, n_prompts: int) -> dict[str, Any]:
    """Every option that shapes the samples, enough to rebuild the run's settings."""
    c = settings.config
    return {
        "method": settings.method,
        "max_sequences": settings.max_sequences,
        "entropy_threshold": settings.theta,
        "temperature": c.sampling.temperature,
        "top_k_entropy": c.entropy_k,
        "max_new_tokens": c.max_new_tokens,
        "seed": c.seed,
        "stop": list(c.stop),
        "record_entropies": c.record_entropies,
        "top_k": c.sampling.top_k,
        "top_p": c.sampling.top_p,
        "min_p": c.sampling.min_p,
        "entropy_after_temperature": c.entropy_after_temperature,
        "think_end_marker": c.think_end_marker or None,
        "no_branch_window": c.no_branch_window,
        "threshold_mode": "p99" if c.threshold_mode == _core.ThresholdMode.P99 else "fixed",
        "chat": settings.chat,
        "chat_template": settings.chat_template,
        "max_live_sequences": c.max_live_sequences,
        "ignore_eos": c.ignore_eos,
        "device_topk": c.device_topk,
        "device_candidates": c.device_candidates,
        "n_prompts": n_prompts,
    }


def _settings_from_dict(d: dict[str, Any]) -> _Settings:
    settings = _check_settings(
        d["method"], d["max_sequences"], d["entropy_threshold"], d["temperature"], d["top_k_entropy"],
        d["max_new_tokens"], d["seed"], d["stop"], d["record_entropies"], d["top_k"], d["top_p"], d["min_p"],
        d["entropy_after_temperature"], d["think_end_marker"], d["no_branch_window"], d["threshold_mode"],
        d["chat"], d["chat_template"], d["max_live_sequences"], d["ignore_eos"], None, None,
    )
    # Results written before the device path existed ran on the host kernel.
    settings.config.device_topk = bool(d.get("device_topk", False))
    settings.config.device_candidates = int(d.get("device_candidates", 1024))
    return settings


class _Reporter:
    """Progress on long runs: a user callback, or a throttled status line on stderr."""

    def __init__(self, callback: Optional[ProgressCallback]) -> None:
        self.callback = callback
        self.last = 0.0
        self.printed = False

    def update(self, done: int, total: int, live: int, tokens: int, seconds: float) -> None:
        info = {"prompts_done": done, "prompts_total": total, "live_sequences": live,
                "generated_tokens": tokens, "elapsed_seconds": seconds,
                "tokens_per_second": tokens / seconds if seconds > 0 else 0.0}
        if self.callback is not None:
            self.callback(info)
            return
        now = time.monotonic()
        if now - self.last < 0.5 and done < total:
            return
        self.last = now
        self.printed = True
        sys.stderr.write(f"\r[eager_cpp] prompts {done}/{total} | live {live:3d} | {tokens} tokens | "
                         f"{info['tokens_per_second']:.1f} tok/s ")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.printed:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _make_reporter(progress: Union[None, bool, ProgressCallback]) -> Optional[_Reporter]:
    if progress is None or progress is False:
        return None
    if progress is True:
        return _Reporter(None)
    if callable(progress):
        return _Reporter(progress)
    raise TypeError("progress must be None, True/False or a callable taking a dict")
