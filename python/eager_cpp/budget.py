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
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["MODES", "PromptExtra", "PromptSummary", "ReallocationPlan", "plan_reallocation", "retry_theta"]

# Method names of eager_cpp.run() are accepted as aliases so callers can pass them through.
MODES: dict[str, str] = {"adapt": "adapt", "full": "full", "eager_adapt": "adapt", "eager": "full"}

# Per-prompt cap on extra sequences, in multiples of M.
_CAP_FACTOR = {"adapt": 3, "full": 1}


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
