"""The "math_verify" scorer: math-verify's parse and verify behind the scorer interface, by name wherever the
built-in style names are accepted, and one clear ImportError where the package is missing."""

from __future__ import annotations

import pickle
import sys

import pytest

from eager_cpp.answers.metrics import run_metrics
from eager_cpp.answers.scoring import SCORERS, STYLES, answer_extractor, default_scorer, score_prompts
from eager_cpp.cli.parser import build_parser
from eager_cpp.core.results import PromptResult, Sequence


@pytest.fixture
def scorer():
    pytest.importorskip("math_verify", reason="math-verify is not installed (pip install \"eager_cpp[math-verify]\")")
    return default_scorer("math_verify")


def test_a_fraction_equals_its_decimal(scorer):
    assert scorer(r"so the answer is $\frac{1}{2}$", "0.5")
    assert scorer(r"the answer is \boxed{0.5}", r"\frac{1}{2}")
    assert scorer(r"the answer is \boxed{\frac{2}{4}}", "0.5")  # equal as values, not as the strings parsed
    # The built-in styles compare strings and numbers: the fraction is not 0.5 to them.
    assert not default_scorer("boxed")(r"\boxed{\frac{1}{2}}", "0.5")


def test_a_boxed_set_equals_the_set_in_any_order(scorer):
    assert scorer(r"The answer is \boxed{\{1,2\}}", r"\{2, 1\}")
    assert scorer.extract(r"The answer is \boxed{\{1,2\}}") == r"\{1,2\}"


def test_a_wrong_answer_and_no_answer_are_wrong(scorer):
    assert not scorer(r"the answer is \boxed{\frac{1}{3}}", "0.5")
    assert not scorer("I do not know.", "0.5")
    assert scorer.extract("I do not know.") is None


def test_gsm8k_style_numbers_verify_too(scorer):
    assert scorer("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72")
    assert not scorer("Natalia sold 48/2 = 24 clips in May.\n#### 70", "72")


def test_the_scorer_pickles_and_scores_a_run(scorer):
    assert pickle.loads(pickle.dumps(scorer)) == scorer
    p = PromptResult(index=0, prompt="q", prompt_tokens=1, sequences=[
        Sequence(index=k, text=t, token_ids=[1], own_tokens=[1], parent=None, branch_step=0, entropies=[],
                 finish_reason="stop")
        for k, t in enumerate([r"\boxed{\frac{1}{2}}", r"\boxed{0.5}", r"\boxed{3}"])])
    score_prompts([p], ["1/2"], "math_verify")  # by name, as the API takes it
    assert [s.correct for s in p.sequences] == [True, True, False]
    metrics = run_metrics([p])
    assert metrics["pass@k"] == 1.0 and metrics["cons@k"] == 1.0
    assert answer_extractor("math_verify")(r"\boxed{3}") == "3"


def test_math_verify_is_a_scorer_name_beside_the_styles():
    assert SCORERS == STYLES + ("math_verify",)
    for command in (["run", "in.txt", "-o", "out.jsonl"], ["eval", "data.jsonl"], ["bench", "data.jsonl"]):
        assert build_parser().parse_args(command + ["--scorer", "math_verify"]).scorer == "math_verify"
    with pytest.raises(ValueError, match="unknown scorer 'latex'"):
        default_scorer("latex")


def test_without_the_package_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "math_verify", None)  # import math_verify now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "eager_cpp\[math-verify\]"'):
        default_scorer("math_verify")


def test_without_the_package_the_cli_says_so_in_one_line(monkeypatch, tmp_path, capsys):
    from eager_cpp.cli import main

    monkeypatch.setitem(sys.modules, "math_verify", None)
    data = tmp_path / "data.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n')
    assert main(["eval", str(data), "--scorer", "math_verify", "--model", str(tmp_path / "none.gguf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("eager-cpp: error: scorer \"math_verify\" needs the math-verify package")
    assert 'pip install "eager_cpp[math-verify]"' in err


def test_run_takes_a_scorer_by_name(model):
    import eager_cpp

    pytest.importorskip("math_verify")
    prompts = ["Question: What is 1/4 + 1/4? Give a fraction.\nAnswer: $\\frac{1}{2}$\n\n"
               "Question: What is 2/4?\nAnswer:"]
    by_name = eager_cpp.run(model, prompts, method="parallel", max_sequences=2, max_new_tokens=8, temperature=0.0,
                            stop=["\n"], answers=["0.5"], scorer="math_verify")
    scorer = default_scorer("math_verify")
    for s in by_name.prompts[0].sequences:
        assert s.correct == scorer(s.text, "0.5") and s.answer == scorer.extract(s.text)
    with pytest.raises(ValueError, match="unknown scorer"):
        eager_cpp.run(model, prompts, method="parallel", max_sequences=1, max_new_tokens=1, scorer="latex")
