"""Model.score_continuations: log-likelihoods of continuations from the model's logits, decoded natively.

The reference is llama-cpp-python's own llama_decode on the same model, with the same batch layout (context and
continuation in one batch, logits for the rows that predict the continuation) and flash attention on as
eager_cpp's contexts have it, log-softmax taken in numpy. llama.cpp's results depend on the batch (which rows a
micro-batch holds, flash attention or not: up to tenths of a nat here), so only the same layout compares at 1e-6.
"""

from __future__ import annotations

import pytest

import eager_cpp

from conftest import reference_scores

TEXTS = [("Country: France\nCapital:", " Paris"), ("The quick brown fox", " jumps over the lazy dog."),
         ("Country: Japan\nCapital:", " Paris"), ("2 + 2 =", " 4")]


def pairs_of(model: eager_cpp.Model) -> list[tuple[list[int], list[int]]]:
    return [(model.tokenize(c), model.tokenize(x, add_special=False)) for c, x in TEXTS]


def test_a_continuation_scores_the_sum_of_its_tokens_log_softmax(model, layout_reference):
    for pair in pairs_of(model):
        [(logprob, greedy)] = model.score_continuations([pair])
        [(want, want_greedy)] = reference_scores(layout_reference, [pair])
        assert logprob == pytest.approx(want, abs=1e-6), pair
        assert greedy == want_greedy
        assert logprob < 0


def test_a_batch_scores_each_request_as_its_own_sequence(model, layout_reference):
    """Requests side by side in one llama_decode, each its own sequence id: as llama-cpp-python decodes the same
    batch. (Against each request alone they differ by llama.cpp's batch noise, up to half a nat on this model.)"""
    pairs = pairs_of(model) * 3
    got = model.score_continuations(pairs)
    want = reference_scores(layout_reference, pairs)
    assert [g for _, g in got] == [g for _, g in want]
    assert [lp for lp, _ in got] == pytest.approx([lp for lp, _ in want], abs=1e-6)


def test_many_requests_split_into_groups_and_decode_calls(model):
    """More requests than one group holds (64) and more rows than one llama_decode call returns (128): each score
    stays in its request's place (two requests far apart, alternating)."""
    france, japan = (model.tokenize(f"Country: {c}\nCapital:") for c in ("France", "Japan"))
    paris = model.tokenize(" Paris, France", add_special=False)
    alone = [model.score_continuations([(c, paris)])[0][0] for c in (france, japan)]
    assert alone[0] - alone[1] > 5
    scores = model.score_continuations([(france, paris), (japan, paris)] * 35)
    assert len(scores) == 70
    for k, (logprob, _) in enumerate(scores):
        assert logprob == pytest.approx(alone[k % 2], abs=1.0), k


def test_greedy_says_whether_every_token_is_the_argmax(model):
    context = model.tokenize("Country: France\nCapital:")
    [(_, paris)] = model.score_continuations([(context, model.tokenize(" Paris", add_special=False))])
    [(_, tokyo)] = model.score_continuations([(context, model.tokenize(" Tokyo", add_special=False))])
    assert paris and not tokyo


@pytest.mark.parametrize("pair, message", [
    (([], [5]), "empty context"),
    (([2], []), "empty continuation"),
    (([2], [10**7]), "outside the vocabulary"),
    (([2] * 40000, [5]), "more than the model's context"),
])
def test_bad_requests_are_value_errors(model, pair, message):
    with pytest.raises(ValueError, match=message):
        model.score_continuations([pair])


def test_a_request_that_is_not_a_pair_is_a_type_error(model):
    with pytest.raises(TypeError, match="request 0 must be a"):
        model.score_continuations([[1, 2, 3]])


def test_no_requests_give_no_scores(model):
    assert model.score_continuations([]) == []
