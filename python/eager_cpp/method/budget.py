"""Budget reallocation after EAGer-init, as a pure function (docs/method.md, "Reallocation").

``plan_reallocation`` looks only at per-prompt summaries and returns a plan; it runs nothing.
The caller then starts one fresh EAGer-init run per ``PromptExtra`` with cap = ``extra_sequences``
and threshold = ``theta``.

Rules implemented (M = ``max_sequences``, N = number of summaries):

- Saved budget: b = M*N - sum(n_i). Every n_i must lie in [0, M], so b >= 0.
- Selected set S:
    * ``"adapt"`` (EAGer-adapt, no labels): prompts with n_i == M, in index order.
    * ``"full"`` (EAGer, labels known): prompts with ``solved is False``; those with n_i == M
      first, then the others, each group in index order. ``solved is None`` is an error here.
- Split: with q, r = divmod(b, |S|), the j-th prompt of S (0-based) gets q + (1 if j < r else 0);
  so when b < |S| the first b prompts get one each.
- Caps: a prompt's extra is capped at 3*M (adapt) or M (full). What a cap cuts off is NOT
  redistributed to other prompts; it is reported as ``unused`` (simple and predictable; the
  saving is then real rather than silently spent elsewhere).
- Empty S or b == 0: no extras, ``unused`` = b.
- Threshold of each try (the reference's loop, ``retry_theta``). ``theta`` in a summary is the
  prompt's θ0 (the threshold of its EAGer-init run) and ``tries`` the reallocation tries it has
  already had (0 after init), so the plan's extra is try ``tries + 1``. The *decaying* set is chosen
  once, from the summaries: full mode, prompt unsolved and n_i < M (it never reached the cap, i.e.
  it rarely crossed θ). On try t (1-based):
    * a decaying prompt keeps its own running θ, times 0.8 (``theta_decay_unsolved``) every try;
    * every other prompt goes back to θ0 every try;
    * from the third try on (t >= 3), that try's θ is also times 0.9 (``theta_decay_late``).
  So a decaying prompt runs at θ0·0.8^t·0.9^max(0, t-2) and any other at θ0, θ0, then θ0·0.9.
  Neither a prompt solved by an earlier try nor one that filled a try's cap changes set.
- Invariant (asserted): sum(n_i) + sum(extras) <= M*N.

``plan_label_free`` is the label-free rule (method ``eager_label_free``; docs/method.md, "Label-free
reallocation"): it reads ``PromptSignals`` (what the run's own sequences say, never a gold answer):

- Doubt of prompt i: d_i = w_votes * (1 - vote_share_i)
                         + w_confidence * max(0, trace_uncertainty_i - confident_below)
                         + w_tree * max(0, unexplored_entropy_i - settled_below).
  A prompt whose answers agree unanimously, whose traces are confident and whose tree left no
  uncertain point unexplored has d_i = 0 and gets nothing. ``signals`` names the terms in use (the
  others weigh 0): ("votes", "confidence", "tree") by default; one alone is the ablation.
- Split (D'Hondt): the b sequences go one at a time to the prompt with the highest d_i / (e_i + 1)
  among those with d_i > 0 below the cap of 3*M extras (ties: lower index). The result is in
  proportion to d_i up to rounding; b is spent in full unless every doubtful prompt reaches its cap
  (or none is doubtful): the rest is ``unused``.
- Threshold: the prompt's own ``theta``; later tries follow ``retry_theta`` in adapt mode.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass

from ..core.vocabulary import LABEL_FREE_SIGNALS, Method

__all__ = ["LABEL_FREE_SIGNALS", "MODES", "PromptExtra", "PromptSignals", "PromptSummary", "ReallocationPlan",
           "doubt", "plan_label_free", "plan_reallocation", "retry_theta"]

# Method names of eager_cpp.run() are accepted as aliases so callers can pass them through.
MODES: dict[str, str] = {"adapt": "adapt", "full": "full", "eager_adapt": "adapt", "eager": "full"}

# Per-prompt cap on extra sequences, in multiples of M (the methods': vocabulary.Method.extra_cap_factor).
_CAP_FACTOR = {"adapt": Method.EAGER_ADAPT.extra_cap_factor, "full": Method.EAGER.extra_cap_factor}


@dataclass(frozen=True)
class PromptSummary:
    """What the planner needs to know about one prompt after a run.

    index: prompt index; sequences: n_i; solved: any correct sequence (None = unknown, only
    allowed in adapt mode); theta: threshold of its latest run; tries: reallocation runs so far.
    """

    index: int
    sequences: int
    solved: bool | None = None
    theta: float = 2.0
    tries: int = 0


@dataclass(frozen=True)
class PromptExtra:
    """Extra sequences granted to one prompt and the threshold to run them with."""

    index: int
    extra_sequences: int
    theta: float


@dataclass(frozen=True)
class ReallocationPlan:
    """Result of ``plan_reallocation``."""

    budget: int  # b = M*N - sum(n_i)
    selected: tuple[int, ...]  # S, in allocation order
    extras: tuple[PromptExtra, ...]  # only prompts with extra_sequences > 0, in S order
    unused: int  # part of b the per-prompt caps did not let us give
    # Prompts of S whose θ decays by 0.8 on every try (full mode, unsolved, n_i < M): chosen once, here.
    decaying: tuple[int, ...] = ()

    @property
    def total_extra(self) -> int:
        """Sum of extra sequences granted (= budget - unused)."""
        return sum(e.extra_sequences for e in self.extras)


def _validate(summaries: tuple[PromptSummary, ...], max_sequences: int, mode: str) -> str:
    """Check arguments; return the canonical mode. Raises ValueError with a clear message."""
    if mode not in MODES:
        raise ValueError(f"unknown reallocation mode {mode!r}; expected one of {sorted(MODES)}")
    canon = MODES[mode]
    if isinstance(max_sequences, bool) or not isinstance(max_sequences, int):
        raise ValueError(f"max_sequences must be an int, got {max_sequences!r}")
    if max_sequences < 1:
        raise ValueError(f"max_sequences (M) must be >= 1, got {max_sequences}")
    if not summaries:
        raise ValueError("summaries must not be empty")
    seen: set[int] = set()
    for s in summaries:
        if s.index in seen:
            raise ValueError(f"duplicate prompt index {s.index} in summaries")
        seen.add(s.index)
        if s.sequences < 0:
            raise ValueError(f"prompt {s.index}: sequences must be >= 0, got {s.sequences}")
        if s.sequences > max_sequences:
            raise ValueError(
                f"prompt {s.index}: sequences={s.sequences} exceeds max_sequences={max_sequences}"
            )
        if s.tries < 0:
            raise ValueError(f"prompt {s.index}: tries must be >= 0, got {s.tries}")
        if not math.isfinite(s.theta):
            raise ValueError(f"prompt {s.index}: theta must be finite, got {s.theta}")
        if canon == "full" and s.solved is None:
            raise ValueError(
                f"prompt {s.index}: solved is None; full EAGer needs labels for every prompt"
            )
    return canon


def _decays(s: PromptSummary, max_sequences: int, mode: str) -> bool:
    """Whether the prompt is in the decaying set (module docstring): it rarely crossed θ."""
    return mode == "full" and s.solved is False and s.sequences < max_sequences


def plan_reallocation(
    summaries: Iterable[PromptSummary],
    max_sequences: int,
    mode: str,
    theta_decay_unsolved: float = 0.8,
    theta_decay_late: float = 0.9,
) -> ReallocationPlan:
    """Plan how the budget saved by EAGer-init is given to prompts (see module docstring).

    mode: "adapt" (alias "eager_adapt") or "full" (alias "eager").
    Raises ValueError for an unknown mode, M < 1, empty summaries, n_i outside [0, M],
    duplicate indices, ``solved=None`` in full mode, or non-positive decay factors.
    """
    items = tuple(summaries)
    canon = _validate(items, max_sequences, mode)
    decays = (("theta_decay_unsolved", theta_decay_unsolved), ("theta_decay_late", theta_decay_late))
    for name, val in decays:
        if not (math.isfinite(val) and val > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {val}")

    m = max_sequences
    total = m * len(items)
    used = sum(s.sequences for s in items)
    budget = total - used  # >= 0 because every n_i <= M

    ordered = sorted(items, key=lambda s: s.index)
    if canon == "adapt":
        chosen = [s for s in ordered if s.sequences == m]
    else:
        unsolved = [s for s in ordered if s.solved is False]
        # Capped ones first: they are the hard, high-entropy prompts.
        chosen = [s for s in unsolved if s.sequences == m] + [s for s in unsolved if s.sequences < m]

    selected = tuple(s.index for s in chosen)
    cap = _CAP_FACTOR[canon] * m
    extras: list[PromptExtra] = []
    given = 0
    if chosen and budget > 0:
        share, rem = divmod(budget, len(chosen))
        for j, s in enumerate(chosen):
            want = share + (1 if j < rem else 0)
            got = min(want, cap)
            if got > 0:
                theta = retry_theta(s.theta, s.tries + 1, _decays(s, m, canon), theta_decay_unsolved,
                                    theta_decay_late)
                extras.append(PromptExtra(index=s.index, extra_sequences=got, theta=theta))
                given += got

    unused = budget - given
    assert used + given <= total, "reallocation would exceed the M*N sequence budget"
    assert 0 <= unused <= budget
    decaying = tuple(s.index for s in chosen if _decays(s, m, canon))
    return ReallocationPlan(budget=budget, selected=selected, extras=tuple(extras), unused=unused,
                            decaying=decaying)


def retry_theta(
    theta0: float,
    attempt: int,
    decaying: bool,
    theta_decay_unsolved: float = 0.8,
    theta_decay_late: float = 0.9,
) -> float:
    """Threshold of a prompt's reallocation try number ``attempt`` (1 = the first), from its θ0.

    ``decaying``: the prompt is in the plan's decaying set (``ReallocationPlan.decaying``). The
    reference's loop, written out: a decaying prompt's θ is multiplied by ``theta_decay_unsolved``
    every try, any other's goes back to θ0; from the third try on the try's θ is also multiplied by
    ``theta_decay_late`` (which a decaying prompt then carries into its next try).
    """
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt must be an int >= 1, got {attempt!r}")
    if not math.isfinite(theta0):
        raise ValueError(f"theta0 must be finite, got {theta0}")
    if decaying:
        return theta0 * theta_decay_unsolved ** attempt * theta_decay_late ** max(0, attempt - 2)
    return theta0 * (theta_decay_late if attempt >= 3 else 1.0)


# ---------------------------------------------------------------------------------------- label-free rule

# LABEL_FREE_SIGNALS (vocabulary): the terms of the doubt d_i (module docstring).


@dataclass(frozen=True)
class PromptSignals:
    """What a prompt's own sequences say after a run, without labels (``label_free.prompt_signals``).

    vote_share: the top answer's votes / n_i ("no answer" never counts as the top answer; 0 with no
    sequence); distinct_answers and vote_entropy (nats): the spread of the votes, reported, not used
    by the rule; trace_uncertainty: mean over the sequences of their highest window-mean token entropy
    (nats; DeepConf's lowest group confidence); unexplored_entropy: the highest entropy at a branch point
    where the tree took a single token (nats; 0 when there is none).
    """

    index: int
    sequences: int
    vote_share: float
    distinct_answers: int = 1
    vote_entropy: float = 0.0
    trace_uncertainty: float = 0.0
    unexplored_entropy: float = 0.0
    theta: float = 2.0


def doubt(s: PromptSignals, signals: Iterable[str] = LABEL_FREE_SIGNALS, confident_below: float = 0.3,
          settled_below: float = 1.0, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> float:
    """The doubt d_i of one prompt (module docstring); 0.0 for a prompt the rule leaves alone."""
    use = set(signals)
    w_votes, w_confidence, w_tree = weights
    d = 0.0
    if "votes" in use:
        d += w_votes * (1.0 - s.vote_share)
    if "confidence" in use:
        d += w_confidence * max(0.0, s.trace_uncertainty - confident_below)
    if "tree" in use:
        d += w_tree * max(0.0, s.unexplored_entropy - settled_below)
    return d


def _check_signals(items: tuple[PromptSignals, ...], max_sequences: int) -> None:
    """Each prompt once, nᵢ within [0, M], every signal finite, the vote share a share."""
    seen: set[int] = set()
    for s in items:
        if s.index in seen:
            raise ValueError(f"duplicate prompt index {s.index} in signals")
        seen.add(s.index)
        if not 0 <= s.sequences <= max_sequences:
            raise ValueError(f"prompt {s.index}: sequences={s.sequences} outside [0, max_sequences={max_sequences}]")
        for name in ("vote_share", "vote_entropy", "trace_uncertainty", "unexplored_entropy", "theta"):
            if not math.isfinite(getattr(s, name)):
                raise ValueError(f"prompt {s.index}: {name} must be finite, got {getattr(s, name)}")
        if not 0.0 <= s.vote_share <= 1.0:
            raise ValueError(f"prompt {s.index}: vote_share must lie in [0, 1], got {s.vote_share}")


def plan_label_free(
    signals: Iterable[PromptSignals],
    max_sequences: int,
    use: Iterable[str] = LABEL_FREE_SIGNALS,
    confident_below: float = 0.3,
    settled_below: float = 1.0,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    cap_factor: int = Method.EAGER_LABEL_FREE.extra_cap_factor,
) -> ReallocationPlan:
    """Plan the saved budget from label-free signals (module docstring, ``plan_label_free``).

    ``selected`` lists the prompts with d_i > 0, most doubtful first (ties: lower index).
    Raises ValueError for M < 1, empty or duplicate signals, n_i outside [0, M], an unknown signal
    name, no signal at all, or a negative / non-finite weight or threshold.
    """
    items = tuple(signals)
    if isinstance(max_sequences, bool) or not isinstance(max_sequences, int):
        raise ValueError(f"max_sequences must be an int, got {max_sequences!r}")
    if max_sequences < 1:
        raise ValueError(f"max_sequences (M) must be >= 1, got {max_sequences}")
    if not items:
        raise ValueError("signals must not be empty")
    chosen_signals = tuple(use)
    unknown = sorted(set(chosen_signals) - set(LABEL_FREE_SIGNALS))
    if unknown or not chosen_signals:
        raise ValueError(f"label-free signals must be a non-empty subset of {LABEL_FREE_SIGNALS}, "
                         f"got {chosen_signals!r}")
    for name, value in (("confident_below", confident_below), ("settled_below", settled_below), *(
            (f"weights[{k}]", w) for k, w in enumerate(weights))):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if len(weights) != 3:
        raise ValueError(f"weights must be 3 numbers (votes, confidence, tree), got {weights!r}")
    if isinstance(cap_factor, bool) or not isinstance(cap_factor, int) or cap_factor < 1:
        raise ValueError(f"cap_factor must be an int >= 1, got {cap_factor!r}")
    _check_signals(items, max_sequences)
    m = max_sequences
    total = m * len(items)
    used = sum(s.sequences for s in items)
    budget = total - used
    cap = cap_factor * m
    scores = {s.index: doubt(s, chosen_signals, confident_below, settled_below, weights) for s in items}
    doubtful = sorted((s for s in items if scores[s.index] > 0), key=lambda s: (-scores[s.index], s.index))
    extras_of = {s.index: 0 for s in doubtful}
    # D'Hondt: the next sequence goes to the highest d_i / (e_i + 1); a heap keeps that O(b log N).
    heap = [(-scores[s.index], s.index) for s in doubtful]
    heapq.heapify(heap)
    given = 0
    while heap and given < budget:
        _, index = heapq.heappop(heap)
        extras_of[index] += 1
        given += 1
        if extras_of[index] < cap:
            heapq.heappush(heap, (-scores[index] / (extras_of[index] + 1), index))
    extras = tuple(PromptExtra(index=s.index, extra_sequences=extras_of[s.index], theta=s.theta)
                   for s in doubtful if extras_of[s.index] > 0)
    unused = budget - given
    assert used + given <= total, "reallocation would exceed the M*N sequence budget"
    return ReallocationPlan(budget=budget, selected=tuple(s.index for s in doubtful), extras=extras, unused=unused)
