"""Answer extraction, normalisation and scoring (pure Python, standard library only).

Answers are always extracted from the *generated* text of a sequence, never from the prompt
(the few-shot prompts contain worked answers of their own, e.g. ``#### 42``).

Extraction styles (``extract_answer(text, style)``):

- ``"boxed"``: the content of the last complete ``\\boxed{...}``; nested braces are matched, so
  ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``.
- ``"gsm8k"``: the number after the *first* ``####``. GSM8K-style few-shot models usually go on
  with a new ``Question:`` after their answer, so later ``####`` lines belong to made-up questions.
- ``"number"``: the last number in the text (``-3``, ``1,234``, ``0.5``); commas are removed.
- ``"first_line"``: the first non-empty line, stripped (short-answer tasks such as capitals).
- ``"auto"``: boxed if present, else ``####`` if present, else the last number, else the first
  line.

Dataset rule (``scorer_for_dataset(name_or_path)``): the name or path is casefolded; if it
contains ``"capitals"`` the scorer uses ``"first_line"``, else if it contains ``"gsm8k"`` it uses
``"gsm8k"``, otherwise ``"auto"``.

Named scorers (``default_scorer(name)``, the CLI's ``--scorer``): each style above, and ``"math_verify"``,
Hugging Face's math-verify parse and verify (``mathverify.MathVerifyScorer``; an optional dependency,
``pip install "eager_cpp[math-verify]"``), for LaTeX answers: fractions, sets, intervals, expressions.

Matching (``answers_match``): both sides go through ``normalize_answer``; when both parse as
numbers they are compared numerically (``"18.0"`` == ``"18"`` == ``"018"`` == ``"$18"``),
otherwise as normalised strings. A missing (``None``) or empty prediction never matches.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Optional

__all__ = [
    "SCORERS",
    "STYLES",
    "AnswerScorer",
    "answer_extractor",
    "answers_match",
    "default_scorer",
    "extract_answer",
    "normalize_answer",
    "score_prompts",
    "scorer_for_dataset",
]

STYLES: tuple[str, ...] = ("auto", "boxed", "gsm8k", "number", "first_line")
# Every scorer name: the styles, and math-verify's (mathverify.MATH_VERIFY; its module imports math_verify only
# when such a scorer is made).
SCORERS: tuple[str, ...] = STYLES + ("math_verify",)

_BOXED = "\\boxed{"

# A number as written in text: thousands-grouped ("1,234,567", the group lookahead stops
# "1,2345" from being read as a grouped number), plain ("1234", "3.5") or bare decimal (".5").
# A minus sign counts only when it is not preceded by a digit, so "5-3" yields 5 and 3, not -3.
_NUMBER_RE = re.compile(
    r"(?:(?<![\d])-)?"
    r"(?:\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)
# "1,234" -> "1234" inside normalised text; only well-formed thousands groups, so that a
# list such as "1,2" is left alone.
_THOUSANDS_COMMA_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_FULL_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_WS_RE = re.compile(r"\s+")
_TRAILING_PUNCT = ".,;:!?"


def _extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` whose braces close; None if there is none."""
    # Scan every occurrence and keep the last balanced one: a generation cut off by the
    # length limit may end in an unclosed \boxed{, and an earlier complete one is then the
    # best answer available.
    result: str | None = None
    start = text.find(_BOXED)
    while start != -1:
        i = start + len(_BOXED)
        depth = 1
        j = i
        while j < len(text) and depth:
            ch = text[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            j += 1
        if depth == 0:
            result = text[i : j - 1].strip()
        start = text.find(_BOXED, start + 1)
    return result


def _clean_number(s: str) -> str:
    """Drop thousands separators from a number matched by ``_NUMBER_RE``."""
    return s.replace(",", "")


def _extract_gsm8k(text: str) -> str | None:
    """Number right after the first ``####`` (optionally behind ``$``); None if no ``####``."""
    pos = text.find("####")
    if pos == -1:
        return None
    rest = text[pos + 4 :]
    # Only the line the marker is on: what follows is usually the next made-up question.
    line = rest.split("\n", 1)[0]
    m = re.match(r"\s*\$?\s*", line)
    assert m is not None  # the pattern matches the empty string
    num = _NUMBER_RE.match(line, m.end())
    if num:
        return _clean_number(num.group(0))
    # "#### forty-two": not a number; keep the text so it can still be compared as a string.
    stripped = line.strip()
    return stripped or None


def _extract_last_number(text: str) -> str | None:
    """Last number in the text, commas removed; None if there is none."""
    last = None
    for last in _NUMBER_RE.finditer(text):
        pass
    return _clean_number(last.group(0)) if last else None


def _extract_first_line(text: str) -> str | None:
    """First non-empty line, stripped; None if the text is blank."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


def extract_answer(text: str, style: str = "auto") -> str | None:
    """Extract the final answer from generated text; None when the style finds nothing.

    See the module docstring for the styles. Raises ValueError for an unknown style.
    """
    if style not in STYLES:
        raise ValueError(f"unknown answer style {style!r}; expected one of {STYLES}")
    if text is None:
        return None
    if style == "boxed":
        return _extract_boxed(text)
    if style == "gsm8k":
        return _extract_gsm8k(text)
    if style == "number":
        return _extract_last_number(text)
    if style == "first_line":
        return _extract_first_line(text)
    # auto: most explicit marker first, so a boxed answer wins over stray numbers in the text.
    for fn in (_extract_boxed, _extract_gsm8k, _extract_last_number, _extract_first_line):
        ans = fn(text)
        if ans is not None:
            return ans
    return None


def _parse_number(s: str) -> Decimal | None:
    """Decimal value if ``s`` (already normalised) is exactly one number, else None."""
    if not _FULL_NUMBER_RE.fullmatch(s):
        return None
    try:
        return Decimal(s)
    except InvalidOperation:  # pragma: no cover - the regex only lets valid literals through
        return None


def _canonical_number(d: Decimal) -> str:
    """Canonical text of a number: "18.0" -> "18", "018" -> "18", "0.50" -> "0.5", "-0" -> "0"."""
    if d == d.to_integral_value():
        return str(int(d))
    # format(..., "f") avoids the exponent notation normalize() would give (e.g. 1E+2).
    return format(d.normalize(), "f")


def normalize_answer(s: str) -> str:
    """Normalise an answer for comparison.

    Steps: strip and collapse whitespace, casefold, remove ``$``, strip trailing ``.,;:!?``,
    remove thousands commas inside numbers (``1,234`` -> ``1234``) and, if what is left is a
    single number, write it canonically (``18.0`` -> ``18``, ``018`` -> ``18``).
    """
    s = _WS_RE.sub(" ", str(s)).strip().casefold()
    s = s.replace("$", "")
    # Repeat because removing "$" or punctuation can expose whitespace and vice versa
    # ("18 ." -> "18").
    prev = None
    while prev != s:
        prev = s
        s = s.strip().rstrip(_TRAILING_PUNCT)
    s = _THOUSANDS_COMMA_RE.sub("", s)
    s = _WS_RE.sub(" ", s).strip()
    num = _parse_number(s)
    if num is not None:
        s = _canonical_number(num)
    return s


def answers_match(pred: str | None, gold: str) -> bool:
    """True iff the predicted answer equals the gold one after normalisation.

    None (nothing extracted) or an empty normalised prediction never matches. When both sides
    are numbers they are compared by value.
    """
    if pred is None or gold is None:
        return False
    p = normalize_answer(pred)
    g = normalize_answer(gold)
    if not p:
        return False
    pn, gn = _parse_number(p), _parse_number(g)
    if pn is not None and gn is not None:
        return pn == gn
    return p == g


@dataclass(frozen=True)
class AnswerScorer:
    """Callable ``scorer(text, answer) -> bool`` that extracts with ``style`` and matches.

    A dataclass rather than a closure so that it pickles (multiprocessing) and prints usefully.
    """

    style: str = "auto"

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"unknown answer style {self.style!r}; expected one of {STYLES}")

    def extract(self, text: str) -> str | None:
        """The answer this scorer reads from ``text``."""
        return extract_answer(text, self.style)

    def __call__(self, text: str, answer: str) -> bool:
        return answers_match(self.extract(text), answer)


def answer_extractor(scorer: Any) -> Callable[[str], Optional[str]]:
    """The answers a scorer reads: its ``extract(text)`` when it has one, else the "auto" extractor (a scorer
    name of ``SCORERS`` stands for its scorer).

    A custom ``extract`` must return a str or None (no answer): anything else is a TypeError naming
    the scorer and what it returned, not a vote under a key no other answer could match.
    """
    if isinstance(scorer, str):
        scorer = default_scorer(scorer)
    custom = getattr(scorer, "extract", None)
    if not callable(custom):
        return lambda text: extract_answer(text, "auto")

    def extract(text: str) -> Optional[str]:
        answer = custom(text)
        if answer is not None and not isinstance(answer, str):
            raise TypeError(f"the scorer {type(scorer).__name__}'s extract() returned {type(answer).__name__} "
                            f"{answer!r}"[:200] + ": it must return the answer as a str, or None for no answer")
        return answer

    return extract


def score_prompts(prompts: Sequence[Any], answers: Sequence[Any],
                  scorer: Optional[Callable[[str, str], bool]] = None) -> None:
    """Attach gold answers to ``PromptResult``s (read by attribute) and mark every sequence correct or not.
    ``scorer``: a callable, or a name of ``SCORERS``; None: the "auto" style.

    One extractor/scorer pair decides both correctness and the majority vote's groups: a scorer
    with an ``extract(text)`` method (like ``AnswerScorer``) supplies the answers that vote; a
    plain callable scores while the "auto" extractor supplies them, and then a group votes only
    with members the scorer judged alike (metrics.majority_vote).
    """
    if len(answers) != len(prompts):
        raise ValueError(f"got {len(answers)} answers for {len(prompts)} prompts")
    scorer = default_scorer(scorer) if isinstance(scorer, str) else scorer or AnswerScorer("auto")
    extract = answer_extractor(scorer)
    for p, gold in zip(prompts, answers):
        p.gold_answer = str(gold)
        for s in p.sequences:
            s.answer = extract(s.text)
            s.correct = bool(scorer(s.text, str(gold)))


def default_scorer(style: str = "auto") -> Any:
    """The scorer ``callable(text, answer) -> bool`` of a name in ``SCORERS``: an ``AnswerScorer`` of the given
    extraction style, or for ``"math_verify"`` a ``mathverify.MathVerifyScorer`` (an ImportError naming the extra
    to install when math-verify is missing). Another name is a ValueError listing them."""
    if style == "math_verify":
        from .mathverify import MathVerifyScorer

        return MathVerifyScorer()
    if style not in STYLES:
        raise ValueError(f"unknown scorer {style!r}; expected one of {SCORERS}")
    return AnswerScorer(style)


def dataset_style(name_or_path: str) -> str:
    """Extraction style for a dataset name or path (rule in the module docstring)."""
    name = str(name_or_path).casefold()
    if "capitals" in name:
        return "first_line"
    if "gsm8k" in name:
        return "gsm8k"
    return "auto"


def scorer_for_dataset(name_or_path: str) -> AnswerScorer:
    """Default scorer for a dataset: first_line for "capitals", gsm8k for "gsm8k", else auto."""
    return AnswerScorer(dataset_style(name_or_path))
