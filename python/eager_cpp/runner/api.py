"""`eager_cpp.run` and `eager_cpp.reallocate`: the input checked, then `driver.drive`.

The run itself (the executor chosen from the options, the pre-check, the phases, the totals) is
`driver.drive`, the same for both and for every executor: the engine in this process
(`local.LocalExecutor`) or Ray actors (`distributed`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any, Callable, Optional, Sequence as Seq, Union

from ..answers.scoring import default_scorer
from ..method.budget import PromptSummary
from .driver import drive
from ..engine.model import Model
from ..core.options import RunOptions
from ..method.phases import summarize as _summarize
from ..core.progress import ProgressArg
from ..core.results import PromptResult, RunResult
from ..core.vocabulary import METHODS, REALLOCATING_METHODS, Method

__all__ = ["METHODS", "reallocate", "run", "summarize"]

_DEFAULTS = RunOptions()  # the signature's defaults are the options' (one default per option)


def run(
    model: Union[str, "os.PathLike[str]", Model],
    prompts: Seq[str],
    method: str = _DEFAULTS.method,
    max_sequences: Optional[int] = None,
    entropy_threshold: Optional[float] = None,
    temperature: Optional[float] = None,
    top_k_entropy: Optional[int] = None,
    max_new_tokens: Optional[int] = None,
    seed: int = _DEFAULTS.seed,
    answers: Optional[Seq[Any]] = None,
    scorer: Union[None, str, Callable[[str, str], bool]] = None,
    stop: Optional[Union[str, Seq[str]]] = None,
    record_entropies: bool = _DEFAULTS.record_entropies,
    *,
    progress: ProgressArg = None,
    prompt_indices: Optional[Seq[int]] = None,
    n_gpu_layers: int = _DEFAULTS.n_gpu_layers,
    cluster: Any = None,
    workers: Optional[int] = None,
    threads_per_worker: Optional[int] = None,
    **options: Any,
) -> RunResult:
    """Generate up to `max_sequences` samples per prompt with EAGer or Full Parallel.

    method: "parallel" (M independent samples), "eager_init" (branch where top-K entropy >
    entropy_threshold), "eager_adapt" (EAGer-init, then the saved budget goes to prompts that
    reached M), "eager" (the saved budget goes to prompts with no correct sequence; needs answers),
    "eager_label_free" (no labels: the saved budget goes to prompts whose answers disagree or whose
    traces are unsure, in proportion to that doubt; budget.plan_label_free; `scorer`'s extract()
    reads the answers when given, else the "auto" extractor; option label_free_signals picks the signals).
    reallocation (option): how the reallocating methods spend the saved budget: "fresh" (new
    EAGer-init runs from the prompt, the paper's) or "tree" (each extra continues the prompt's tree
    at its highest-entropy branch point with the best token not yet taken there; eager_cpp.method.tree).
    max_sequences (M), entropy_threshold (θ), temperature, top_k_entropy (K), max_new_tokens: None takes the
    preset's value, else RunOptions' default (8, 2.0, 0.6, 20, 512).
    preset (option): "paper" sets the paper's and the reference code's settings (chat template, M 32, 32,768
    tokens, T 0.6, θ 2.5 with the p99 floor, the reference's rules; `options.PRESETS`); options given
    explicitly override it.
    rules (option): "eager_cpp" (default) or "reference", the authors' code's cap check, answer matching
    and retry loop (docs/method.md, "Reference rules").
    scorer: a callable (text, answer) -> bool (optionally with extract(text)), or a name of
    `eager_cpp.answers.scoring.SCORERS`: an extraction style ("auto", "boxed", "gsm8k", "number", "first_line")
    or "math_verify" (math-verify's parse and verify; pip install "eager_cpp[math-verify]"). None: "auto".
    options: any other field of `eager_cpp.RunOptions` by name (reallocation, label_free_signals, top_k, top_p,
    min_p, entropy_after_temperature, think_end_marker, no_branch_window, threshold_mode, chat,
    chat_template, max_live_sequences, ignore_eos, device_topk, device_candidates, n_ctx, kv_memory, kv_layout,
    n_threads, share_prompt_prefixes).
    device_topk: select each row's top `device_candidates` tokens and its entropy in the model's
    compute graph, so only those leave the GPU (None: on when the model is offloaded).
    prompt_indices: the indices results carry and random streams derive from (default 0..N-1);
    a shard of a larger set passes its global indices so its samples match an unsharded run.
    share_prompt_prefixes (off by default): a prompt copies the KV cells of the whole 64-token blocks
    it shares with the prompt admitted before it instead of prefilling them (few-shot headers). Faster,
    but its samples then depend, by floating-point noise, on the prompt before it: a shard (or another
    prompt order) no longer reproduces the unsharded run for prompts that share 64 tokens or more.
    n_gpu_layers: layers to offload when `model` is a path (-1: all; needs a GPU-enabled llama.cpp).
    cluster: None (this process), "local" (start Ray on this machine), a Ray address, or an
    `eager_cpp.runner.distributed.RayWorkers` pool: the phases then run on Ray Data actor pools (`workers`
    actors, `threads_per_worker` threads each); see eager_cpp.runner.distributed. Needs `pip install "eager_cpp[ray]"`.
    A Model runs one generation at a time: calls from several threads take turns.
    Returns a RunResult (docs/api.md; the method in docs/method.md).
    """
    unset_takes_default = dict(max_sequences=max_sequences, entropy_threshold=entropy_threshold,
                               temperature=temperature, top_k_entropy=top_k_entropy, max_new_tokens=max_new_tokens)
    opts = RunOptions.create(method=method, seed=seed, stop=stop, record_entropies=record_entropies,
                             n_gpu_layers=n_gpu_layers, cluster=cluster, workers=workers,
                             threads_per_worker=threads_per_worker,
                             **{k: v for k, v in unset_takes_default.items() if v is not None}, **options)
    prompts = _check_prompts(prompts)
    indices = _check_indices(prompt_indices, len(prompts))
    scorer = _named_scorer(scorer)
    answers = _check_answers(opts, answers, scorer, len(prompts))
    shells = [PromptResult(index=i, prompt=p, sequences=[], prompt_tokens=0) for i, p in zip(indices, prompts)]
    return drive(model, opts, shells, answers, scorer, progress)


def reallocate(
    model: Union[str, "os.PathLike[str]", Model],
    result: RunResult,
    method: str = "eager_adapt",
    answers: Optional[Seq[Any]] = None,
    scorer: Union[None, str, Callable[[str, str], bool]] = None,
    progress: ProgressArg = None,
    cluster: Any = None,
    **placement: Any,
) -> RunResult:
    """Phases (b) and (c) on the result of an EAGer-init run (possibly gathered from shards).

    The saved budget of `result` goes to the prompts `method` selects ("eager_adapt": those
    that reached M; "eager": those with no correct sequence, which needs `answers`; "eager_label_free":
    those whose own answers and entropies show doubt, no labels read). The extra
    sequences are appended to `result` in place (round t for the t-th try) and `result` is returned.
    Before anything runs, `result` is checked: its token ids against the model's vocabulary, and each
    prompt's sequences for the tree a run makes (``results.check_structure``): a ValueError naming the
    prompt and the sequence otherwise.
    cluster: an `eager_cpp.runner.distributed.RayWorkers` pool (or "local" / a Ray address) to run phase (c) on.
    placement: where it runs, by name as `run` takes them (n_ctx, n_threads, kv_memory, kv_layout, n_gpu_layers,
    workers, threads_per_worker); the result records none of them.
    """
    if method not in REALLOCATING_METHODS:
        raise ValueError(f"reallocate needs method {' or '.join(map(repr, REALLOCATING_METHODS))}, got {method!r}")
    if not isinstance(result, RunResult):
        raise TypeError(f"reallocate takes the RunResult of an eager_init run, got {type(result).__name__}")
    if result.settings.get("method") != Method.EAGER_INIT:
        raise ValueError("reallocate takes the result of an eager_init run")
    if Method(method).needs_labels and answers is None and any(p.gold_answer is None for p in result.prompts):
        raise ValueError('method="eager" needs answers= (one gold answer per prompt)')
    where = RunOptions.with_role("placement") + RunOptions.with_role("driver")
    unknown = sorted(set(placement) - set(where) - {"cluster"})
    if unknown:  # anything else would make the extras differ from the run they extend
        raise TypeError(f"reallocate takes only where it runs ({', '.join(where)}), "
                        f"not {', '.join(map(repr, unknown))}")
    opts = replace(RunOptions.from_recorded(result.settings), method=method, cluster=cluster, **placement).validate()
    if answers is None and result.prompts and all(p.gold_answer is not None for p in result.prompts):
        answers = [p.gold_answer for p in result.prompts]  # the labels the result was scored with
    scorer = _named_scorer(scorer)
    answers = _check_answers(opts, answers, scorer, len(result.prompts), required=False)
    done = drive(model, opts, result.prompts, answers, scorer, progress, pending=(), stats=result.stats)
    result.reallocation = done.reallocation
    result.settings["method"] = method
    return result


def _named_scorer(scorer: Any) -> Any:
    """A scorer name (scoring.SCORERS) as its scorer; anything else as given (checked by _check_answers)."""
    return default_scorer(scorer) if isinstance(scorer, str) else scorer


def _check_answers(opts: RunOptions, answers: Optional[Seq[Any]], scorer: Any, n: int,
                   required: bool = True) -> Optional[list[Any]]:
    if scorer is not None and not callable(scorer):
        raise TypeError("scorer must be a callable (text, answer) -> bool, or a scorer name "
                        "(eager_cpp.answers.scoring.SCORERS)")
    if answers is None:
        if Method(opts.method).needs_labels and required:
            raise ValueError('method="eager" needs answers= (one gold answer per prompt); '
                             'use "eager_adapt" without labels')
        return None
    if isinstance(answers, (str, bytes)):
        raise TypeError("answers must be a list (one gold answer per prompt), not a single string")
    try:
        answers = list(answers)
    except TypeError:
        raise TypeError(f"answers must be a list, got {type(answers).__name__}") from None
    if len(answers) != n:
        raise ValueError(f"got {len(answers)} answers for {n} prompts")
    return answers


def summarize(results: list[PromptResult], theta: float, rules: str = "eager_cpp") -> list[PromptSummary]:
    """Phase (a) -> the planner's input: nᵢ per prompt and whether it is solved (by `rules`' test)."""
    return _summarize(results, theta, rules)


def _check_prompts(prompts: Any) -> list[str]:
    if isinstance(prompts, (str, bytes, bytearray)):
        kind = "a single string (wrap it: [prompt])" if isinstance(prompts, str) else "bytes (decode them to str)"
        raise TypeError(f"prompts must be a list of strings, not {kind}")
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
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"prompt {i} is not valid Unicode text ({e.reason} at character {e.start})") from None
    return prompts


def _check_indices(indices: Optional[Seq[int]], n: int) -> list[int]:
    if indices is None:
        return list(range(n))
    out = list(indices)
    if len(out) != n:
        raise ValueError(f"got {len(out)} prompt_indices for {n} prompts")
    if any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 2**63 for i in out) or len(set(out)) != n:
        raise ValueError("prompt_indices must be distinct ints in [0, 2**63)")
    return out
