"""What a run knows about a prompt without labels: its answers' agreement, its traces' confidence, its tree's doubt.

Pure functions of a prompt's sequences (no model, no engine, never a gold answer or a verdict):

- ``trace_entropies``: the recorded top-K entropy of every token of a sequence, its inherited prefix
  included (a child records only its own tokens; the prefix's come from its ancestors).
- ``trace_uncertainty``: DeepConf's "lowest group confidence" in entropy form: the highest mean entropy
  over any window of ``window`` consecutive tokens (the whole trace when shorter; by default 16 tokens,
  an eighth of a trace longer than 135, at most 2048: ``confidence_window``). Low = confident.
- ``departures``: how often a trace took a token other than the model's first choice at a branch point.
- ``confidence_weights``: a vote weight per sequence, exp(-trace_uncertainty) x 0.5 ** departures, in (0, 1].
  ``metrics.weighted_vote`` counts them (Cons@k weighted: DeepConf's confidence-weighted majority).
  These four live in ``metrics`` (Cons@k weighted reads them too) and are re-exported here.
- ``prompt_signals``: the label-free planner's input (``budget.PromptSignals``) for one prompt.

Answers come from the caller's ``extract(text)`` (the scorer's extractor), never from ``Sequence.answer``
or ``Sequence.correct``, which a labelled run fills in: the signals are the same with or without labels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence as Seq
from typing import TYPE_CHECKING, Optional

from .budget import PromptSignals
from ..answers.metrics import (DEFAULT_WINDOW, DEPARTURE_FACTOR, confidence_weights, confidence_window, departures,
                      trace_entropies, trace_uncertainty)
from ..answers.scoring import normalize_answer
from .tree import branch_points

if TYPE_CHECKING:  # types only: results does not import this module at run time either
    from ..core.results import Sequence

__all__ = ["DEFAULT_WINDOW", "DEPARTURE_FACTOR", "NO_ANSWER", "confidence_weights", "confidence_window", "departures",
           "prompt_signals",
           "trace_entropies", "trace_uncertainty", "vote_counts"]

NO_ANSWER = "\x00no answer"  # the vote of a sequence whose text yields no answer: it disagrees with every answer


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
                   no_branch_window: int = 1000, window: Optional[int] = None) -> PromptSignals:
    """The label-free planner's input for one prompt (``budget.PromptSignals``: what each field means).

    window: the confidence window in tokens; None: each trace's length-aware one (``confidence_window``).

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
