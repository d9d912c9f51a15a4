"""The phases of a run, whatever executes them: this process's engine or Ray actors.

(a) One engine run over every prompt: EAGer-init from one sequence each, or Full Parallel.
(b) ``budget.plan_reallocation`` on per-prompt summaries: the saved budget b = M*N - sum(n_i) as eᵢ
    extra sequences for the prompts the method selects (a pure function); for ``eager_label_free``,
    ``budget.plan_label_free`` on ``signals_of`` the results (their own answers and entropies, no labels).
(c) The extras, tried until spent: each try runs EAGer-init on every prompt still short of its eᵢ,
    all batched together, capped at what it still lacks (so the total is exactly eᵢ, never more);
    the threshold of try t follows ``budget.retry_theta`` (the plan's decaying set, chosen once);
    after ``MAX_TRIES`` what is left is reported as unspent. Random streams continue per prompt (a
    try's first stream follows every stream the prompt used before), so the same jobs give the same
    samples on any executor.
    With ``reallocation="tree"`` a try does not start fresh: each extra continues the prompt's tree at
    a branch point ``tree.choose_branch_points`` picks (a ``Seed``: the point's prefix, the tokens taken
    there, a rank), so one try produces the eᵢ it was given, less the seeds the engine reports
    "unavailable" (no token the run's sampling filters allow is left at the point): those are dropped
    and stay unspent.
    A try that fails (any Exception) ends phase (c): what earlier phases made is kept and returned,
    the error is in ``ReallocationOutcome.error`` and ``RunStats.reallocation_error`` and warned about.
    A scorer that raises on phase (a)'s text (scoring it, or ``extract`` read by the label-free plan)
    ends phase (c) the same way before its first try: phase (a) kept, the whole budget unspent.

Phase (a) may run in chunks of prompts (one engine run each), with a callback after each: the CLI
checkpoints there. The tries then run in chunks too, each holding at most the sequences of a phase (a) chunk
(each chunk's sequences merged, scored and kept as it comes back), so neither a try's jobs nor its output
are ever held for every prompt at once, and no try's engine step is wider than phase (a)'s. Prompts whose
phase (a) is already done (a result handed to ``reallocate``, a resumed CLI run) are not run again.
``driver.drive`` is the one caller; it checks and times.
With a ``ResultStore`` (the CLI's output file) the prompts keep only their summaries once the callback has
made their chunk durable, and the tries' sequences go to the store (``ledger.PromptLedger``): a run's memory
then holds a summary per prompt, not its sequences. The prompts may then be a ``ledger.PromptTable``, which
holds no prompt at all: only a chunk's prompts are in memory while it runs.

An executor (``jobs.Executor``) runs a list of ``PhaseJob``s and returns, per job, the job's new
sequences. This module never imports the native extension or Ray: ``local.LocalExecutor`` and the
Ray executor in ``distributed`` implement it.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence as Seq

from .budget import (PromptExtra, PromptSignals, PromptSummary, ReallocationPlan, plan_label_free, plan_reallocation,
                     retry_theta)
from ..core.jobs import Executor, PhaseJob, PhaseOutput, ProgressFn, Seed, run_chunks
from .ledger import PromptLedger, Prompts, ResultStore, score, signals_of, summarize
from ..core.options import RunOptions
from ..core.results import PromptResult, RunStats
from .tree import branch_points, choose_branch_points, last_branch_step, ranked_limit
from ..core.vocabulary import MAX_SEQUENCES, MAX_TRIES, Method

__all__ = ["Executor", "PhaseJob", "PhaseOutput", "ReallocationOutcome", "ReallocationWarning", "ResultStore", "Seed",
           "merge", "reallocate_phases", "run_phases", "score", "signals_of", "summarize", "tree_seeds"]

Scorer = Callable[[str, str], bool]
ChunkDone = Callable[[list[PromptResult]], None]  # called with the prompts of each finished phase-(a) chunk


class ReallocationWarning(RuntimeWarning):
    """A reallocation try failed: the run returns what was made before it, the error reported."""


@dataclass
class ReallocationOutcome:
    """What phases (b) and (c) did: the plan, the tries, and the part of the budget left unspent."""

    plan: ReallocationPlan
    tries: int = 0
    granted: dict[int, int] = field(default_factory=dict)  # prompt index -> extra sequences planned
    produced: dict[int, int] = field(default_factory=dict)  # prompt index -> extra sequences made
    unavailable: int = 0  # tree seeds the engine could not start (no allowed token left at the point)
    error: Optional[str] = None  # the failure that ended phase (c) early, if one did

    @property
    def unspent(self) -> int:
        """Budget neither given (caps) nor produced (tries ran out); never below 0 (the reference's rules
        keep what a try overshoots)."""
        return max(0, self.plan.budget - sum(self.produced.values()))


def merge(results: list[PromptResult], jobs: Seq[PhaseJob], output: PhaseOutput) -> None:
    """Append each job's new sequences to its prompt's result, checking that every job came back once."""
    PromptLedger(results, None).merge(jobs, output)


def _reused(ledger: PromptLedger, options: RunOptions, todo: Seq[int], answers: Optional[Seq[Any]],
            scorer: Optional[Scorer]) -> Optional[str]:
    """The prompts whose phase (a) was done before (not in `todo`), one at a time: scored as the plan reads
    them (reallocating methods), then let go. Returns why scoring failed, if it did."""
    method, failed = Method(options.method), None
    is_pending = np.zeros(len(ledger.results), dtype=bool)
    is_pending[np.asarray(todo, dtype=np.int64)] = True
    for k in np.flatnonzero(~is_pending).tolist():
        prompt = ledger.whole(k)
        if method.reallocates and answers is not None and failed is None:
            try:
                score([prompt], [answers[k]], scorer)
            except Exception as e:  # noqa: BLE001 - a reallocating run keeps its phase (a), as a failed try does
                failed = f"scoring phase (a) failed: {type(e).__name__}: {e}"
        ledger.let_go([prompt], options, scorer, method.label_free)
    return failed


def run_phases(executor: Executor, options: RunOptions, results: Prompts, stats: RunStats,
               answers: Optional[Seq[Any]], scorer: Optional[Scorer], progress: Optional[ProgressFn],
               pending: Optional[Seq[int]] = None, chunk_size: Optional[int] = None,
               on_chunk: Optional[ChunkDone] = None, store: Optional[ResultStore] = None) -> Optional[ReallocationOutcome]:
    """Phase (a) for the prompts at positions `pending` of `results` (default: all), then (b) and (c)
    for the reallocating methods; `results` and `stats` (with the totals #S and #T) grow in place.

    answers: one per prompt of `results` (or None). Phase (a) runs `chunk_size` prompts per engine run
    (default: all at once) and scores each chunk before `on_chunk` sees it.
    store: where `on_chunk` made each chunk durable: the prompts then keep only their summaries
    (``ledger.PromptLedger``: no sequences in `results`, which may be a ``PromptTable``), and the tries' new
    sequences go to the store.
    """
    method = Method(options.method)
    ledger = PromptLedger(results, store)
    todo = range(len(results)) if pending is None else pending
    size = chunk_size or max(1, len(todo))
    scoring_error = _reused(ledger, options, todo, answers, scorer)
    starts = range(0, len(todo), size)
    # A chunk's prompts (made once: a table makes new ones each time) and jobs, from when the executor asks for
    # them to its output.
    sent: dict[int, tuple[list[PromptResult], list[PhaseJob]]] = {}

    def chunk_jobs() -> Iterator[list[PhaseJob]]:
        for start in starts:
            chunk = [results[int(k)] for k in todo[start:start + size]]
            jobs = [PhaseJob(index=p.index, prompt=p.prompt, max_sequences=options.max_sequences,
                             theta=options.entropy_threshold) for p in chunk]
            sent[start] = (chunk, jobs)
            yield jobs

    outputs = run_chunks(executor, chunk_jobs(), method.engine_method, progress)
    handed = 0
    try:
        for start, output in zip(starts, outputs):
            handed += 1
            chunk, jobs = sent.pop(start)
            ledger.merge(jobs, output, targets=chunk)
            stats.merge(output.stats)
            if answers is not None and scoring_error is None:
                try:
                    score(chunk, [answers[int(k)] for k in todo[start:start + size]], scorer)
                except Exception as e:  # noqa: BLE001 - a reallocating run keeps its phase (a), as a failed try does
                    if not method.reallocates:
                        raise
                    scoring_error = f"scoring phase (a) failed: {type(e).__name__}: {e}"
            if on_chunk is not None:
                on_chunk(chunk)
            ledger.let_go(chunk, options, scorer, method.label_free)
    finally:
        outputs.close()  # an error above ends the chunks still running (a Ray dispatch)
    if handed != len(starts):  # zip stops at the shorter: a chunk without its output would be skipped silently
        raise RuntimeError(f"internal error: the executor returned {handed} of phase (a)'s {len(starts)} chunks")
    outcome = None
    if method.reallocates:
        outcome = reallocate_phases(executor, options, results, stats, answers, scorer, progress,
                                    failed=scoring_error, ledger=ledger, chunk_size=chunk_size)
    ledger.totals(stats)
    return outcome


def tree_seeds(prompt: PromptResult, n: int, no_branch_window: int, top_k: int = 0,
               max_new_tokens: Optional[int] = None, closed: Iterable[tuple[int, int]] = ()) -> tuple[Seed, ...]:
    """Up to `n` seeds that continue `prompt`'s tree at its highest-entropy untaken branch points.

    Only points a continuation can use: with room for an answer after them (``tree.last_branch_step``),
    not `closed` ((sequence, step) of points where a seed came back unavailable: the filters keep a
    most-likely-first prefix of the tokens, so no later rank is allowed there either), and ranks the
    engine and the run's top_k can offer (``tree.ranked_limit``).
    """
    by_index = {s.index: s for s in prompt.sequences}
    shut = set(closed)
    points = [p for p in branch_points(prompt.sequences, no_branch_window) if (p.sequence, p.step) not in shut]
    if max_new_tokens is not None:
        last = last_branch_step(max_new_tokens)
        points = [p for p in points if p.step <= last]
    seeds = []
    for choice in choose_branch_points(points, n, ranked_limit(top_k)):
        point = choice.point
        prefix = tuple(by_index[point.sequence].token_ids[: point.step])
        seeds.append(Seed(source=point.sequence, prefix=prefix, exclude=point.taken, rank=choice.rank))
    return tuple(seeds)


def _plan(options: RunOptions, ledger: PromptLedger, scorer: Optional[Scorer],
          failed: Optional[str]) -> tuple[ReallocationPlan, list[PromptSummary], Optional[str]]:
    """Phase (b): the plan from phase (a)'s summaries (or its signals, label-free); nothing planned when
    phase (a)'s answers could not be read (`failed`, or the scorer raising here)."""
    theta, max_sequences = options.entropy_threshold, options.max_sequences
    summaries = ledger.summaries(theta, options.rules)
    signals: Optional[list[PromptSignals]] = None
    if failed is None and Method(options.method).label_free:
        try:
            signals = ledger.signals(theta, scorer, options.no_branch_window, options.confidence_window)
        except Exception as e:  # noqa: BLE001 - the scorer's extract() failing on phase (a)'s text: as a failed try
            failed = f"reading phase (a)'s answers failed: {ledger.signals_failed or f'{type(e).__name__}: {e}'}"
    if failed is not None:
        budget = max(0, max_sequences * len(ledger.results) - sum(s.sequences for s in summaries))
        return ReallocationPlan(budget=budget, selected=(), extras=(), unused=budget), summaries, failed
    if signals is not None:
        # Label-free recipients; with no decaying set its tries follow adapt's θ rule, as EAGer-adapt's do.
        return plan_label_free(signals, max_sequences, use=options.label_free_signals), summaries, None
    return plan_reallocation(summaries, max_sequences, options.method), summaries, None


class _Tries:
    """Phase (c)'s state across tries: what each prompt of the plan still lacks, its θ, its random streams,
    its tree points with nothing left."""

    def __init__(self, options: RunOptions, ledger: PromptLedger, summaries: list[PromptSummary],
                 outcome: ReallocationOutcome) -> None:
        self.options, self.ledger, self.outcome = options, ledger, outcome
        results = self.results = ledger.results
        self.theta0 = {s.index: s.theta for s in summaries if s.index in outcome.granted}
        self.decaying = set(outcome.plan.decaying)
        # Random streams each prompt has used: its sequences so far (phase (a) drops none), then each try's.
        self.streams = {e.index: ledger.n_sequences(results[ledger.position(e.index)]) for e in outcome.plan.extras}
        # Tree points found with nothing left, of the prompts that have any.
        self.closed: dict[int, set[tuple[int, int]]] = {}
        # The reference's loop: every try asks the full eᵢ and keeps what it overshoots, until eᵢ are made.
        self.reference = options.rules == "reference"

    def lacking(self) -> list[PromptExtra]:
        """The plan's prompts still short of their eᵢ."""
        return [e for e in self.outcome.plan.extras if e.extra_sequences > self.outcome.produced[e.index]]

    def cap(self, e: PromptExtra) -> int:
        """The most sequences prompt `e` asks of the try (one engine run of a prompt holds at most MAX_SEQUENCES)."""
        lacking = e.extra_sequences - self.outcome.produced[e.index]
        return min(e.extra_sequences if self.reference else lacking, MAX_SEQUENCES)

    def chunked(self, extras: list[PromptExtra], chunk_size: Optional[int]) -> Iterator[list[PromptExtra]]:
        """`extras` in the engine runs of a try: all in one (no chunk_size), else each run holding at most the
        sequences of a phase (a) chunk (chunk_size x M), so a try's step is never wider than phase (a)'s (the
        engine's memory follows the sequences in a step: each needs a row of logits over the vocabulary)."""
        if not chunk_size:
            if extras:
                yield extras
            return
        room = chunk_size * self.options.max_sequences
        part: list[PromptExtra] = []
        held = 0
        for e in extras:
            cap = self.cap(e)
            if part and held + cap > room:
                yield part
                part, held = [], 0
            part.append(e)
            held += cap
        if part:
            yield part

    def jobs(self, attempt: int, extras: Seq[PromptExtra]) -> list[PhaseJob]:
        """The jobs of try `attempt` for `extras`: one per prompt still short of its eᵢ (tree: with a point left)."""
        o, jobs = self.options, []
        for e in extras:
            lacking = e.extra_sequences - self.outcome.produced[e.index]
            if lacking <= 0:
                continue
            p = self.results[self.ledger.position(e.index)]
            cap = self.cap(e)
            seeds = (tree_seeds(self.ledger.full(p), cap, o.no_branch_window, o.top_k, o.max_new_tokens,
                                self.closed.get(e.index, ()))
                     if o.reallocation == "tree" else ())
            if o.reallocation == "tree" and not seeds:
                continue  # no branch point left to continue: what it lacks stays unspent
            theta_t = retry_theta(self.theta0[e.index], attempt, e.index in self.decaying)
            jobs.append(PhaseJob(index=e.index, prompt=p.prompt, max_sequences=len(seeds) or cap, theta=theta_t,
                                 sequence_base=self.streams[e.index], round=attempt, seeds=seeds,
                                 first_index=self.ledger.n_sequences(p)))
        return jobs

    def record(self, jobs: list[PhaseJob], output: PhaseOutput) -> None:
        """What a try made, per prompt: sequences, streams used, seeds the engine found nothing at."""
        for k, job in enumerate(jobs):
            self.outcome.produced[job.index] += len(output.prompts[k].sequences)
            self.streams[job.index] += output.streams(k)
            for position_in_seeds in output.dropped(k):
                seed = job.seeds[position_in_seeds]
                self.closed.setdefault(job.index, set()).add((seed.source, len(seed.prefix)))
            self.outcome.unavailable += len(output.dropped(k))


def _record_stats(stats: RunStats, outcome: ReallocationOutcome, ledger: PromptLedger) -> None:
    total = ledger.total()
    stats.rounds = outcome.tries + 1
    stats.reallocated_sequences = total.extras
    stats.reallocated_length_ended = total.extras_length_ended
    stats.reallocation_tries = outcome.tries
    stats.reallocation_budget = outcome.plan.budget
    stats.unspent_sequences = outcome.unspent
    stats.unavailable_seeds = outcome.unavailable
    stats.reallocation_error = outcome.error or ""


def _one_try(executor: Executor, attempt: int, tries: _Tries, ledger: PromptLedger, stats: RunStats,
             answers: Optional[Seq[Any]], scorer: Optional[Scorer], progress: Optional[ProgressFn],
             chunk_size: Optional[int]) -> bool:
    """Try `attempt` over every prompt still short of its eᵢ, `chunk_size` prompts per engine run (default:
    all in one), each chunk's sequences merged, scored and kept as it comes back. A failure ends the try with
    ``outcome.error`` set, keeping the chunks before it. Returns whether the try had any job."""
    outcome, extras = tries.outcome, tries.lacking()
    sent: list[list[PhaseJob]] = []  # each chunk's jobs, from when the executor asks for them to its output
    unbuilt: list[BaseException] = []  # a failure to make a chunk's jobs: raised as itself, not a failed try

    def chunks() -> Iterator[list[PhaseJob]]:
        for part in tries.chunked(extras, chunk_size):
            try:
                jobs = tries.jobs(attempt, part)
            except BaseException as e:  # noqa: BLE001 - re-raised below, once the executor let go
                unbuilt.append(e)
                return
            if jobs:
                sent.append(jobs)
                yield jobs

    ran = False
    outputs = run_chunks(executor, chunks(), Method.EAGER_INIT.engine_method, progress)  # extras: EAGer-init runs
    try:
        while True:
            try:
                output = next(outputs, None)
                if output is None:
                    break
                jobs = sent.pop(0)
                ledger.merge(jobs, output)  # checks everything before it changes anything
            except Exception as e:  # noqa: BLE001 - any failure of a try: keep what earlier phases made
                outcome.error = f"reallocation try {attempt} failed: {type(e).__name__}: {e}"
                break
            ran = True
            stats.merge(output.stats)
            outcome.tries = attempt
            tries.record(jobs, output)
            try:  # the chunk's new sequences (those before it were scored)
                score(output.prompts, None if answers is None else [answers[ledger.position(j.index)] for j in jobs],
                      scorer)
            except Exception as e:  # noqa: BLE001 - a scorer failing on a try's text: the same
                outcome.error = f"scoring reallocation try {attempt} failed: {type(e).__name__}: {e}"
                break
            finally:
                ledger.keep(output)  # to the store, for prompts let go (scored as far as scoring went)
    finally:
        outputs.close()  # an error above ends the chunks still running (a Ray dispatch)
    if unbuilt:
        raise unbuilt[0]
    return ran


def reallocate_phases(executor: Executor, options: RunOptions, results: Prompts, stats: RunStats,
                      answers: Optional[Seq[Any]], scorer: Optional[Scorer], progress: Optional[ProgressFn],
                      max_tries: int = MAX_TRIES, failed: Optional[str] = None,
                      ledger: Optional[PromptLedger] = None, chunk_size: Optional[int] = None) -> ReallocationOutcome:
    """Phase (b), the plan, and phase (c), its extras tried until spent (module docstring).

    The options' top_k and max_new_tokens bound a tree point: it offers only ranks within both the
    engine's reach and top_k, and only while it leaves room for an answer.
    failed: why phase (a)'s answers could not be read (the scorer raised): then, as when the scorer
    raises while the label-free plan reads them, nothing is planned, the error is the outcome's and
    the whole budget is unspent. ledger: what run_phases keeps of `results` (default: them whole).
    chunk_size: the prompts of a try per engine run (default: all of them in one).
    """
    ledger = ledger if ledger is not None else PromptLedger(results, None)
    plan, summaries, failed = _plan(options, ledger, scorer, failed)
    outcome = ReallocationOutcome(plan=plan, granted={e.index: e.extra_sequences for e in plan.extras},
                                  produced={e.index: 0 for e in plan.extras}, error=failed)
    tries = _Tries(options, ledger, summaries, outcome)
    del summaries  # one a prompt: the plan is made
    # The reference's loop has no try cap (each try makes at least one sequence: at most eᵢ tries).
    for attempt in itertools.count(1) if tries.reference else range(1, max_tries + 1):
        ran = _one_try(executor, attempt, tries, ledger, stats, answers, scorer, progress, chunk_size)
        if not ran or outcome.error is not None:
            break
    if outcome.error is not None:
        warnings.warn(f"{outcome.error}; the result holds what phase (a) and the earlier tries made, the rest of "
                      "the budget is reported unspent", ReallocationWarning, stacklevel=2)
    _record_stats(stats, outcome, ledger)
    return outcome
