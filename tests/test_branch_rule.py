"""EAGer-init's branching rule replayed over recorded trees: every branch where the rule says, and only there.

The engine records each own step's top-K entropy, and every live sequence of a prompt advances one
token per round, so round r of a prompt is token position r of each of its sequences. Replaying the
rule (H > θ, fewer than M sequences, the no-branch window, the p99 floor from earlier rounds) over
those entropies must give exactly the branches the engine made, with several prompts batched
together (their sequences then interleave in the engine's live table).
"""

from __future__ import annotations

import numpy as np
import pytest

import eager_cpp
from conftest import CAPITAL_PROMPTS

PROMPTS = CAPITAL_PROMPTS + [
    "Question: A farmer has 12 cows and buys 7 more. How many cows?\nAnswer:",
    "The most surprising thing about the ocean is",
]


def replay(prompt: eager_cpp.PromptResult, theta: float, cap: int, window: int, p99: bool,
           same_round_floor: bool = False):
    """(parent, round) of every branch the rule makes over the recorded entropies, the rounds, and the
    rows that crossed θ under the cap after the window had closed (branches the window prevented).
    same_round_floor: the p99 floor also counts earlier rows of the same round (the rule before the fix)."""
    seqs = sorted(prompt.sequences, key=lambda s: s.index)  # the engine's row order within a prompt
    rounds = max(len(s.token_ids) for s in seqs)
    n, open_, since, history, branches, prevented = 1, True, 0, [], [], 0
    for r in range(rounds):
        branched, this_round = False, []
        for s in seqs:
            # A root's rows are rounds 0..len-1; a child's first token came from its parent's row.
            first_row = s.branch_step if s.parent is None else s.branch_step + 1
            if not first_row <= r < len(s.token_ids):
                continue
            h = s.entropies[r - s.branch_step]
            threshold = theta
            if p99 and h > theta and history:
                threshold = max(theta, float(np.percentile(np.array(history, dtype=np.float64), 99)))
            if open_ and n < cap and h > threshold:
                branches.append((s.index, r))
                n += 1
                branched = True
            elif not open_ and n < cap and h > threshold:
                prevented += 1
            (history if same_round_floor else this_round).append(h)
        history += [] if same_round_floor else this_round  # the p99 floor sees earlier rounds only
        since = 0 if branched else since + 1
        if since >= window or n >= cap:
            open_ = False
    return branches, rounds, prevented


@pytest.mark.parametrize("mode", ["fixed", "p99"])
def test_branches_replay_exactly_with_prompts_batched(model, mode):
    """The no-branch window and the step count: each prompt counted once per round, however its rows lie."""
    # θ = 2.0 and W = 3 on these prompts: some reach the cap, some stop branching when the window closes.
    theta, cap, window = 2.0, 64, 3
    r = eager_cpp.run(model, PROMPTS, method="eager_init", max_sequences=cap, entropy_threshold=theta,
                      max_new_tokens=24, no_branch_window=window, threshold_mode=mode, seed=3, think_end_marker=None)
    prevented = 0
    for p in r.prompts:
        expected, rounds, stopped = replay(p, theta, cap, window, mode == "p99")
        made = sorted((s.parent, s.branch_step) for s in p.sequences if s.parent is not None)
        assert made == sorted(expected), f"prompt {p.index}"
        assert p.steps == rounds, f"prompt {p.index}: counted {p.steps} steps, was live for {rounds}"
        prevented += stopped
    # The window mattered: rows crossed θ under the cap after it had closed, and did not branch.
    assert prevented > 0
    assert any(p.n_sequences > 1 for p in r.prompts)  # and some branched while it was open


def test_p99_floor_uses_earlier_rounds_only(model):
    """The reference code's running floor sees earlier steps' entropies, not earlier rows of this step."""
    theta, cap = 1.0, 16
    r = eager_cpp.run(model, PROMPTS, method="eager_init", max_sequences=cap, entropy_threshold=theta,
                      max_new_tokens=16, threshold_mode="p99", seed=3, think_end_marker=None)
    discriminating = 0
    for p in r.prompts:
        expected, _, _ = replay(p, theta, cap, 1000, True)
        made = sorted((s.parent, s.branch_step) for s in p.sequences if s.parent is not None)
        assert made == sorted(expected), f"prompt {p.index}"
        old, _, _ = replay(p, theta, cap, 1000, True, same_round_floor=True)
        discriminating += sorted(old) != made
    assert discriminating > 0  # these trees are ones where the two floors decide differently
