"""The phases of a run, whatever executes them: this process's engine or Ray actors.

(a) One engine run over every prompt: EAGer-init from one sequence each, or Full Parallel.
(b) ``budget.plan_reallocation`` on per-prompt summaries: the saved budget b = M*N - sum(n_i) as eᵢ
    extra sequences for the prompts the method selects (a pure function); for ``eager_label_free``,
    ``budget.plan_label_free`` on ``signals_of`` the results (their own answers and entropies, no labels).
(c) The extras, tried until spent: each try runs EAGer-init on every prompt still short of its eᵢ,
    all batched together, capped at what it still lacks (so the total is exactly eᵢ, never more);
    the threshold of a prompt's next try follows ``budget.retry_theta``; after ``MAX_TRIES`` what is
    left is reported as unspent. Sequence indices (and so random streams) continue per prompt, so
    the same jobs give the same samples on any executor.
    With ``reallocation="tree"`` a try does not start fresh: each extra continues the prompt's tree at
    a branch point ``tree.choose_branch_points`` picks (a ``Seed``: the point's prefix, the tokens taken
    there, a rank), so one try produces exactly the eᵢ it was given.

An executor runs a list of ``PhaseJob``s and returns, per job, the job's new sequences. This module
never imports the native extension or Ray: ``local.LocalExecutor`` and the Ray executor in
``distributed`` implement ``Executor``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Optional, Protocol, Sequence as Seq

from .budget import (LABEL_FREE_SIGNALS, PromptSignals, PromptSummary, ReallocationPlan, plan_label_free,
                     plan_reallocation, retry_theta)
from .label_free import prompt_signals
from .results import PromptResult, RunResult, RunStats
from .scoring import extract_answer
from .tree import branch_points, choose_branch_points

__all__ = ["LABEL_FREE_METHOD", "MAX_TRIES", "REALLOCATIONS", "REALLOCATING_METHODS", "Executor", "PhaseJob",
           "PhaseOutput", "ReallocationOutcome", "Seed", "count", "merge", "reallocate_phases", "run_phases", "score",
           "signals_of", "summarize", "tree_seeds"]

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
    sequence_base: int = 0  # index of the job's first new sequence: streams continue across runs
    round: int = 0  # 0: phase (a); t: the t-th reallocation try
    seeds: tuple[Seed, ...] = ()  # tree reallocation: the job's first sequences continue these points

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PhaseJob":
        seeds = tuple(Seed(source=s["source"], prefix=tuple(s["prefix"]), exclude=tuple(s["exclude"]), rank=s["rank"])
                      for s in d.get("seeds", ()))
        return cls(**{**d, "seeds": seeds})


@dataclass
class PhaseOutput:
    """Per job (same order), a PromptResult holding only that job's new sequences; the runs' stats."""

    prompts: list[PromptResult]
    stats: RunStats


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
               no_branch_window: int = 1000, label_free_signals: Seq[str] = LABEL_FREE_SIGNALS,
               ) -> tuple[list[PromptResult], RunStats, Optional[ReallocationOutcome]]:
    """Phase (a) over all prompts, then (b) and (c) for the reallocating methods."""
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
                                    label_free_signals=label_free_signals)
    return results, stats, outcome


def tree_seeds(prompt: PromptResult, n: int, no_branch_window: int) -> tuple[Seed, ...]:
    """Up to `n` seeds that continue `prompt`'s tree at its highest-entropy untaken branch points."""
    by_index = {s.index: s for s in prompt.sequences}
    seeds = []
    for choice in choose_branch_points(branch_points(prompt.sequences, no_branch_window), n):
        point = choice.point
        prefix = tuple(by_index[point.sequence].token_ids[: point.step])
        seeds.append(Seed(source=point.sequence, prefix=prefix, exclude=point.taken, rank=choice.rank))
    return tuple(seeds)


def reallocate_phases(executor: Executor, results: list[PromptResult], stats: RunStats, method: str,
                      max_sequences: int, theta: float, answers: Optional[Seq[Any]], scorer: Optional[Scorer],
                      progress: Optional[ProgressFn], max_tries: int = MAX_TRIES, reallocation: str = "fresh",
                      no_branch_window: int = 1000,
                      label_free_signals: Seq[str] = LABEL_FREE_SIGNALS) -> ReallocationOutcome:
    """Phase (b), the plan, and phase (c), its extras tried until spent (module docstring)."""
    if reallocation not in REALLOCATIONS:
        raise ValueError(f"unknown reallocation {reallocation!r}; expected one of {', '.join(REALLOCATIONS)}")
    if method == LABEL_FREE_METHOD:
        signals = signals_of(results, theta, scorer, no_branch_window)
        plan = plan_label_free(signals, max_sequences, use=label_free_signals)
    else:
        plan = plan_reallocation(summarize(results, theta), max_sequences, method)
    # The label-free method knows no verdicts: its retries follow adapt's rule, as EAGer-adapt's do.
    retry_mode = "eager_adapt" if method == LABEL_FREE_METHOD else method
    outcome = ReallocationOutcome(plan=plan, granted={e.index: e.extra_sequences for e in plan.extras},
                                  produced={e.index: 0 for e in plan.extras})
    position = {p.index: k for k, p in enumerate(results)}
    thetas = {e.index: e.theta for e in plan.extras}
    for attempt in range(1, max_tries + 1):
        jobs = []
        for e in plan.extras:
            lacking = e.extra_sequences - outcome.produced[e.index]
            if lacking > 0:
                p = results[position[e.index]]
                cap = min(lacking, MAX_SEQUENCES_PER_JOB)
                seeds = tree_seeds(p, cap, no_branch_window) if reallocation == "tree" else ()
                if reallocation == "tree" and not seeds:
                    continue  # no branch point left to continue: what it lacks stays unspent
                jobs.append(PhaseJob(index=e.index, prompt=p.prompt, max_sequences=len(seeds) or cap,
                                     theta=thetas[e.index], sequence_base=p.n_sequences, round=attempt, seeds=seeds))
        if not jobs:
            break
        before = {job.index: results[position[job.index]].n_sequences for job in jobs}
        output = executor.run_jobs(jobs, "eager_init", progress)
        merge(results, jobs, output)
        stats.merge(output.stats)
        outcome.tries = attempt
        score(results, answers, scorer)
        for job in jobs:
            p = results[position[job.index]]
            got = p.n_sequences - before[job.index]
            outcome.produced[job.index] += got
            solved = None if p.gold_answer is None else any(bool(s.correct) for s in p.sequences)
            thetas[job.index] = retry_theta(PromptSummary(index=job.index, sequences=got, solved=solved,
                                                          theta=job.theta, tries=attempt), job.max_sequences,
                                         retry_mode)
    stats.rounds = outcome.tries + 1
    stats.reallocated_sequences = sum(1 for p in results for s in p.sequences if s.round > 0)
    stats.reallocation_tries = outcome.tries
    stats.reallocation_budget = plan.budget
    stats.unspent_sequences = outcome.unspent
    return outcome
