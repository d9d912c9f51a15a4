"""What the phases keep of each prompt: its whole result in memory, or, in a run that hands its results to a
store as they are made (the CLI's output file), only what the plan, the tries and the totals need.

A prompt let go (``PromptLedger.let_go``, once its phase (a) is scored and durable in the store) keeps its
counts (``Tally``) and its planner summary in columns (about 40 bytes) and, for the label-free plan, its
signals; its sequences are read back from the store only when a tree try continues them (``full``), and a
try's new sequences go to the store (``ResultStore.extras``) instead of into memory. A run without a store
keeps every result whole, as ``eager_cpp.run`` returns it.

The prompts come as a list of ``PromptResult`` (held whole), or, in a run with a store, as a ``PromptTable``
that holds none: it makes a prompt's ``PromptResult`` (index, text, no sequences) each time one is asked for,
from where the prompts are kept (the CLI's input file). Then the memory of a run grows with the number of
prompts by their columns, not by their texts or sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, Sequence as Seq, Union

import numpy as np

from ..answers.reference import reference_solved
from ..answers.scoring import answer_extractor, score_prompts
from .budget import PromptSignals, PromptSummary

if TYPE_CHECKING:  # annotations only: the phases import this module, and their import chain stays short
    from ..core.jobs import PhaseJob, PhaseOutput
    from ..core.results import PromptResult, RunStats

__all__ = ["PromptLedger", "PromptTable", "Prompts", "ResultStore", "Tally", "check_merge", "score", "signals_of",
           "summarize", "whole_prompt"]

Scorer = Callable[[str, str], bool]


class ResultStore(Protocol):
    """Where a run that keeps only summaries has its results: phase (a)'s prompts are made durable there by the
    run's chunk callback; a try's new sequences by ``extras``; ``load`` reads a prompt back whole."""

    def load(self, index: int) -> PromptResult: ...

    def extras(self, prompts: list[PromptResult]) -> None: ...


class PromptTable(Protocol):
    """A run's prompts when it keeps none of them (module docstring): ``table[k]`` is prompt k (its index is
    k) as a new ``PromptResult`` with its text and no sequences; phase (a)'s sequences are in the run's store."""

    def __len__(self) -> int: ...

    def __getitem__(self, k: int) -> PromptResult: ...


Prompts = Union["list[PromptResult]", PromptTable]


def whole_prompt(results: Prompts, store: Optional[ResultStore], k: int) -> PromptResult:
    """Prompt `k` with its sequences: the list's, or read from the store when the prompts are a table."""
    if isinstance(results, list):
        return results[k]
    assert store is not None, "a PromptTable needs the store that holds its sequences"
    return store.load(k)


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


def check_merge(targets: list[PromptResult], jobs: Seq[PhaseJob], output: PhaseOutput,
                n_sequences: Callable[[PromptResult], int]) -> None:
    """Checks that every job came back once, for its prompt (`targets`, in job order), with sequences numbered
    after the prompt's `n_sequences` and within its cap."""
    if len(output.prompts) != len(jobs) or len(targets) != len(jobs):
        raise RuntimeError(f"internal error: {len(jobs)} jobs but {len(output.prompts)} results came back")
    seen: set[int] = set()
    for job, new, target in zip(jobs, output.prompts, targets):
        if new.index != job.index or job.index in seen or target.index != job.index:
            raise RuntimeError(f"internal error: results for prompt {new.index} do not match job {job.index}")
        seen.add(job.index)
        if new.sequences and new.sequences[0].index != n_sequences(target):
            raise RuntimeError(f"internal error: new sequences of prompt {job.index} start at "
                               f"{new.sequences[0].index}, after its {n_sequences(target)} sequences")
        if len(new.sequences) > job.max_sequences:
            raise RuntimeError(f"internal error: prompt {job.index} got {len(new.sequences)} sequences from a job "
                               f"capped at {job.max_sequences}")


# The columns of a prompt let go: its Tally, then the planner summary's n_i and verdict.
_TALLY = ("sequences", "generated_tokens", "extras", "extras_length_ended")
_UNKNOWN, _UNSOLVED, _SOLVED = -1, 0, 1


class PromptLedger:
    """The phases' view of the prompts (module docstring): whole results, or columns of those let go.

    Prompts are found by index: in a list by a map made once, in a table at their position.
    """

    def __init__(self, results: Prompts, store: Optional[ResultStore]) -> None:
        self.results, self.store = results, store
        self.held = isinstance(results, list)
        if not self.held and store is None:
            raise TypeError("a PromptTable holds no results: the run needs a store")
        n = len(results)
        self._position: Optional[dict[int, int]] = None
        columns = n if store is not None else 0  # only a run with a store lets prompts go
        self._gone = np.zeros(columns, dtype=bool)
        self._tally = {name: np.zeros(columns, dtype=np.int64) for name in _TALLY}
        self._phase_a = np.zeros(columns, dtype=np.int64)  # n_i when let go: what the plan reads
        self._solved = np.full(columns, _UNKNOWN, dtype=np.int8)
        self._signals: dict[int, PromptSignals] = {}
        self.signals_failed: Optional[str] = None  # the scorer's extract() raising on a prompt let go

    def position(self, index: int) -> int:
        """Where prompt `index` is in the results (KeyError: not there)."""
        if not self.held:
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(self.results):
                raise KeyError(index)
            return index
        if self._position is None:
            self._position = {p.index: k for k, p in enumerate(self.results)}
        return self._position[index]

    def index(self, k: int) -> int:
        return self.results[k].index if self.held else k

    def _let_go(self, p: PromptResult) -> Optional[int]:
        """The position of `p` when it was let go, else None."""
        if not len(self._gone):
            return None
        k = self.position(p.index)
        return k if self._gone[k] else None

    def tally(self, p: PromptResult) -> Tally:
        k = self._let_go(p)
        return Tally.of(p.sequences) if k is None else Tally(*(int(self._tally[name][k]) for name in _TALLY))

    def n_sequences(self, p: PromptResult) -> int:
        return self.tally(p).sequences

    def full(self, p: PromptResult) -> PromptResult:
        """`p` with all its sequences (read back from the store when it was let go)."""
        if self._let_go(p) is None:
            return p
        assert self.store is not None
        return self.store.load(p.index)

    def whole(self, k: int) -> PromptResult:
        """The prompt at position `k` with its sequences (``whole_prompt``)."""
        return whole_prompt(self.results, self.store, k)

    def summaries(self, theta: float, rules: str) -> list[PromptSummary]:
        out = []
        for k in range(len(self.results)):
            if len(self._gone) and self._gone[k]:
                solved = int(self._solved[k])
                out.append(PromptSummary(index=self.index(k), sequences=int(self._phase_a[k]),
                                         solved=None if solved == _UNKNOWN else solved == _SOLVED, theta=theta))
            else:
                out.append(summarize([self.results[k]], theta, rules)[0])
        return out

    def signals(self, theta: float, scorer: Optional[Scorer], no_branch_window: int,
                window: Optional[int]) -> list[PromptSignals]:
        """The label-free planner's input (raises as `signals_of` does, or with what failed when let go)."""
        if self.signals_failed is not None:
            raise RuntimeError(self.signals_failed)
        out = []
        for k in range(len(self.results)):
            index = self.index(k)
            out.append(self._signals[index] if index in self._signals
                       else signals_of([self.results[k]], theta, scorer, no_branch_window, window)[0])
        return out

    def let_go(self, prompts: list[PromptResult], options: Any, scorer: Optional[Scorer],
               label_free: bool) -> None:
        """Keep only the columns of `prompts` (durable in the store): no-op without a store."""
        if self.store is None:
            return
        theta = options.entropy_threshold
        for p in prompts:
            k = self.position(p.index)
            if self._gone[k]:
                continue
            solved = summarize([p], theta, options.rules)[0].solved
            self._solved[k] = _UNKNOWN if solved is None else _SOLVED if solved else _UNSOLVED
            self._phase_a[k] = p.n_sequences
            if label_free and self.signals_failed is None:
                try:
                    self._signals[p.index] = signals_of([p], theta, scorer, options.no_branch_window,
                                                        options.confidence_window)[0]
                except Exception as e:  # noqa: BLE001 - reported where the plan reads the signals
                    self.signals_failed = f"{type(e).__name__}: {e}"
            tally = Tally.of(p.sequences)
            for name in _TALLY:
                self._tally[name][k] = getattr(tally, name)
            self._gone[k] = True
            p.sequences = []

    def merge(self, jobs: Seq[PhaseJob], output: PhaseOutput, targets: Optional[list[PromptResult]] = None) -> None:
        """Each job's new sequences into its prompt (`targets`, in job order; default: found by index): appended
        in memory, or counted for a prompt let go (its sequences then go to the store: ``keep``). Every check
        before any change: a bad output changes nothing."""
        if targets is None:
            try:
                targets = [self.results[self.position(job.index)] for job in jobs]
            except KeyError as e:
                raise RuntimeError(f"internal error: results for prompt {e.args[0]}, which the run does not have") \
                    from None
        check_merge(targets, jobs, output, self.n_sequences)
        for target, new in zip(targets, output.prompts):
            k = self._let_go(target)
            if k is not None:
                added = Tally.of(new.sequences)
                for name in _TALLY:
                    self._tally[name][k] += getattr(added, name)
            target.extend(new, sequences=k is None)

    def keep(self, output: PhaseOutput) -> None:
        """The new sequences of prompts let go, to the store (after scoring, so they carry their verdicts)."""
        gone = [new for new in output.prompts if new.sequences and self._let_go(new) is not None]
        if gone:
            assert self.store is not None
            self.store.extras(gone)

    def total(self) -> Tally:
        """The counts of every prompt, added up."""
        out = Tally(*(int(self._tally[name][self._gone].sum()) for name in _TALLY)) if len(self._gone) else Tally()
        if self.held:  # a table holds no sequences in memory: each of its prompts was let go or has none
            for k, p in enumerate(self.results):
                if not (len(self._gone) and self._gone[k]):
                    out.add(Tally.of(p.sequences))
        return out

    def totals(self, stats: RunStats) -> None:
        """#S and #T over every prompt, as every run reports them."""
        total = self.total()
        stats.sequences = total.sequences
        stats.generated_tokens = total.generated_tokens
