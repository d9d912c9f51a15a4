"""What a run knows about a prompt without labels: its answers' agreement, its traces' confidence, its tree's doubt.

Pure functions of a prompt's sequences (no model, no engine, never a gold answer or a verdict):

- ``trace_entropies``: the recorded top-K entropy of every token of a sequence, its inherited prefix
  included (a child records only its own tokens; the prefix's come from its ancestors).
- ``trace_uncertainty``: DeepConf's "lowest group confidence" in entropy form: the highest mean entropy
  over any window of ``window`` consecutive tokens (the whole trace when shorter). Low = confident.
- ``departures``: how often a trace took a token other than the model's first choice at a branch point.
- ``confidence_weights``: a vote weight per sequence, exp(-trace_uncertainty) x 0.5 ** departures, in (0, 1].
  ``metrics.weighted_vote`` counts them (Cons@k weighted: DeepConf's confidence-weighted majority).
- ``prompt_signals``: the label-free planner's input (``budget.PromptSignals``) for one prompt.

Answers come from the caller's ``extract(text)`` (the scorer's extractor), never from ``Sequence.answer``
or ``Sequence.correct``, which a labelled run fills in: the signals are the same with or without labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence as Seq
from typing import Optional

from .budget import PromptSignals
from .results import Sequence
from .scoring import normalize_answer
from .tree import branch_points

__all__ = ["DEFAULT_WINDOW", "DEPARTURE_FACTOR", "NO_ANSWER", "confidence_weights", "departures", "prompt_signals",
           "trace_entropies", "trace_uncertainty", "vote_counts"]

DEFAULT_WINDOW = 16  # tokens per confidence window (DeepConf uses 2048 on long traces; capitals answers are <= 16)
DEPARTURE_FACTOR = 0.5  # vote weight kept per departure from the model's first choice (0.25-0.5 tied on capitals dev)
NO_ANSWER = "\x00no answer"  # the vote of a sequence whose text yields no answer: it disagrees with every answer


def trace_entropies(sequence: Sequence, by_index: dict[int, Sequence]) -> list[float]:
    """Entropy of each of the sequence's tokens (``token_ids``), inherited prefix included.

    Steps before ``branch_step`` belong to the parent's trace (recursively); a step no ancestor recorded
    (record_entropies=False, or a parent missing from ``by_index``) is left out.
    """
    own = [float(h) for h in sequence.entropies]
    parent = by_index.get(sequence.parent) if sequence.parent is not None else None
    if sequence.branch_step <= 0 or parent is None or parent.index == sequence.index:
        return own
    inherited = trace_entropies(parent, by_index)
    # The parent's trace starts at its own step 0 too (token_ids are whole traces), so its first
    # branch_step entries are the child's prefix, as far as the parent recorded them.
    return inherited[: sequence.branch_step] + own


def trace_uncertainty(entropies: Seq[float], window: int = DEFAULT_WINDOW) -> float:
    """Highest mean entropy over any ``window`` consecutive tokens (all of them when fewer); 0.0 with none."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    values = [h for h in entropies if math.isfinite(h)]
    if not values:
        return 0.0
    if len(values) <= window:
        return sum(values) / len(values)
    total = sum(values[:window])
    worst = total
    for k in range(window, len(values)):
        total += values[k] - values[k - window]
        worst = max(worst, total)
    return worst / window


def departures(sequence: Sequence, by_index: dict[int, Sequence]) -> int:
    """How many times the trace left the model's first choice at a branch point: its ancestors in the tree.

    A child starts with a token other than the most likely one at its branch point (the second in
    EAGer-init, the rank-th untaken one in tree reallocation) while its parent continues with the most
    likely, so each step up the parent chain is one such departure; a root (or a fresh extra) has none.
    """
    count, seen, current = 0, {sequence.index}, sequence
    while current.parent is not None and current.parent in by_index and current.parent not in seen:
        current = by_index[current.parent]
        seen.add(current.index)
        count += 1
    return count


def confidence_weights(sequences: Seq[Sequence], window: int = DEFAULT_WINDOW,
                       departure_factor: float = DEPARTURE_FACTOR) -> list[float]:
    """Per sequence (same order), its vote weight: exp(-trace_uncertainty) x departure_factor ** departures.

    1.0 for a root trace with no doubt. The entropy part is DeepConf's trace confidence; the departure
    part is what a tree adds: a child is the continuation the model ranked lower at an unsure point, and
    a tree holds one such child per branch however unlikely it was, so an unweighted vote over-counts them.
    """
    by_index = {s.index: s for s in sequences}
    return [math.exp(-trace_uncertainty(trace_entropies(s, by_index), window))
            * departure_factor ** departures(s, by_index) for s in sequences]


def _vote_key(answer: Optional[str]) -> str:
    norm = normalize_answer(answer) if answer is not None else ""
    return norm or NO_ANSWER


def vote_counts(answers: Seq[Optional[str]], weights: Optional[Seq[float]] = None) -> dict[str, float]:
    """Votes per normalised answer (``NO_ANSWER`` for none), weighted when ``weights`` is given; insertion order."""
    if weights is not None and len(weights) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    counts: dict[str, float] = {}
    for k, ans in enumerate(answers):
        key = _vote_key(ans)
        counts[key] = counts.get(key, 0.0) + (1.0 if weights is None else float(weights[k]))
    return counts


def prompt_signals(index: int, sequences: Seq[Sequence], extract: Callable[[str], Optional[str]],
                   no_branch_window: int = 1000, window: int = DEFAULT_WINDOW) -> PromptSignals:
    """The label-free planner's input for one prompt (``budget.PromptSignals``: what each field means).

    Reads only each sequence's text (through ``extract``), token ids, entropies and tree links.
    """
    answers = [extract(s.text) for s in sequences]
    counts = vote_counts(answers)
    n = len(sequences)
    # "No answer" is never agreement: it counts in n but cannot be the top answer.
    top = max((c for key, c in counts.items() if key != NO_ANSWER), default=0.0)
    vote_entropy = -sum(c / n * math.log(c / n) for c in counts.values()) if n else 0.0
    by_index = {s.index: s for s in sequences}
    uncertainties = [trace_uncertainty(trace_entropies(s, by_index), window) for s in sequences]
    # Points where the tree took a single token: the alternatives there were never explored.
    unexplored = [p.entropy for p in branch_points(sequences, no_branch_window) if len(p.taken) == 1]
    return PromptSignals(
        index=index,
        sequences=n,
        vote_share=top / n if n else 0.0,
        distinct_answers=len(counts),
        vote_entropy=max(0.0, vote_entropy),
        trace_uncertainty=sum(uncertainties) / n if n else 0.0,
        unexplored_entropy=max(unexplored, default=0.0),
    )
