"""What the phases keep of each prompt: its whole result in memory, or, in a run that hands its results to a
store as they are made (the CLI's output file), only what the plan, the tries and the totals need.

A prompt let go (``PromptLedger.let_go``, once its phase (a) is scored and durable in the store) keeps its
text, its counts (``Tally``), its planner summary and, for the label-free plan, its signals; its sequences
are read back from the store only when a tree try continues them (``full``), and a try's new sequences go to
the store (``ResultStore.extras``) instead of into memory. So the memory of a run grows with the number of
prompts by a summary each, not by their sequences. A run without a store keeps every result whole, as
``eager_cpp.run`` returns it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence as Seq

from ..answers.reference import reference_solved
from ..answers.scoring import answer_extractor, score_prompts
from .budget import PromptSignals, PromptSummary

if TYPE_CHECKING:  # annotations only: the phases import this module, and their import chain stays short
    from ..core.jobs import PhaseJob, PhaseOutput
    from ..core.results import PromptResult, RunStats

__all__ = ["PromptLedger", "ResultStore", "Tally", "check_merge", "score", "signals_of", "summarize"]

Scorer = Callable[[str, str], bool]


class ResultStore(Protocol):
    """Where a run that keeps only summaries has its results: phase (a)'s prompts are made durable there by the
    run's chunk callback; a try's new sequences by ``extras``; ``load`` reads a prompt back whole."""

    def load(self, index: int) -> PromptResult: ...

    def extras(self, prompts: list[PromptResult]) -> None: ...


@dataclass
class Tally:
    """A prompt's counts, as the totals and the reallocation statistics read them."""

    sequences: int = 0
    generated_tokens: int = 0
    extras: int = 0  # sequences of reallocation tries (round > 0)
    extras_length_ended: int = 0  # of those, the ones that ended at max_new_tokens

    @staticmethod
    def of(sequences: Seq[Any]) -> "Tally":
        extras = [s for s in sequences if s.round > 0]
        return Tally(len(sequences), sum(len(s.own_tokens) for s in sequences), len(extras),
                     sum(1 for s in extras if s.finish_reason == "length"))

    def add(self, other: "Tally") -> None:
        self.sequences += other.sequences
        self.generated_tokens += other.generated_tokens
        self.extras += other.extras
        self.extras_length_ended += other.extras_length_ended


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
    from .label_free import prompt_signals  # only label-free runs read signals

    extract = answer_extractor(scorer)
    return [replace(prompt_signals(p.index, p.sequences, extract, no_branch_window, window), theta=theta)
            for p in results]


def check_merge(results: list[PromptResult], jobs: Seq[PhaseJob], output: PhaseOutput,
                n_sequences: Callable[[PromptResult], int]) -> list[PromptResult]:
    """The prompts of `results` that `jobs` ran, in job order, once every job is checked to have come back
    once with sequences numbered after the prompt's `n_sequences` and within its cap."""
    if len(output.prompts) != len(jobs):
        raise RuntimeError(f"internal error: {len(jobs)} jobs but {len(output.prompts)} results came back")
    position = {p.index: k for k, p in enumerate(results)}
    seen: set[int] = set()
    targets = []
    for job, new in zip(jobs, output.prompts):
        if new.index != job.index or job.index in seen or job.index not in position:
            raise RuntimeError(f"internal error: results for prompt {new.index} do not match job {job.index}")
        seen.add(job.index)
        target = results[position[job.index]]
        if new.sequences and new.sequences[0].index != n_sequences(target):
            raise RuntimeError(f"internal error: new sequences of prompt {job.index} start at "
                               f"{new.sequences[0].index}, after its {n_sequences(target)} sequences")
        if len(new.sequences) > job.max_sequences:
            raise RuntimeError(f"internal error: prompt {job.index} got {len(new.sequences)} sequences from a job "
                               f"capped at {job.max_sequences}")
        targets.append(target)
    return targets


class PromptLedger:
    """The phases' view of the prompts (module docstring): whole results, or summaries of those let go."""

    def __init__(self, results: list[PromptResult], store: Optional[ResultStore]) -> None:
        self.results, self.store = results, store
        self._tally: dict[int, Tally] = {}  # prompts let go, by index
        self._summary: dict[int, PromptSummary] = {}
        self._signals: dict[int, PromptSignals] = {}
        self.signals_failed: Optional[str] = None  # the scorer's extract() raising on a prompt let go

    def tally(self, p: PromptResult) -> Tally:
        return self._tally[p.index] if p.index in self._tally else Tally.of(p.sequences)

    def n_sequences(self, p: PromptResult) -> int:
        return self.tally(p).sequences

    def full(self, p: PromptResult) -> PromptResult:
        """`p` with all its sequences (read back from the store when it was let go)."""
        if p.index not in self._tally:
            return p
        assert self.store is not None
        return self.store.load(p.index)

    def summaries(self, theta: float, rules: str) -> list[PromptSummary]:
        return [self._summary[p.index] if p.index in self._summary else summarize([p], theta, rules)[0]
                for p in self.results]

    def signals(self, theta: float, scorer: Optional[Scorer], no_branch_window: int,
                window: Optional[int]) -> list[PromptSignals]:
        """The label-free planner's input (raises as `signals_of` does, or with what failed when let go)."""
        if self.signals_failed is not None:
            raise RuntimeError(self.signals_failed)
        return [self._signals[p.index] if p.index in self._signals
                else signals_of([p], theta, scorer, no_branch_window, window)[0] for p in self.results]

    def let_go(self, prompts: list[PromptResult], options: Any, scorer: Optional[Scorer],
               label_free: bool) -> None:
        """Keep only the summaries of `prompts` (durable in the store): no-op without a store."""
        if self.store is None:
            return
        theta = options.entropy_threshold
        for p in prompts:
            if p.index in self._tally:
                continue
            self._summary[p.index] = summarize([p], theta, options.rules)[0]
            if label_free and self.signals_failed is None:
                try:
                    self._signals[p.index] = signals_of([p], theta, scorer, options.no_branch_window,
                                                        options.confidence_window)[0]
                except Exception as e:  # noqa: BLE001 - reported where the plan reads the signals
                    self.signals_failed = f"{type(e).__name__}: {e}"
            self._tally[p.index] = Tally.of(p.sequences)
            p.sequences = []

    def merge(self, jobs: Seq[PhaseJob], output: PhaseOutput) -> None:
        """Each job's new sequences into its prompt: appended in memory, or counted for a prompt let go (its
        sequences then go to the store: ``keep``). Every check before any change: a bad output changes nothing."""
        targets = check_merge(self.results, jobs, output, self.n_sequences)
        for target, new in zip(targets, output.prompts):
            gone = target.index in self._tally
            if gone:
                self._tally[target.index].add(Tally.of(new.sequences))
            target.extend(new, sequences=not gone)

    def keep(self, output: PhaseOutput) -> None:
        """The new sequences of prompts let go, to the store (after scoring, so they carry their verdicts)."""
        gone = [new for new in output.prompts if new.index in self._tally and new.sequences]
        if gone:
            assert self.store is not None
            self.store.extras(gone)

    def totals(self, stats: RunStats) -> None:
        """#S and #T over every prompt, as every run reports them."""
        tallies = [self.tally(p) for p in self.results]
        stats.sequences = sum(t.sequences for t in tallies)
        stats.generated_tokens = sum(t.generated_tokens for t in tallies)
