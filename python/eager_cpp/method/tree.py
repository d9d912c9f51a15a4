"""Where tree reallocation continues a prompt's tree: its branch points ranked by recorded entropy.

A prompt's sequences form a token tree: a child shares its parent's first ``branch_step`` tokens, and
roots that sampled the same first tokens share those too. A *branch point* is a node of that tree (a
prefix of generated tokens) at which some sequence generated its next token with a recorded entropy;
the tokens already taken there (by the sequence itself, by children born there, by earlier extras)
are the point's ``taken`` tokens. Tree reallocation gives each of a prompt's eᵢ extra sequences one
(point, rank) pair: it starts from the point's prefix and takes the rank-th most likely token not yet
taken there. Pairs are chosen by rank first (every point's next untaken token before any point's
second), then by entropy, highest first; each (point, rank) at most once.

Points are excluded as EAGer-init excludes them: after the prompt's no-branch window closed branching
(``no_branch_window`` steps without a branch in phase (a)), and after a sequence's end-of-thinking
marker (``Sequence.marker_step``). A point must also leave the continuation room for an answer: its
step is at most ``last_branch_step(max_new_tokens)``, so at least ``room_margin(max_new_tokens)``
tokens (an eighth of the budget, at least 2) remain after its prefix, the forced token included.

How many tokens a point can offer: the engine ranks a point's tokens within its top
``MAX_RANKED_TOKENS`` (rank + taken <= 64), and a run with a ``top_k`` sampling filter allows only
its top_k tokens (rank + taken <= top_k: a point whose top_k tokens are all taken offers nothing).
What top_p and min_p leave is known only to the engine: a seed beyond it comes back "unavailable".

Pure functions of the result's sequences: no model, no engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional, Sequence as Seq

from ..core.vocabulary import MAX_ENTROPY_TOP_K

if TYPE_CHECKING:  # types only: results does not import this module, and this module needs none of it to run
    from ..core.results import Sequence

__all__ = ["BranchChoice", "BranchPoint", "MAX_RANKED_TOKENS", "branch_points", "branching_closes_at",
           "choose_branch_points", "last_branch_step", "ranked_limit", "room_margin"]

# The engine ranks a point's tokens within its top 64 (rank + taken tokens).
MAX_RANKED_TOKENS = MAX_ENTROPY_TOP_K


def ranked_limit(top_k: int = 0) -> int:
    """The most rank + taken tokens a point can offer in a run with this top_k filter (0: none)."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0, got {top_k!r}")
    return min(MAX_RANKED_TOKENS, top_k) if top_k > 0 else MAX_RANKED_TOKENS


def room_margin(max_new_tokens: int) -> int:
    """Tokens a continuation needs after a point's prefix, the forced one included: an eighth of
    max_new_tokens, at least 2 (a forced token alone can end nothing but with "length")."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    return max(2, max_new_tokens // 8)


def last_branch_step(max_new_tokens: int) -> int:
    """The last step a tree point may have in a run with this max_new_tokens (-1: none)."""
    return max_new_tokens - room_margin(max_new_tokens)


@dataclass(frozen=True)
class BranchPoint:
    """A node of a prompt's tree where a sequence generated a token with a recorded entropy."""

    sequence: int  # the first sequence (in result order) that generated a token here
    step: int  # tokens generated before the point: its prefix is that sequence's token_ids[:step]
    entropy: float  # the recorded top-K entropy of the next-token distribution at the point
    taken: tuple[int, ...]  # next tokens the tree took here, in the order they first appear


@dataclass(frozen=True)
class BranchChoice:
    point: BranchPoint
    rank: int  # 1: the most likely token not in point.taken; 2: the next one; ...


def branching_closes_at(sequences: Iterable[Sequence], no_branch_window: int) -> Optional[int]:
    """The step after which EAGer-init's no-branch window closed the prompt's branching, None if never.

    The engine counts, after each step, the steps since the prompt's last branch (a child's
    ``branch_step`` is the step it was born at) and closes branching once they reach the window; the
    step that closes it may still branch. Only phase (a)'s tree (round 0) ran under that rule.
    """
    if no_branch_window < 1:
        raise ValueError(f"no_branch_window must be >= 1, got {no_branch_window}")
    seqs = [s for s in sequences if s.round == 0]
    if not seqs:
        return None
    births = sorted({s.branch_step for s in seqs if s.parent is not None})
    longest = max(len(s.token_ids) for s in seqs)
    last: Optional[int] = None
    k = 0
    for step in range(longest):
        while k < len(births) and births[k] <= step:
            last = births[k]
            k += 1
        quiet = step + 1 if last is None else step - last
        if quiet >= no_branch_window:
            return step
    return None


def branch_points(sequences: Seq[Sequence], no_branch_window: int = 1000) -> list[BranchPoint]:
    """Every eligible branch point of one prompt's tree, highest entropy first (ties: sequence, step)."""
    closes = branching_closes_at(sequences, no_branch_window)
    node_of: dict[tuple[int, int], int] = {}  # (prefix node, next token) -> node of the longer prefix
    first: dict[int, tuple[int, int, float, bool]] = {}  # node -> (sequence, step, entropy, eligible)
    taken: dict[int, list[int]] = {}
    for s in sequences:
        node = 0  # the empty prefix
        for step, token in enumerate(s.token_ids):
            own = step - s.branch_step
            if own >= 0 and node not in first and own < len(s.entropies):
                h = float(s.entropies[own])
                eligible = (math.isfinite(h) and (closes is None or step <= closes)
                            and (s.marker_step is None or step <= s.marker_step))
                first[node] = (s.index, step, h, eligible)
            nexts = taken.setdefault(node, [])
            if token not in nexts:
                nexts.append(token)
            key = (node, token)
            child = node_of.get(key)
            if child is None:
                child = node_of[key] = len(node_of) + 1
            node = child
    points = [BranchPoint(sequence=seq, step=step, entropy=h, taken=tuple(taken[node]))
              for node, (seq, step, h, eligible) in first.items() if eligible]
    points.sort(key=lambda p: (-p.entropy, p.sequence, p.step))
    return points


def choose_branch_points(points: Seq[BranchPoint], n: int,
                         max_ranked: int = MAX_RANKED_TOKENS) -> list[BranchChoice]:
    """Up to `n` (point, rank) pairs: rank 1 at every point by entropy, then rank 2, ... (module docstring).

    Fewer than `n` only when the points run out of ranks the engine can reach (rank + taken <= max_ranked).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    ordered = sorted(points, key=lambda p: (-p.entropy, p.sequence, p.step))
    chosen: list[BranchChoice] = []
    rank = 1
    while len(chosen) < n:
        reachable = [p for p in ordered if rank + len(p.taken) <= max_ranked]
        if not reachable:
            break
        for p in reachable:
            chosen.append(BranchChoice(point=p, rank=rank))
            if len(chosen) == n:
                break
        rank += 1
    return chosen
