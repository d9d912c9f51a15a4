"""What an executor is given and gives back: phase jobs, their outputs, and the executor's protocol.

The phases (``phases``) hand an executor a list of ``PhaseJob``s and merge the ``PhaseOutput`` it
returns; executors (``local.LocalExecutor``, ``distributed.RayExecutor``) need only this module, not the
phases. Ray workers receive jobs as ``PhaseJob.to_dict()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Protocol

if TYPE_CHECKING:  # types only
    from .results import PromptResult, RunStats

__all__ = ["Executor", "PhaseJob", "PhaseOutput", "ProgressFn", "Seed", "run_chunks"]

ProgressFn = Callable[[Any], None]  # takes a progress.ProgressEvent


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

    prompts: list["PromptResult"]
    stats: "RunStats"
    unavailable: list[tuple[int, ...]] = field(default_factory=list)

    def dropped(self, k: int) -> tuple[int, ...]:
        return tuple(self.unavailable[k]) if self.unavailable else ()

    def streams(self, k: int) -> int:
        """Random streams job `k` used: its sequences and its dropped seeds."""
        return len(self.prompts[k].sequences) + len(self.dropped(k))



def run_chunks(executor: "Executor", chunks: Iterable[list[PhaseJob]], method: str,
               progress: Optional[ProgressFn]) -> Iterator[PhaseOutput]:
    """Phase (a)'s chunks in order, one PhaseOutput each, each asked for once the caller took the one before
    (so it can be made durable first): the executor's own ``run_chunks`` where it has one (the Ray executor
    sends many chunks in one dispatch), else one ``run_jobs`` per chunk."""
    own = getattr(executor, "run_chunks", None)
    if own is not None:
        yield from own(chunks, method, progress)
        return
    for jobs in chunks:
        yield executor.run_jobs(jobs, method, progress)


class Executor(Protocol):
    """Runs phase jobs somewhere (``driver.open_executor`` picks one from the run's options).

    check: tokenizes each (index, prompt) as a run would (ValueError naming one that does not fit the
    model) and returns the longest, with the model's vocabulary size. n_ctx: a context the caller fixed
    (0: none). run_jobs: ``method`` is "parallel" or "eager_init". recorded: the run's recorded options
    as the executor ran them (what only a loaded model decides, e.g. the device path, included).
    account: the executor's own figures into the run's stats once the phases are done. An executor may
    also have ``run_chunks(chunks, method, progress)``, yielding one PhaseOutput per chunk in order
    (``run_chunks`` above): the outputs must be those ``run_jobs`` gives chunk by chunk.
    """

    n_ctx: int

    def check(self, prompts: list[tuple[int, str]]) -> tuple[int, int]: ...

    def run_jobs(self, jobs: list[PhaseJob], method: str, progress: Optional[ProgressFn]) -> PhaseOutput: ...

    def recorded(self, n_prompts: int) -> dict[str, Any]: ...

    def account(self, stats: "RunStats", elapsed: float, outcome: Any) -> None: ...


