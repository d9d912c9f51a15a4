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
checkpoints there. Prompts whose phase (a) is already done (a result handed to ``reallocate``, a
resumed CLI run) are not run again. ``driver.drive`` is the one caller; it checks, times and totals.

An executor (``jobs.Executor``) runs a list of ``PhaseJob``s and returns, per job, the job's new
sequences. This module never imports the native extension or Ray: ``local.LocalExecutor`` and the
Ray executor in ``distributed`` implement it.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Optional, Sequence as Seq

from .budget import PromptSignals, PromptSummary, ReallocationPlan, plan_label_free, plan_reallocation, retry_theta
from ..core.jobs import Executor, PhaseJob, PhaseOutput, ProgressFn, Seed
from .label_free import prompt_signals
from ..core.options import RunOptions
from ..answers.reference import reference_solved
from ..core.results import PromptResult, RunStats
from ..answers.scoring import answer_extractor, score_prompts
from .tree import branch_points, choose_branch_points, last_branch_step, ranked_limit
from ..core.vocabulary import MAX_SEQUENCES, MAX_TRIES, Method

__all__ = ["Executor", "PhaseJob", "PhaseOutput", "ReallocationOutcome", "ReallocationWarning", "Seed", "merge",
           "reallocate_phases", "run_phases", "score", "signals_of", "summarize", "tree_seeds"]

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
    if len(output.prompts) != len(jobs):
        raise RuntimeError(f"internal error: {len(jobs)} jobs but {len(output.prompts)} results came back")
    position = {p.index: k for k, p in enumerate(results)}
    seen: set[int] = set()
    for job, new in zip(jobs, output.prompts):  # every check before any change: a bad output changes nothing
        if new.index != job.index or job.index in seen or job.index not in position:
            raise RuntimeError(f"internal error: results for prompt {new.index} do not match job {job.index}")
        seen.add(job.index)
        target = results[position[job.index]]
        if new.sequences and new.sequences[0].index != target.n_sequences:
            raise RuntimeError(f"internal error: new sequences of prompt {job.index} start at "
                               f"{new.sequences[0].index}, after its {target.n_sequences} sequences")
        if len(new.sequences) > job.max_sequences:
            raise RuntimeError(f"internal error: prompt {job.index} got {len(new.sequences)} sequences from a job "
                               f"capped at {job.max_sequences}")
    for job, new in zip(jobs, output.prompts):
        target = results[position[job.index]]
        target.sequences.extend(new.sequences)
        target.steps += new.steps
        if not target.prompt_tokens:
            target.prompt_tokens = new.prompt_tokens


def score(results: list[PromptResult], answers: Optional[Seq[Any]], scorer: Optional[Scorer]) -> None:
    if answers is not None:
        score_prompts(results, [str(a) for a in answers], scorer)


def summarize(results: list[PromptResult], theta: float, rules: str = "eager_cpp") -> list[PromptSummary]:
    """Phase (a) -> the planner's input: nᵢ per prompt and whether it is solved: any sequence correct, or
    with the reference's rules, the gold answer among the extracted ones as they are, or "none"."""
    out = []
    for p in results:
        if p.gold_answer is None:
            solved = None
        elif rules == "reference":
            solved = reference_solved([s.answer for s in p.sequences], p.gold_answer)
        else:
            solved = any(bool(s.correct) for s in p.sequences)
        out.append(PromptSummary(index=p.index, sequences=p.n_sequences, solved=solved, theta=theta))
    return out


def signals_of(results: list[PromptResult], theta: float, scorer: Optional[Scorer],
               no_branch_window: int, window: Optional[int] = None) -> list[PromptSignals]:
    """Phase (a) -> the label-free planner's input, per prompt; reads no gold answer and no verdict.

    Answers come from the scorer's ``extract(text)`` when it has one, else the "auto" extractor; window: the
    confidence window (None: length-aware).
    """
    extract = answer_extractor(scorer)
    return [replace(prompt_signals(p.index, p.sequences, extract, no_branch_window, window), theta=theta)
            for p in results]


def run_phases(executor: Executor, options: RunOptions, results: list[PromptResult], stats: RunStats,
               answers: Optional[Seq[Any]], scorer: Optional[Scorer], progress: Optional[ProgressFn],
               pending: Optional[Seq[int]] = None, chunk_size: Optional[int] = None,
               on_chunk: Optional[ChunkDone] = None) -> Optional[ReallocationOutcome]:
    """Phase (a) for the prompts at positions `pending` of `results` (default: all), then (b) and (c)
    for the reallocating methods; `results` and `stats` grow in place.

    answers: one per prompt of `results` (or None). Phase (a) runs `chunk_size` prompts per engine run
    (default: all at once) and scores each chunk before `on_chunk` sees it.
    """
    method = Method(options.method)
    todo = list(range(len(results))) if pending is None else list(pending)
    size = chunk_size or max(1, len(todo))
    scoring_error: Optional[str] = None
    for start in range(0, len(todo), size):
        chunk = [results[k] for k in todo[start:start + size]]
        jobs = [PhaseJob(index=p.index, prompt=p.prompt, max_sequences=options.max_sequences,
                         theta=options.entropy_threshold) for p in chunk]
        output = executor.run_jobs(jobs, method.engine_method, progress)
        merge(results, jobs, output)
        stats.merge(output.stats)
        if answers is not None and scoring_error is None:
            try:
                score(chunk, [answers[k] for k in todo[start:start + size]], scorer)
            except Exception as e:  # noqa: BLE001 - a reallocating run keeps its phase (a), as a failed try does
                if not method.reallocates:
                    raise
                scoring_error = f"scoring phase (a) failed: {type(e).__name__}: {e}"
        if on_chunk is not None:
            on_chunk(chunk)
    if not method.reallocates:
        return None
    if scoring_error is None:
        try:
            score(results, answers, scorer)  # prompts whose phase (a) was done before come scored here
        except Exception as e:  # noqa: BLE001 - the same
            scoring_error = f"scoring phase (a) failed: {type(e).__name__}: {e}"
    return reallocate_phases(executor, options, results, stats, answers, scorer, progress, failed=scoring_error)


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


def _plan(options: RunOptions, results: list[PromptResult], scorer: Optional[Scorer],
          failed: Optional[str]) -> tuple[ReallocationPlan, list[PromptSummary], Optional[str]]:
    """Phase (b): the plan from phase (a)'s summaries (or its signals, label-free); nothing planned when
    phase (a)'s answers could not be read (`failed`, or the scorer raising here)."""
    theta, max_sequences = options.entropy_threshold, options.max_sequences
    summaries = summarize(results, theta, options.rules)
    signals: Optional[list[PromptSignals]] = None
    if failed is None and Method(options.method).label_free:
        try:
            signals = signals_of(results, theta, scorer, options.no_branch_window, options.confidence_window)
        except Exception as e:  # noqa: BLE001 - the scorer's extract() failing on phase (a)'s text: as a failed try
            failed = f"reading phase (a)'s answers failed: {type(e).__name__}: {e}"
    if failed is not None:
        budget = max(0, max_sequences * len(results) - sum(p.n_sequences for p in results))
        return ReallocationPlan(budget=budget, selected=(), extras=(), unused=budget), summaries, failed
    if signals is not None:
        # Label-free recipients; with no decaying set its tries follow adapt's θ rule, as EAGer-adapt's do.
        return plan_label_free(signals, max_sequences, use=options.label_free_signals), summaries, None
    return plan_reallocation(summaries, max_sequences, options.method), summaries, None


class _Tries:
    """Phase (c)'s state across tries: what each prompt of the plan still lacks, its θ, its random streams,
    its tree points with nothing left."""

    def __init__(self, options: RunOptions, results: list[PromptResult], summaries: list[PromptSummary],
                 outcome: ReallocationOutcome) -> None:
        self.options, self.results, self.outcome = options, results, outcome
        self.position = {p.index: k for k, p in enumerate(results)}
        self.theta0 = {s.index: s.theta for s in summaries}
        self.decaying = set(outcome.plan.decaying)
        # Random streams each prompt has used: its sequences so far (phase (a) drops none), then each try's.
        self.streams = {e.index: results[self.position[e.index]].n_sequences for e in outcome.plan.extras}
        self.closed: dict[int, set[tuple[int, int]]] = {e.index: set() for e in outcome.plan.extras}
        # The reference's loop: every try asks the full eᵢ and keeps what it overshoots, until eᵢ are made.
        self.reference = options.rules == "reference"

    def jobs(self, attempt: int) -> list[PhaseJob]:
        """The jobs of try `attempt`: one per prompt still short of its eᵢ (tree: with a point left)."""
        o, jobs = self.options, []
        for e in self.outcome.plan.extras:
            lacking = e.extra_sequences - self.outcome.produced[e.index]
            if lacking <= 0:
                continue
            p = self.results[self.position[e.index]]
            # One engine run of a prompt holds at most MAX_SEQUENCES.
            cap = min(e.extra_sequences if self.reference else lacking, MAX_SEQUENCES)
            seeds = (tree_seeds(p, cap, o.no_branch_window, o.top_k, o.max_new_tokens, self.closed[e.index])
                     if o.reallocation == "tree" else ())
            if o.reallocation == "tree" and not seeds:
                continue  # no branch point left to continue: what it lacks stays unspent
            theta_t = retry_theta(self.theta0[e.index], attempt, e.index in self.decaying)
            jobs.append(PhaseJob(index=e.index, prompt=p.prompt, max_sequences=len(seeds) or cap, theta=theta_t,
                                 sequence_base=self.streams[e.index], round=attempt, seeds=seeds,
                                 first_index=p.n_sequences))
        return jobs

    def record(self, jobs: list[PhaseJob], output: PhaseOutput) -> None:
        """What a try made, per prompt: sequences, streams used, seeds the engine found nothing at."""
        for k, job in enumerate(jobs):
            self.outcome.produced[job.index] += len(output.prompts[k].sequences)
            self.streams[job.index] += output.streams(k)
            for position_in_seeds in output.dropped(k):
                seed = job.seeds[position_in_seeds]
                self.closed[job.index].add((seed.source, len(seed.prefix)))
            self.outcome.unavailable += len(output.dropped(k))


def _record_stats(stats: RunStats, outcome: ReallocationOutcome, results: list[PromptResult]) -> None:
    extras = [s for p in results for s in p.sequences if s.round > 0]
    stats.rounds = outcome.tries + 1
    stats.reallocated_sequences = len(extras)
    stats.reallocated_length_ended = sum(1 for s in extras if s.finish_reason == "length")
    stats.reallocation_tries = outcome.tries
    stats.reallocation_budget = outcome.plan.budget
    stats.unspent_sequences = outcome.unspent
    stats.unavailable_seeds = outcome.unavailable
    stats.reallocation_error = outcome.error or ""


def reallocate_phases(executor: Executor, options: RunOptions, results: list[PromptResult], stats: RunStats,
                      answers: Optional[Seq[Any]], scorer: Optional[Scorer], progress: Optional[ProgressFn],
                      max_tries: int = MAX_TRIES, failed: Optional[str] = None) -> ReallocationOutcome:
    """Phase (b), the plan, and phase (c), its extras tried until spent (module docstring).

    The options' top_k and max_new_tokens bound a tree point: it offers only ranks within both the
    engine's reach and top_k, and only while it leaves room for an answer.
    failed: why phase (a)'s answers could not be read (the scorer raised): then, as when the scorer
    raises while the label-free plan reads them, nothing is planned, the error is the outcome's and
    the whole budget is unspent.
    """
    plan, summaries, failed = _plan(options, results, scorer, failed)
    outcome = ReallocationOutcome(plan=plan, granted={e.index: e.extra_sequences for e in plan.extras},
                                  produced={e.index: 0 for e in plan.extras}, error=failed)
    tries = _Tries(options, results, summaries, outcome)
    # The reference's loop has no try cap (each try makes at least one sequence: at most eᵢ tries).
    for attempt in itertools.count(1) if tries.reference else range(1, max_tries + 1):
        jobs = tries.jobs(attempt)
        if not jobs:
            break
        try:
            output = executor.run_jobs(jobs, Method.EAGER_INIT.engine_method, progress)  # extras are EAGer-init runs
            merge(results, jobs, output)  # checks everything before it changes anything
        except Exception as e:  # noqa: BLE001 - any failure of a try: keep what earlier phases made
            outcome.error = f"reallocation try {attempt} failed: {type(e).__name__}: {e}"
            break
        stats.merge(output.stats)
        outcome.tries = attempt
        tries.record(jobs, output)
        try:
            score(results, answers, scorer)
        except Exception as e:  # noqa: BLE001 - a scorer failing on a try's text: the same
            outcome.error = f"scoring reallocation try {attempt} failed: {type(e).__name__}: {e}"
            break
    if outcome.error is not None:
        warnings.warn(f"{outcome.error}; the result holds what phase (a) and the earlier tries made, the rest of "
                      "the budget is reported unspent", ReallocationWarning, stacklevel=2)
    _record_stats(stats, outcome, results)
    return outcome
