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

An executor runs a list of ``PhaseJob``s and returns, per job, the job's new sequences. This module
never imports the native extension or Ray: ``local.LocalExecutor`` and the Ray executor in
``distributed`` implement ``Executor``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Iterable, Optional, Protocol, Sequence as Seq

from .budget import (LABEL_FREE_SIGNALS, PromptSignals, PromptSummary, ReallocationPlan, plan_label_free,
                     plan_reallocation, retry_theta)
from .label_free import prompt_signals
from .results import PromptResult, RunResult, RunStats
from .scoring import extract_answer
from .tree import branch_points, choose_branch_points, last_branch_step, ranked_limit

__all__ = ["LABEL_FREE_METHOD", "MAX_TRIES", "REALLOCATIONS", "REALLOCATING_METHODS", "Executor", "PhaseJob",
           "PhaseOutput", "ReallocationOutcome", "ReallocationWarning", "Seed", "count", "merge", "reallocate_phases",
           "run_phases", "score", "signals_of", "summarize", "tree_seeds"]

MAX_TRIES = 8  # reallocation tries per run; what they leave is reported as unspent
MAX_SEQUENCES_PER_JOB = 256  # llama.cpp's sequence-id limit: one engine run of a prompt holds at most this
REALLOCATIONS = ("fresh", "tree")  # how extras start: new EAGer-init runs, or continuations of the tree
LABEL_FREE_METHOD = "eager_label_free"  # recipients from the run's own answers and entropies (budget.plan_label_free)
REALLOCATING_METHODS = ("eager_adapt", "eager", LABEL_FREE_METHOD)

ProgressFn = Callable[[Any], None]  # takes a progress.ProgressEvent
Scorer = Callable[[str, str], bool]


@dataclass(frozen=True)
class Seed:
    """A new sequence that continues the prompt's tree at a branch point (tree reallocation)."""

    source: int  # the sequence whose tokens before the point are the prefix: the new one's parent
    prefix: tuple[int, ...]  # those tokens (generated ones; the prompt not included)
    exclude: tuple[int, ...]  # tokens the tree already took at the point
    rank: int = 1  # the first own token: the rank-th most likely not in `exclude`


@dataclass(frozen=True)
class PhaseJob:
    """One prompt's part of one engine run."""

    index: int  # the prompt's index: results carry it and its random streams derive from it
    prompt: str
    max_sequences: int  # the cap of this run (M in phase (a), what the prompt still lacks in (c))
    theta: float
    sequence_base: int = 0  # random stream of the job's first new sequence: streams continue across runs
    round: int = 0  # 0: phase (a); t: the t-th reallocation try
    seeds: tuple[Seed, ...] = ()  # tree reallocation: the job's first sequences continue these points
    # Result index of the job's first new sequence (None: sequence_base). Behind it once a dropped seed
    # used a stream: indices stay contiguous, streams are never reused.
    first_index: Optional[int] = None

    @property
    def index_base(self) -> int:
        return self.sequence_base if self.first_index is None else self.first_index

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PhaseJob":
        seeds = tuple(Seed(source=s["source"], prefix=tuple(s["prefix"]), exclude=tuple(s["exclude"]), rank=s["rank"])
                      for s in d.get("seeds", ()))
        return cls(**{**d, "seeds": seeds})


@dataclass
class PhaseOutput:
    """Per job (same order), a PromptResult holding only that job's new sequences; the runs' stats.

    unavailable: per job (same order; empty = none anywhere), the positions in the job's seeds of those
    the engine reported "unavailable" and the executor dropped: each still used one random stream.
    """

    prompts: list[PromptResult]
    stats: RunStats
    unavailable: list[tuple[int, ...]] = field(default_factory=list)

    def dropped(self, k: int) -> tuple[int, ...]:
        return tuple(self.unavailable[k]) if self.unavailable else ()

    def streams(self, k: int) -> int:
        """Random streams job `k` used: its sequences and its dropped seeds."""
        return len(self.prompts[k].sequences) + len(self.dropped(k))


class ReallocationWarning(RuntimeWarning):
    """A reallocation try failed: the run returns what was made before it, the error reported."""


class Executor(Protocol):
    """Runs phase jobs somewhere: ``method`` is "parallel" or "eager_init"."""

    def run_jobs(self, jobs: list[PhaseJob], method: str, progress: Optional[ProgressFn]) -> PhaseOutput: ...


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
        """Budget neither given (caps) nor produced (tries ran out)."""
        return self.plan.budget - sum(self.produced.values())


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


def count(stats: RunStats, prompts: list[PromptResult]) -> None:
    """#S and #T over the prompts, as every entry point (and the Ray driver) reports them."""
    stats.sequences = sum(p.n_sequences for p in prompts)
    stats.generated_tokens = sum(p.generated_tokens for p in prompts)


def score(results: list[PromptResult], answers: Optional[Seq[Any]], scorer: Optional[Scorer]) -> None:
    if answers is not None:
        RunResult(prompts=results, stats=RunStats(method="")).score([str(a) for a in answers], scorer)


def summarize(results: list[PromptResult], theta: float) -> list[PromptSummary]:
    """Phase (a) -> the planner's input: nᵢ per prompt and whether any sequence is correct."""
    out = []
    for p in results:
        solved = None if p.gold_answer is None else any(bool(s.correct) for s in p.sequences)
        out.append(PromptSummary(index=p.index, sequences=p.n_sequences, solved=solved, theta=theta))
    return out


def signals_of(results: list[PromptResult], theta: float, scorer: Optional[Scorer],
               no_branch_window: int) -> list[PromptSignals]:
    """Phase (a) -> the label-free planner's input, per prompt; reads no gold answer and no verdict.

    Answers come from the scorer's ``extract(text)`` when it has one, else the "auto" extractor.
    """
    custom = getattr(scorer, "extract", None)
    extract = custom if callable(custom) else (lambda text: extract_answer(text, "auto"))
    return [replace(prompt_signals(p.index, p.sequences, extract, no_branch_window), theta=theta) for p in results]


def run_phases(executor: Executor, prompts: Seq[str], indices: Seq[int], method: str, max_sequences: int,
               theta: float, answers: Optional[Seq[Any]], scorer: Optional[Scorer],
               progress: Optional[ProgressFn], reallocation: str = "fresh",
               no_branch_window: int = 1000, label_free_signals: Seq[str] = LABEL_FREE_SIGNALS, top_k: int = 0,
               max_new_tokens: Optional[int] = None) -> tuple[list[PromptResult], RunStats, Optional[ReallocationOutcome]]:
    """Phase (a) over all prompts, then (b) and (c) for the reallocating methods.

    top_k, max_new_tokens: the run's, which bound what a tree point can offer (``reallocate_phases``).
    """
    results = [PromptResult(index=i, prompt=p, sequences=[], prompt_tokens=0) for i, p in zip(indices, prompts)]
    stats = RunStats(method=method)
    jobs = [PhaseJob(index=i, prompt=p, max_sequences=max_sequences, theta=theta) for i, p in zip(indices, prompts)]
    output = executor.run_jobs(jobs, "parallel" if method == "parallel" else "eager_init", progress)
    merge(results, jobs, output)
    stats.merge(output.stats)
    score(results, answers, scorer)
    outcome = None
    if method in REALLOCATING_METHODS:
        outcome = reallocate_phases(executor, results, stats, method, max_sequences, theta, answers, scorer, progress,
                                    reallocation=reallocation, no_branch_window=no_branch_window,
                                    label_free_signals=label_free_signals, top_k=top_k, max_new_tokens=max_new_tokens)
    return results, stats, outcome


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


def reallocate_phases(executor: Executor, results: list[PromptResult], stats: RunStats, method: str,
                      max_sequences: int, theta: float, answers: Optional[Seq[Any]], scorer: Optional[Scorer],
                      progress: Optional[ProgressFn], max_tries: int = MAX_TRIES, reallocation: str = "fresh",
                      no_branch_window: int = 1000, label_free_signals: Seq[str] = LABEL_FREE_SIGNALS,
                      top_k: int = 0, max_new_tokens: Optional[int] = None) -> ReallocationOutcome:
    """Phase (b), the plan, and phase (c), its extras tried until spent (module docstring).

    top_k (0: off) and max_new_tokens (None: no bound) are the run's: a tree point offers only ranks
    within both the engine's reach and top_k, and only while it leaves room for an answer.
    """
    if reallocation not in REALLOCATIONS:
        raise ValueError(f"unknown reallocation {reallocation!r}; expected one of {', '.join(REALLOCATIONS)}")
    summaries = summarize(results, theta)
    if method == LABEL_FREE_METHOD:
        # Label-free recipients; with no decaying set its tries follow adapt's θ rule, as EAGer-adapt's do.
        plan = plan_label_free(signals_of(results, theta, scorer, no_branch_window), max_sequences,
                               use=label_free_signals)
    else:
        plan = plan_reallocation(summaries, max_sequences, method)
    outcome = ReallocationOutcome(plan=plan, granted={e.index: e.extra_sequences for e in plan.extras},
                                  produced={e.index: 0 for e in plan.extras})
    position = {p.index: k for k, p in enumerate(results)}
    theta0 = {s.index: s.theta for s in summaries}
    decaying = set(plan.decaying)
    # Random streams each prompt has used: its sequences so far (phase (a) drops none), then each try's.
    streams = {e.index: results[position[e.index]].n_sequences for e in plan.extras}
    closed: dict[int, set[tuple[int, int]]] = {e.index: set() for e in plan.extras}  # points with nothing left
    for attempt in range(1, max_tries + 1):
        jobs = []
        for e in plan.extras:
            lacking = e.extra_sequences - outcome.produced[e.index]
            if lacking > 0:
                p = results[position[e.index]]
                cap = min(lacking, MAX_SEQUENCES_PER_JOB)
                seeds = (tree_seeds(p, cap, no_branch_window, top_k, max_new_tokens, closed[e.index])
                         if reallocation == "tree" else ())
                if reallocation == "tree" and not seeds:
                    continue  # no branch point left to continue: what it lacks stays unspent
                theta_t = retry_theta(theta0[e.index], attempt, e.index in decaying)
                jobs.append(PhaseJob(index=e.index, prompt=p.prompt, max_sequences=len(seeds) or cap, theta=theta_t,
                                     sequence_base=streams[e.index], round=attempt, seeds=seeds,
                                     first_index=p.n_sequences))
        if not jobs:
            break
        try:
            output = executor.run_jobs(jobs, "eager_init", progress)
            merge(results, jobs, output)  # checks everything before it changes anything
        except Exception as e:  # noqa: BLE001 - any failure of a try: keep what earlier phases made
            outcome.error = f"reallocation try {attempt} failed: {type(e).__name__}: {e}"
            break
        stats.merge(output.stats)
        outcome.tries = attempt
        for k, job in enumerate(jobs):
            outcome.produced[job.index] += len(output.prompts[k].sequences)
            streams[job.index] += output.streams(k)
            for position_in_seeds in output.dropped(k):
                seed = job.seeds[position_in_seeds]
                closed[job.index].add((seed.source, len(seed.prefix)))
            outcome.unavailable += len(output.dropped(k))
        try:
            score(results, answers, scorer)
        except Exception as e:  # noqa: BLE001 - a scorer failing on a try's text: the same
            outcome.error = f"scoring reallocation try {attempt} failed: {type(e).__name__}: {e}"
            break
    if outcome.error is not None:
        warnings.warn(f"{outcome.error}; the result holds what phase (a) and the earlier tries made, the rest of "
                      "the budget is reported unspent", ReallocationWarning, stacklevel=2)
    extras = [s for p in results for s in p.sequences if s.round > 0]
    stats.rounds = outcome.tries + 1
    stats.reallocated_sequences = len(extras)
    stats.reallocated_length_ended = sum(1 for s in extras if s.finish_reason == "length")
    stats.reallocation_tries = outcome.tries
    stats.reallocation_budget = plan.budget
    stats.unspent_sequences = outcome.unspent
    stats.unavailable_seeds = outcome.unavailable
    stats.reallocation_error = outcome.error or ""
    return outcome
