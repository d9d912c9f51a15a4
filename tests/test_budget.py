"""Tests for eager_cpp.method.budget.plan_reallocation (docs/method.md, "Reallocation")."""

import random

import pytest

from eager_cpp.method.budget import PromptExtra, PromptSummary, ReallocationPlan, plan_reallocation, retry_theta


def S(index, sequences, solved=None, theta=2.0, tries=0):
    return PromptSummary(index=index, sequences=sequences, solved=solved, theta=theta, tries=tries)


def extras_of(plan):
    return {e.index: e.extra_sequences for e in plan.extras}


# --- budget and selection --------------------------------------------------------------------


def test_adapt_budget_selection_and_floor_remainder_split():
    m = 8
    # n = 8, 2, 8, 1, 8  -> b = 40 - 27 = 13; S = capped prompts {0, 2, 4}
    sums = [S(4, 8), S(1, 2), S(0, 8), S(3, 1), S(2, 8)]  # deliberately unsorted
    plan = plan_reallocation(sums, m, "adapt")
    assert plan.budget == 13
    assert plan.selected == (0, 2, 4)  # index order
    # 13 = 3*4 + 1: the first of S gets one more
    assert [(e.index, e.extra_sequences) for e in plan.extras] == [(0, 5), (2, 4), (4, 4)]
    assert plan.unused == 0
    assert plan.total_extra == 13


def test_budget_smaller_than_selected_set():
    m = 4
    # five capped prompts, one with 2 sequences -> b = 2 < |S| = 5
    sums = [S(i, 4) for i in range(5)] + [S(5, 2)]
    plan = plan_reallocation(sums, m, "adapt")
    assert plan.budget == 2
    assert plan.selected == (0, 1, 2, 3, 4)
    # only the first b get one each; zero-extra prompts are not listed
    assert plan.extras == (PromptExtra(0, 1, 2.0), PromptExtra(1, 1, 2.0))
    assert plan.unused == 0


def test_adapt_cap_three_m_and_unused():
    m = 2
    # one capped prompt, nine with a single sequence: b = 20 - 11 = 9, cap 3M = 6
    sums = [S(0, 2)] + [S(i, 1) for i in range(1, 10)]
    plan = plan_reallocation(sums, m, "adapt")
    assert plan.budget == 9
    assert extras_of(plan) == {0: 6}
    assert plan.unused == 3  # not redistributed


def test_full_cap_m_and_unused():
    m = 4
    # unsolved prompt 0 (capped) and 1 (n=1); solved prompts 2..5 with n=1: b = 24 - 9 = 15
    sums = [S(0, 4, False), S(1, 1, False)] + [S(i, 1, True) for i in range(2, 6)]
    plan = plan_reallocation(sums, m, "full")
    assert plan.budget == 15
    assert plan.selected == (0, 1)
    assert extras_of(plan) == {0: 4, 1: 4}  # 8 and 7 wanted, capped at M = 4
    assert plan.unused == 7


def test_full_selection_capped_first_then_rest_in_index_order():
    m = 4
    sums = [
        S(0, 1, False),
        S(1, 4, True),
        S(2, 4, False),
        S(3, 2, False),
        S(4, 4, False),
        S(5, 1, True),
    ]
    plan = plan_reallocation(sums, m, "full")
    assert plan.budget == 24 - 16
    assert plan.selected == (2, 4, 0, 3)
    # 8 over 4 prompts -> 2 each
    assert [(e.index, e.extra_sequences) for e in plan.extras] == [(2, 2), (4, 2), (0, 2), (3, 2)]


def test_full_never_gives_to_solved_prompt():
    m = 8
    sums = [S(0, 8, True), S(1, 1, True), S(2, 1, False), S(3, 8, True)]
    plan = plan_reallocation(sums, m, "full")
    assert plan.selected == (2,)
    assert set(extras_of(plan)) == {2}
    assert extras_of(plan)[2] == 8  # b = 14, cap M
    assert plan.unused == 6


def test_empty_selected_set():
    # adapt: nobody reached the cap
    plan = plan_reallocation([S(0, 1), S(1, 3)], 4, "adapt")
    assert plan == ReallocationPlan(budget=4, selected=(), extras=(), unused=4)
    # full: everything solved
    plan = plan_reallocation([S(0, 1, True), S(1, 3, True)], 4, "full")
    assert plan.selected == () and plan.extras == () and plan.unused == 4


def test_zero_budget():
    plan = plan_reallocation([S(0, 4, False), S(1, 4, False)], 4, "full")
    assert plan.budget == 0
    assert plan.selected == (0, 1)
    assert plan.extras == () and plan.unused == 0


def test_adapt_ignores_solved_labels():
    plan = plan_reallocation([S(0, 2, True), S(1, 1, None)], 2, "adapt")
    assert plan.selected == (0,) and extras_of(plan) == {0: 1}


def test_mode_aliases():
    sums = [S(0, 2, False), S(1, 1, True)]
    assert plan_reallocation(sums, 2, "eager") == plan_reallocation(sums, 2, "full")
    assert plan_reallocation(sums, 2, "eager_adapt") == plan_reallocation(sums, 2, "adapt")


# --- theta -----------------------------------------------------------------------------------


def reference_thetas(theta0, tries, decaying):
    """The authors' retry loop, written out as their script runs it (not from eager_cpp's formula):
    the decaying set keeps its running θ and multiplies it by 0.8 every try; every other prompt is
    reset to θ0; from the third try on, the try's θ is also multiplied by 0.9."""
    theta, out = theta0, []
    for t in range(1, tries + 1):
        if decaying:
            theta = theta * 0.8
        else:
            theta = theta0
        if t >= 3:
            theta = theta * 0.9
        out.append(theta)
    return out


# The "reference" column of the fidelity issue's table (θ0 = 2.0, six tries, rounded to 2 digits).
REFERENCE_TABLE = {
    True: [1.6, 1.28, 0.92, 0.66, 0.48, 0.34],  # full EAGer, unsolved, n_i < M after EAGer-init
    False: [2.0, 2.0, 1.8, 1.8, 1.8, 1.8],  # saturated full-EAGer prompts and every EAGer-adapt prompt
}


@pytest.mark.parametrize("decaying", [True, False])
def test_retry_theta_is_the_reference_loop(decaying):
    ours = [retry_theta(2.0, t, decaying) for t in range(1, 7)]
    assert ours == pytest.approx(reference_thetas(2.0, 6, decaying), rel=1e-12)
    assert [round(x, 2) for x in ours] == REFERENCE_TABLE[decaying]
    assert [retry_theta(1.5, t, decaying) for t in range(1, 9)] == pytest.approx(
        reference_thetas(1.5, 8, decaying), rel=1e-12)
    with pytest.raises(ValueError, match="attempt"):
        retry_theta(2.0, 0, decaying)


def test_the_decaying_set_is_chosen_once_from_the_summaries():
    m = 4
    sums = [
        S(0, 4, False),  # full, unsolved, saturated: θ0 on its first try
        S(1, 1, False),  # full, unsolved, under the cap: decaying, θ0 x 0.8 on its first try
        S(2, 1, False, theta=1.5, tries=2),  # decaying, third try: from its own θ0
        S(3, 4, False, tries=2),  # saturated, third try: θ0 x 0.9
    ] + [S(i, 1, True) for i in range(4, 12)]
    plan = plan_reallocation(sums, m, "full")
    assert plan.decaying == (1, 2)
    thetas = {e.index: e.theta for e in plan.extras}
    assert thetas == pytest.approx({0: 2.0, 1: 1.6, 2: 1.5 * 0.8 ** 3 * 0.9, 3: 1.8})


def test_theta_adapt_mode_only_late_decay():
    sums = [S(0, 2, False, theta=2.4, tries=0), S(1, 2, None, theta=2.4, tries=2), S(2, 0)]
    plan = plan_reallocation(sums, 2, "adapt")
    assert plan.decaying == ()  # adapt never decays by 0.8, even for a prompt marked unsolved
    thetas = {e.index: e.theta for e in plan.extras}
    assert thetas == pytest.approx({0: 2.4, 1: 2.4 * 0.9})


def test_custom_decays():
    plan = plan_reallocation(
        [S(0, 1, False, theta=2.0, tries=2), S(1, 1, True)], 2, "full",
        theta_decay_unsolved=0.5, theta_decay_late=0.5,
    )
    assert plan.extras[0].theta == pytest.approx(2.0 * 0.5 ** 3 * 0.5)  # third try of a decaying prompt


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(summaries=[S(0, 1)], max_sequences=4, mode="greedy"), "unknown reallocation mode"),
        (dict(summaries=[S(0, 0)], max_sequences=0, mode="adapt"), "max_sequences"),
        (dict(summaries=[], max_sequences=4, mode="adapt"), "empty"),
        (dict(summaries=[S(0, 5)], max_sequences=4, mode="adapt"), "exceeds max_sequences"),
        (dict(summaries=[S(0, -1)], max_sequences=4, mode="adapt"), ">= 0"),
        (dict(summaries=[S(0, 1, None)], max_sequences=4, mode="full"), "solved is None"),
        (dict(summaries=[S(0, 1), S(0, 2)], max_sequences=4, mode="adapt"), "duplicate"),
        (dict(summaries=[S(0, 1, tries=-1)], max_sequences=4, mode="adapt"), "tries"),
        (dict(summaries=[S(0, 1)], max_sequences=4, mode="adapt", theta_decay_late=0.0), "theta_decay_late"),
    ],
)
def test_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_reallocation(**kwargs)


# --- invariant over random inputs ------------------------------------------------------------


def test_invariant_random():
    rng = random.Random(12345)
    for _ in range(3000):
        m = rng.randint(1, 12)
        n = rng.randint(1, 15)
        mode = rng.choice(["adapt", "full"])
        idx = rng.sample(range(100), n)
        sums = [
            S(i, rng.randint(0, m), rng.choice([True, False]), rng.uniform(0.5, 3.0), rng.randint(0, 4))
            for i in idx
        ]
        plan = plan_reallocation(sums, m, mode)
        used = sum(s.sequences for s in sums)
        by_index = {s.index: s for s in sums}
        cap = 3 * m if mode == "adapt" else m

        assert plan.budget == m * n - used >= 0
        assert used + plan.total_extra <= m * n
        assert plan.total_extra + plan.unused == plan.budget
        assert plan.unused >= 0
        # selected set is exactly the rule's set, extras follow S's order and are in S
        if mode == "adapt":
            assert plan.selected == tuple(sorted(i for i in idx if by_index[i].sequences == m))
        else:
            unsolved = sorted(i for i in idx if not by_index[i].solved)
            assert plan.selected == tuple(
                [i for i in unsolved if by_index[i].sequences == m]
                + [i for i in unsolved if by_index[i].sequences < m]
            )
            assert all(not by_index[e.index].solved for e in plan.extras)
        order = {i: j for j, i in enumerate(plan.selected)}
        assert [order[e.index] for e in plan.extras] == sorted(order[e.index] for e in plan.extras)
        assert all(0 < e.extra_sequences <= cap for e in plan.extras)
        # fair split: uncapped extras differ by at most one and never increase along S
        amounts = [e.extra_sequences for e in plan.extras]
        assert amounts == sorted(amounts, reverse=True)
        if plan.selected and plan.budget:
            assert max(amounts) - min(amounts) <= 1 or max(amounts) == cap
        # a positive unused only comes from caps
        if plan.unused:
            assert not plan.selected or all(a == cap for a in amounts) and len(amounts) == len(plan.selected)
        # theta never increases
        assert all(e.theta <= by_index[e.index].theta + 1e-12 for e in plan.extras)


def test_long_generations_go_to_ray_in_windows_whose_results_fit_the_driver():
    # A phase (a) window's results wait in the driver until the chunks before them are back: 4,096 prompts of
    # M 32 x 32,768 tokens would be about 100 GB there.
    from eager_cpp.core.options import RunOptions
    from eager_cpp.runner.distributed import RESULT_BYTES_PER_TOKEN, WINDOW_PROMPTS, WINDOW_RESULT_BYTES, window_prompts

    assert window_prompts(RunOptions.create(max_sequences=8, max_new_tokens=128)) == WINDOW_PROMPTS
    long = window_prompts(RunOptions.create(max_sequences=32, max_new_tokens=32768))
    assert 1 <= long < 64 and long * 32 * 32768 * RESULT_BYTES_PER_TOKEN <= WINDOW_RESULT_BYTES
