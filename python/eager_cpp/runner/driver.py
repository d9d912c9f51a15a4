"""The one driver of a run: the executor chosen once, then pre-check, phases, totals and wall time.

`api.run`, `api.reallocate` and the CLI's `run` command all come here. ``drive`` takes the run's
``RunOptions`` (the executor follows from ``options.cluster``: this process, or Ray actors, Ray
imported only then), the prompts as ``PromptResult``s (those with phase (a) done are not run again:
a result handed to `reallocate`, a resumed CLI run) and returns the ``RunResult``:

1. pre-check: every prompt tokenized as the run will, token ids of sequences already made checked
   against the vocabulary and their trees' structure (``results.check_structure``), a reallocation's
   largest try fitted to a fixed context, all before any engine run, so nothing fails after phase (a)
   was paid for;
2. the phases (``phases.run_phases``: phase (a) in chunks with a callback after each, the plan, the tries);
3. the wall time (from phase (a) on) and the executor's own figures (the phases count #S and #T).

With a ``store`` (``phases.ResultStore``: the CLI's output file, which `on_chunk` writes), the returned
result's prompts keep no sequences: they are in the store, and the run's memory holds summaries. The
prompts may then be a ``ledger.PromptTable`` (the CLI's input file), which holds none: the checks read them
one at a time.
"""

from __future__ import annotations

import os
import time

import numpy as np
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional, Sequence as Seq, Union

from ..core.jobs import Executor
from ..engine.local import LocalExecutor
from ..engine.model import Model
from ..core.options import RunOptions, check_extras_fit
from ..method.ledger import Prompts, whole_prompt
from ..method.phases import ChunkDone, ResultStore, run_phases
from ..core.progress import ProgressArg, ProgressSink
from ..answers.reference import ReferenceScorer
from ..core.results import PromptResult, RunResult, RunStats, check_structure

__all__ = ["drive", "open_executor"]

ModelArg = Union[str, "os.PathLike[str]", Model]


@contextmanager
def open_executor(model: ModelArg, options: RunOptions) -> Iterator[Executor]:
    """Where the run's jobs execute, chosen once from `options.cluster`: None runs them on the engine in
    this process (`model` loaded with the options' placement when it is a path); anything else on Ray
    actors (eager_cpp.runner.distributed, imported only here; a pool started for the run is closed after it)."""
    if options.cluster is None:
        llm = model if isinstance(model, Model) else Model(model, n_ctx=options.n_ctx, n_threads=options.n_threads,
                                                              n_gpu_layers=options.n_gpu_layers,
                                                              kv_memory=options.kv_memory)
        yield LocalExecutor(llm, options)
        return
    from .distributed import RayExecutor, open_pool

    with open_pool(model, options) as pool:
        yield RayExecutor(pool, options)


def drive(model: ModelArg, options: RunOptions, prompts: Prompts, answers: Optional[Seq[Any]],
          scorer: Optional[Callable[[str, str], bool]], progress: ProgressArg, *, pending: Optional[Seq[int]] = None,
          stats: Optional[RunStats] = None, chunk_size: Optional[int] = None,
          on_chunk: Optional[ChunkDone] = None, store: Optional[ResultStore] = None) -> RunResult:
    """One run of `options` over `prompts` (module docstring); `prompts` and `stats` grow in place.

    pending: positions in `prompts` whose phase (a) runs (default: all). stats: the figures so far (a
    reallocation continues its phase (a)'s). chunk_size / on_chunk: phase (a) in engine runs of that
    many prompts, `on_chunk(prompts of the chunk)` after each (the CLI's checkpoint). store: where
    `on_chunk` made them durable (module docstring).
    """
    sink = ProgressSink(progress)  # a bad progress= fails here, before a model loads or a worker starts
    if options.rules == "reference" and not isinstance(scorer, ReferenceScorer):
        scorer = ReferenceScorer(scorer)  # the scorer's answers, the reference's verdicts
    stats = stats if stats is not None else RunStats(method=options.method)
    stats.method = options.method
    with open_executor(model, options) as executor:
        longest, n_vocab = executor.check((p.index, p.prompt) for p in (prompts[k] for k in range(len(prompts))))
        reused = np.full(len(prompts), pending is not None, dtype=bool)
        if pending is not None:
            reused[np.asarray(pending, dtype=np.int64)] = False
        for k in np.flatnonzero(reused).tolist():  # what reallocation will build on, one prompt at a time
            prompt = whole_prompt(prompts, store, k)
            _check_token_ids([prompt], n_vocab)
            check_structure([prompt])
        del reused
        check_extras_fit(options, executor.n_ctx, longest)
        started = time.perf_counter()
        try:
            outcome = run_phases(executor, options, prompts, stats, answers, scorer, sink if sink.active else None,
                                 pending=pending, chunk_size=chunk_size, on_chunk=on_chunk, store=store)
        finally:
            sink.close()
        elapsed = time.perf_counter() - started
        stats.wall_seconds += elapsed
        executor.account(stats, elapsed, outcome)
        settings = executor.recorded(len(prompts))
    return RunResult(prompts=prompts, stats=stats, settings=settings, reallocation=outcome)


def _check_token_ids(prompts: list[PromptResult], n_vocab: int) -> None:
    """Sequences made before this run (edited, or read from a file) hold only token ids of this model:
    one that is not is a ValueError before anything runs, not a failed try after its phase (a)."""
    for p in prompts:
        for s in p.sequences:
            for t in s.token_ids:
                if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_vocab:
                    raise ValueError(f"prompt {p.index}: sequence {s.index} has a token id outside the vocabulary "
                                     f"[0, {n_vocab}): {t!r}")
