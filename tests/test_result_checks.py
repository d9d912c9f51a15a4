"""Results checked before they are reused (issue 40, item 4): a result whose trees are broken is one ValueError
naming the prompt and the sequence, from `reallocate` (every reallocating method) and from `RunResult.from_jsonl`,
before anything runs; a scorer whose extract() returns no answer string is a TypeError naming it, and a scorer
that raises after phase (a) ends phase (c) as a failed try does, phase (a) kept."""

from __future__ import annotations

import copy
import re
from dataclasses import replace

import pytest

import eager_cpp
from conftest import load_jsonl, tree_shape
from eager_cpp.method.phases import ReallocationWarning
from eager_cpp.core.results import check_structure

# Three capitals prompts, M = 4, θ = 0.6: prompt 2 branches to 4 sequences (3 is a child of 1, born at step 1),
# prompts 0 and 1 stop short of M, so every reallocating method has budget to spend.
SETTINGS = dict(max_sequences=4, entropy_threshold=0.6, max_new_tokens=8, stop="\n", seed=0)
METHODS = ["eager_adapt", "eager", "eager_label_free"]
P = 2  # the prompt the tampers edit


@pytest.fixture(scope="module")
def rows():
    return load_jsonl("capitals_dev_100.jsonl", limit=3)


@pytest.fixture(scope="module")
def init(model, rows) -> eager_cpp.RunResult:
    result = eager_cpp.run(model, [r["prompt"] for r in rows], method="eager_init", **SETTINGS)
    seqs = result.prompts[P].sequences
    # The shape the tampers below are written for.
    assert [(s.index, s.parent) for s in seqs] == [(0, None), (1, 0), (2, 0), (3, 1)]
    assert seqs[3].branch_step >= 1 and len(seqs[3].own_tokens) >= 2 and len(seqs[3].entropies) == len(seqs[3].own_tokens)
    assert sum(p.n_sequences for p in result.prompts) < 3 * SETTINGS["max_sequences"]
    return result


def _edit(position: int, **fields):
    """A tamper that replaces sequence `position` of prompt P with a copy holding `fields`."""
    def tamper(seqs):
        seqs[position] = replace(seqs[position], **fields)
    return tamper


def _set_sequences(make):
    def tamper(seqs):
        seqs[:] = make(seqs)
    return tamper


def _cycle(seqs):
    seqs[1] = replace(seqs[1], parent=3)  # 3's parent is 1
    assert seqs[3].parent == 1


TAMPERS = {
    "every sequence removed": (_set_sequences(lambda s: []), rf"prompt {P} has no sequences"),
    "root removed": (_set_sequences(lambda s: s[1:]), rf"prompt {P} has no sequence 0 \(its root\)"),
    "parent 999": (_edit(3, parent=999), rf"prompt {P}: sequence 3 has parent 999, which is not a sequence of the "
                                         r"prompt \(0\.\.3\)"),
    "parent -1": (_edit(3, parent=-1), rf"prompt {P}: sequence 3 has parent -1, which is not a sequence"),
    "two-sequence parent cycle": (_cycle, rf"prompt {P}: sequence 1 has parent 3, not an earlier sequence: .*cycle"),
    "branch_step past the tokens": (lambda s: _edit(3, branch_step=len(s[3].token_ids) + 1)(s),
                                    rf"prompt {P}: sequence 3: branch_step \d+ is outside its \d+ tokens"),
    "own_tokens not token_ids[branch_step:]": (lambda s: _edit(3, own_tokens=s[3].own_tokens + s[3].own_tokens[:1])(s),
                                               rf"prompt {P}: sequence 3: own_tokens \(\d+\) are not its tokens from "
                                               r"branch_step \d+ on"),
    "10x the entropies": (lambda s: _edit(3, entropies=s[3].entropies * 10)(s),
                          rf"prompt {P}: sequence 3 has \d+ entropies for \d+ own tokens"),
    "duplicate indices": (_edit(2, index=1), rf"prompt {P}: sequence index 1 appears twice"),
}


def tampered(init: eager_cpp.RunResult, name: str) -> eager_cpp.RunResult:
    result = copy.deepcopy(init)
    TAMPERS[name][0](result.prompts[P].sequences)
    return result


def answers_for(method, rows):
    return [r["answer"] for r in rows] if method == "eager" else None


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", list(TAMPERS))
def test_reallocate_refuses_a_tampered_result_before_anything_runs(model, init, rows, method, name):
    result = tampered(init, name)
    before = copy.deepcopy(result)
    with pytest.raises(ValueError, match=TAMPERS[name][1]):
        eager_cpp.reallocate(model, result, method, answers=answers_for(method, rows))
    assert result.prompts == before.prompts  # nothing ran, nothing was added


@pytest.mark.parametrize("method", METHODS)
def test_reallocate_takes_the_untampered_result(model, init, rows, method):
    result = copy.deepcopy(init)
    out = eager_cpp.reallocate(model, result, method, answers=answers_for(method, rows))
    assert out.stats.reallocated_sequences > 0 and out.stats.reallocation_error == ""
    check_structure(out.prompts)  # what reallocation makes holds too


@pytest.mark.parametrize("name", list(TAMPERS))
def test_from_jsonl_refuses_a_tampered_result_naming_the_line(tmp_path, init, name):
    path = tmp_path / "tampered.jsonl"
    tampered(init, name).to_jsonl(path)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:{P + 1}: .*{TAMPERS[name][1]}"):
        eager_cpp.RunResult.from_jsonl(path)


def test_from_jsonl_reads_the_untampered_result_back(tmp_path, init):
    path = tmp_path / "init.jsonl"
    init.to_jsonl(path)
    assert eager_cpp.RunResult.from_jsonl(path, settings=init.settings).prompts == init.prompts


# ----------------------------------------------------------------------------- scorers


class Returns:
    """A scorer whose extract() returns `value` whatever the text."""

    def __init__(self, value):
        self.value = value

    def extract(self, text: str):
        return self.value

    def __call__(self, text: str, answer: str) -> bool:
        return False


class Raises:
    """A scorer that fails on every text."""

    def extract(self, text: str):
        raise RuntimeError("the scorer broke")

    def __call__(self, text: str, answer: str) -> bool:
        raise RuntimeError("the scorer broke")


@pytest.mark.parametrize("value, kind", [(5, "int"), (["a"], "list"), (b"Paris", "bytes")])
def test_an_extract_that_returns_no_string_is_a_type_error_naming_the_scorer(init, rows, value, kind):
    result = copy.deepcopy(init)
    pattern = rf"the scorer Returns's extract\(\) returned {kind} .*it must return the answer as a str, or None"
    with pytest.raises(TypeError, match=pattern):
        result.score([r["answer"] for r in rows], Returns(value))
    with pytest.raises(TypeError, match=pattern):
        result.consensus(Returns(value))
    result.score([r["answer"] for r in rows], Returns(None))  # None is "no answer", and a str an answer
    assert result.consensus(Returns("Paris")) == ["Paris"] * 3


FAILURES = {  # (method, scorer) -> the error that ends phase (c)
    ("eager_label_free", "returns 5"): r"reading phase \(a\)'s answers failed: TypeError: the scorer Returns's "
                                       r"extract\(\) returned int 5",
    ("eager_label_free", "raises"): r"reading phase \(a\)'s answers failed: RuntimeError: the scorer broke",
    ("eager", "raises"): r"scoring phase \(a\) failed: RuntimeError: the scorer broke",
    ("eager", "returns 5"): r"scoring phase \(a\) failed: TypeError: the scorer Returns's extract\(\) returned int 5",
    ("eager_adapt", "raises"): r"scoring phase \(a\) failed: RuntimeError: the scorer broke",
}
SCORERS = {"returns 5": Returns(5), "raises": Raises()}


def labels(method, rows):
    """Answers for the labelled methods (the scorer then scores phase (a)); none for eager_label_free."""
    return None if method == "eager_label_free" else [r["answer"] for r in rows]


def assert_phase_a_kept(result, init, error):
    assert re.search(error, result.stats.reallocation_error), result.stats.reallocation_error
    assert tree_shape(result) == tree_shape(init)  # phase (a), as EAGer-init alone makes it, returned
    budget = 3 * SETTINGS["max_sequences"] - sum(p.n_sequences for p in init.prompts)
    assert result.stats.reallocated_sequences == 0 and result.stats.reallocation_tries == 0
    assert result.stats.unspent_sequences == budget == result.reallocation.plan.budget
    assert result.stats.sequences == 3 * SETTINGS["max_sequences"] - result.stats.unspent_sequences


@pytest.mark.parametrize("method, scorer", [("eager_label_free", "returns 5"), ("eager", "raises")])
def test_a_scorer_failing_after_phase_a_keeps_phase_a(model, init, rows, method, scorer):
    # eager_label_free reads the answers for its plan; eager scores each chunk of phase (a) as it is made.
    error = FAILURES[method, scorer]
    with pytest.warns(ReallocationWarning, match=error):
        result = eager_cpp.run(model, [r["prompt"] for r in rows], method=method, answers=labels(method, rows),
                               scorer=SCORERS[scorer], **SETTINGS)
    assert_phase_a_kept(result, init, error)


@pytest.mark.parametrize("method, scorer", list(FAILURES))
def test_a_scorer_failing_on_reallocate_keeps_the_result(model, init, rows, method, scorer):
    result = copy.deepcopy(init)
    error = FAILURES[method, scorer]
    with pytest.warns(ReallocationWarning, match=error):
        out = eager_cpp.reallocate(model, result, method, answers=labels(method, rows), scorer=SCORERS[scorer])
    assert out is result
    assert_phase_a_kept(result, init, error)


def test_a_scorer_failing_without_reallocation_still_raises(model, rows):
    # Nothing comes after phase (a) to fail instead: the error is the run's.
    with pytest.raises(RuntimeError, match="the scorer broke"):
        eager_cpp.run(model, [rows[0]["prompt"]], method="eager_init", answers=[rows[0]["answer"]], scorer=Raises(),
                      max_sequences=2, max_new_tokens=2)
