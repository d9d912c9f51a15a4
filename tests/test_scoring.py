"""Tests for eager_cpp.answers.scoring: extraction styles, normalisation, matching, dataset rule."""

import pickle

import pytest

from eager_cpp.answers.scoring import (
    answers_match,
    default_scorer,
    extract_answer,
    normalize_answer,
    scorer_for_dataset,
)


# --- boxed -----------------------------------------------------------------------------------


def test_boxed_nested_braces():
    text = r"so the answer is \boxed{\frac{1}{2}} and we are done"
    assert extract_answer(text, "boxed") == r"\frac{1}{2}"


def test_boxed_takes_last_and_deep_nesting():
    text = r"first \boxed{3}, then corrected: \boxed{{a}_{b{c}}}"
    assert extract_answer(text, "boxed") == "{a}_{b{c}}"


def test_boxed_unclosed_last_falls_back_to_last_complete():
    text = r"\boxed{7} ... wait, \boxed{\frac{8}{"
    assert extract_answer(text, "boxed") == "7"


def test_boxed_absent():
    assert extract_answer("no box here 42", "boxed") is None
    assert extract_answer(r"\boxed{unterminated", "boxed") is None


# --- gsm8k -----------------------------------------------------------------------------------


def test_gsm8k_commas_and_only_first_marker():
    text = "She pays 1,000 + 234 = 1,234.\n#### 1,234\n\nQuestion: Bob has 5 apples.\nAnswer: ...\n#### 5"
    assert extract_answer(text, "gsm8k") == "1234"


def test_gsm8k_dollar_negative_decimal_and_trailing_dot():
    assert extract_answer("#### $18.50.", "gsm8k") == "18.50"
    assert extract_answer("####-7\n", "gsm8k") == "-7"


def test_gsm8k_missing_marker_and_non_number():
    assert extract_answer("The answer is 12.", "gsm8k") is None
    assert extract_answer("#### twelve\n#### 12", "gsm8k") == "twelve"
    assert extract_answer("####   \nmore", "gsm8k") is None


# --- number ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3 apples and 4 pears make 7.", "7"),
        ("total is 1,234,567 dollars", "1234567"),
        ("a temperature of -3.5 degrees", "-3.5"),
        ("5-3 = 2", "2"),
        ("from 5 to -3", "-3"),
        ("value .5", ".5"),
        ("It costs $12.", "12"),
        ("no digits at all", None),
    ],
)
def test_last_number(text, expected):
    assert extract_answer(text, "number") == expected


def test_number_minus_after_digit_is_not_a_sign():
    # "10-4" is a subtraction: the last number is 4, not -4.
    assert extract_answer("10-4", "number") == "4"


# --- first_line ------------------------------------------------------------------------------


def test_first_line():
    assert extract_answer(" Abu Dhabi\n\nCountry: Peru\nCapital: Lima", "first_line") == "Abu Dhabi"
    assert extract_answer("\n\n   \n  Kabul  \nx", "first_line") == "Kabul"
    assert extract_answer("  \n\n", "first_line") is None
    assert extract_answer("", "first_line") is None


# --- auto ------------------------------------------------------------------------------------


def test_auto_precedence():
    assert extract_answer(r"#### 5 and \boxed{6} then 7", "auto") == "6"
    assert extract_answer("#### 5\nQuestion: 9 cats", "auto") == "5"
    assert extract_answer("I think 3, no 4 people", "auto") == "4"
    assert extract_answer(" Paris\nCountry: Spain", "auto") == "Paris"
    assert extract_answer("", "auto") is None


def test_unknown_style():
    with pytest.raises(ValueError, match="unknown answer style"):
        extract_answer("x", "latex")
    with pytest.raises(ValueError):
        default_scorer("nope")


# --- normalisation and matching --------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("  Abu   Dhabi  ", "abu dhabi"),
        ("PARIS.", "paris"),
        ("$1,234", "1234"),
        ("18.0", "18"),
        ("018", "18"),
        ("0.50", "0.5"),
        ("-0", "0"),
        ("100", "100"),
        ("$ 18.00 .", "18"),
        ("St. John's", "st. john's"),
        ("Washington, D.C.", "washington, d.c"),
        ("1,2", "1,2"),  # not a thousands group: left alone
        ("Hello!?;", "hello"),
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


@pytest.mark.parametrize(
    "pred, gold, ok",
    [
        ("18.0", "18", True),
        ("018", "18", True),
        ("$1,234.00", "1234", True),
        ("-5", "5", False),
        ("Abu Dhabi.", "abu dhabi", True),
        ("Dubai", "Abu Dhabi", False),
        ("0.5", ".5", True),
        (None, "18", False),
        ("", "", False),
        ("   ", "18", False),
    ],
)
def test_answers_match(pred, gold, ok):
    assert answers_match(pred, gold) is ok


# --- scorers ---------------------------------------------------------------------------------


def test_default_scorer_auto_and_pickle():
    sc = default_scorer()
    assert sc(r"The result: \boxed{42}.", "42")
    assert not sc(r"The result: \boxed{41}.", "42")
    assert pickle.loads(pickle.dumps(sc))("#### 42", "42")


def test_scorer_for_dataset_rule():
    cap = scorer_for_dataset("data/capitals_dev_100.jsonl")
    gsm = scorer_for_dataset("/data/GSM8K_train_200.jsonl")
    other = scorer_for_dataset("math500")
    assert (cap.style, gsm.style, other.style) == ("first_line", "gsm8k", "auto")
    # capitals: first line only, so a later made-up example does not count
    assert cap(" Canberra\n\nCountry: Peru\nCapital: Lima", "Canberra")
    assert not cap(" Sydney\n\nCountry: Australia\nCapital: Canberra", "Canberra")
    # gsm8k: the first #### wins even if the model goes on with another question
    assert gsm("4*5=20\n#### 20\n\nQuestion: ...\n#### 99", "20")
    assert not gsm("4*5=20\n#### 20\n\nQuestion: ...\n#### 99", "99")
