"""Tests for eager_cpp.answers.metrics: unbiased pass@k, majority voting, aggregate metrics."""

import itertools
import json
import math

import pytest

from eager_cpp.answers.metrics import (
    PromptScore,
    compute_metrics,
    majority_vote,
    pass_at_k_unbiased,
)


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n samples (the first c correct) containing a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 9))
def test_unbiased_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k_unbiased(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)


def test_unbiased_closed_forms_and_edge_cases():
    assert pass_at_k_unbiased(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k_unbiased(10, 0, 5) == 0.0
    assert pass_at_k_unbiased(10, 6, 5) == 1.0  # n - c < k
    assert pass_at_k_unbiased(3, 1, 8) is None  # fewer samples than k: no estimate, not coverage
    assert pass_at_k_unbiased(3, 0, 8) is None
    assert pass_at_k_unbiased(0, 0, 1) is None
    # large n stays finite and in [0, 1]
    v = pass_at_k_unbiased(1000, 7, 64)
    assert 0.0 < v < 1.0 and math.isfinite(v)
    assert v == pytest.approx(1 - math.comb(993, 64) / math.comb(1000, 64))


def test_unbiased_rejects_bad_arguments():
    for args in [(-1, 0, 1), (4, 5, 1), (4, -1, 1), (4, 1, 0)]:
        with pytest.raises(ValueError):
            pass_at_k_unbiased(*args)


def test_majority_vote_groups_by_normalised_answer():
    raw, key = majority_vote(["18.0", "7", "$18", None, "7", "18"])
    assert (raw, key) == ("18.0", "18")


def test_majority_vote_tie_goes_to_first_seen():
    assert majority_vote(["b", "a", "a", "b"]) == ("b", "b")
    assert majority_vote([None, "a", "b", "b", "a"]) == ("a", "a")


def test_majority_vote_no_votes():
    assert majority_vote([None, None]) == (None, None)
    assert majority_vote(["  ", "."]) == (None, None)  # empty after normalisation
    assert majority_vote([]) == (None, None)


def _prompt(answers, correct, tokens=10):
    return {"answers": answers, "correct": correct, "generated_tokens": tokens, "sequences": len(answers)}


def test_compute_metrics_hand_made():
    prompts = [
        # majority "18" (3 votes incl. "18.0") and correct; 3/4 correct
        _prompt(["18", "18.0", "7", "$18"], [True, True, False, True], tokens=40),
        # solved by a minority answer: pass but not cons; 1/4
        _prompt(["5", "5", "6", "5"], [False, False, True, False], tokens=30),
        # tie 2-2: first seen ("9") wins, and it is wrong
        _prompt(["9", "3", "3", "9"], [False, True, True, False], tokens=20),
        # nobody voted (no answers extracted): cons wrong, and nothing correct
        _prompt([None, None], [False, False], tokens=10),
    ]
    m = compute_metrics(prompts, ks=(1, 2))
    assert m["n_prompts"] == 4
    assert m["pass@k"] == pytest.approx(3 / 4)
    assert m["cons@k"] == pytest.approx(1 / 4)
    assert m["pass_rate"] == pytest.approx((3 / 4 + 1 / 4 + 2 / 4 + 0) / 4)
    assert m["tokens"] == 100
    assert m["mean_tokens_per_prompt"] == pytest.approx(25.0)
    assert m["mean_sequences"] == pytest.approx((4 + 4 + 4 + 2) / 4)
    assert m["pass@1_unbiased"] == pytest.approx((3 / 4 + 1 / 4 + 2 / 4 + 0) / 4)
    exp2 = (brute_pass_at_k(4, 3, 2) + brute_pass_at_k(4, 1, 2) + brute_pass_at_k(4, 2, 2) + 0) / 4
    assert m["pass@2_unbiased"] == pytest.approx(exp2)
    assert "pass@4_unbiased" not in m

    pp = m["per_prompt"]
    assert [p["pass"] for p in pp] == [True, True, True, False]
    assert [p["cons"] for p in pp] == [True, False, False, False]
    assert [p["majority_answer"] for p in pp] == ["18", "5", "9", None]
    assert [p["n_correct"] for p in pp] == [3, 1, 2, 0]
    assert [p["n_sequences"] for p in pp] == [4, 4, 4, 2]
    assert [p["tokens"] for p in pp] == [40, 30, 20, 10]
    assert pp[0]["pass_rate"] == pytest.approx(0.75)
    json.dumps(m)  # plain JSON-serialisable output


def test_answers_the_scorer_judged_differently_vote_apart():
    # "18" and "18.0" normalise alike, but the scorer marked only one correct: they are two groups of
    # one, tied with "4"; the first seen ("18.0", judged wrong) leads, so the vote is not correct.
    m = compute_metrics([_prompt(["18.0", "18", "4"], [False, True, False])])
    assert m["cons@k"] == 0.0 and m["pass@k"] == 1.0
    # Judged alike, they vote together and win.
    m = compute_metrics([_prompt(["18.0", "18", "4"], [True, True, False])])
    assert m["cons@k"] == 1.0 and m["per_prompt"][0]["majority_answer"] == "18.0"


def test_none_answers_do_not_vote():
    # One real vote for "4" beats two sequences that extracted nothing.
    m = compute_metrics([_prompt([None, None, "4"], [False, False, True])])
    assert m["per_prompt"][0]["majority_answer"] == "4"
    assert m["cons@k"] == 1.0


def test_default_ks_and_fewer_sequences_than_k():
    # A prompt with fewer sequences than k has no unbiased pass@k: absent for it, and overall (where the
    # estimate would otherwise become that prompt's coverage, another estimator).
    m = compute_metrics([_prompt(["1", "2"], [False, True])])
    assert set(k for k in m if k.endswith("_unbiased")) == {"pass@1_unbiased"}
    assert m["pass@1_unbiased"] == pytest.approx(0.5)
    assert "pass@8_unbiased" not in m["per_prompt"][0]
    m = compute_metrics([_prompt(["1", "2"], [False, True]), _prompt(list("12345678"), [True] + [False] * 7)])
    assert set(k for k in m if k.endswith("_unbiased")) == {"pass@1_unbiased"}
    assert m["per_prompt"][1]["pass@8_unbiased"] == 1.0 and m["per_prompt"][1]["pass@4_unbiased"] == 0.5


def test_empty_input():
    m = compute_metrics([])
    assert m["n_prompts"] == 0 and m["pass@k"] == 0.0 and m["tokens"] == 0 and m["per_prompt"] == []


def test_inconsistent_input_raises():
    with pytest.raises(ValueError, match="answers"):
        compute_metrics([{"answers": ["1"], "correct": [True, False], "generated_tokens": 1, "sequences": 2}])
    with pytest.raises(ValueError, match="sequences"):
        compute_metrics([{"answers": ["1"], "correct": [True], "generated_tokens": 1, "sequences": 3}])
    with pytest.raises(ValueError, match="missing key"):
        compute_metrics([{"answers": ["1"], "correct": [True], "sequences": 1}])
    with pytest.raises(ValueError):
        compute_metrics([_prompt(["1"], [True])], ks=(0,))


def test_prompt_score_to_dict():
    s = PromptScore(passed=True, cons=False, pass_rate=0.5, majority_answer="x", n_sequences=2,
                    n_correct=1, tokens=9, unbiased={1: 0.5})
    d = s.to_dict()
    assert d["pass"] is True and d["pass@1_unbiased"] == 0.5 and d["tokens"] == 9


def test_votes_never_group_sequences_the_scorer_judged_differently():
    # A custom scorer accepted only the first "A"; the extractor groups all three "A"s together.
    # Grouped by answer alone, the majority "A" would count as correct through one member; grouped
    # by (answer, verdict) the majority is the two rejected "A"s.
    item = {"answers": ["A", "A", "A", "B", "B"], "correct": [True, False, False, False, False],
            "generated_tokens": 5, "sequences": 5}
    score = compute_metrics([item])
    assert score["cons@k"] == 0.0 and score["pass@k"] == 1.0
    # With the default scorers every member of an answer group shares its verdict: nothing changes.
    agree = {"answers": ["7", "7.0", "8"], "correct": [True, True, False], "generated_tokens": 3, "sequences": 3}
    assert compute_metrics([agree])["cons@k"] == 1.0
