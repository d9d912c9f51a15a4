"""The ``"math_verify"`` scorer: answers compared with Hugging Face's math-verify (an optional dependency).

``pip install "eager_cpp[math-verify]"`` installs it (math-verify 0.9.0). The built-in styles of ``scoring``
stay the default; this scorer is for answers written in LaTeX, where string and number matching fall short:
fractions (``\\frac{1}{2}`` equals ``0.5``), sets (``\\{1,2\\}`` equals ``\\{2,1\\}``), intervals, expressions.

- ``extract(text)``: math-verify's ``parse`` of the generated text (its LaTeX extraction, boxed answers
  first, then its expression extraction), as the string it matched; None when it finds no answer. The
  majority vote groups sequences by it (with the verdict, as for every scorer: ``metrics.majority_vote``).
- ``scorer(text, gold)``: ``verify(parse(gold), parse(text))``. A gold without ``$`` or ``\\boxed`` is parsed
  inside ``$...$`` (as math: read as text, ``\\{2, 1\\}`` would give its last number), then as written; a gold
  that math-verify cannot parse at all is compared with the extracted string, stripped.

math-verify bounds each parse and comparison with a SIGALRM timeout, which only the main thread may set:
in another thread (a progress callback, a Ray driver thread) the calls run without one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

__all__ = ["INSTALL_HINT", "MATH_VERIFY", "MathVerifyScorer"]

MATH_VERIFY = "math_verify"  # the scorer's name where the built-in style names are accepted
INSTALL_HINT = 'pip install "eager_cpp[math-verify]" (or pip install math-verify==0.9.0)'
TIMEOUT_SECONDS = 5  # math-verify's own default, per parse and per comparison


def _library() -> Any:
    try:
        import math_verify
    except ImportError as e:
        raise ImportError(f'scorer "{MATH_VERIFY}" needs the math-verify package: {INSTALL_HINT}') from e
    return math_verify


def _timeout() -> Optional[int]:
    return TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None


@dataclass(frozen=True)
class MathVerifyScorer:
    """Callable ``scorer(text, gold) -> bool`` with math-verify's parse and verify (module docstring).

    Constructing one checks that math-verify is installed: an ImportError naming the extra otherwise.
    """

    def __post_init__(self) -> None:
        _library()

    def _parse(self, text: str) -> list[Any]:
        return list(_library().parse(text, parsing_timeout=_timeout()))

    def _parse_gold(self, gold: str) -> list[Any]:
        # A bare gold is math: "\{2, 1\}" read as text would give its last number.
        delimited = "$" in gold or "\\boxed" in gold
        return self._parse(gold if delimited else f"${gold}$") or ([] if delimited else self._parse(gold))

    def extract(self, text: str) -> Optional[str]:
        """The answer math-verify reads from ``text`` (the string its extraction matched), or None."""
        if text is None:
            return None
        parsed = self._parse(text)
        strings = [p for p in parsed if isinstance(p, str)]
        return strings[-1] if strings else (str(parsed[0]) if parsed else None)

    def __call__(self, text: str, gold: str) -> bool:
        if text is None or gold is None:
            return False
        target = self._parse(text)
        if not target:
            return False
        expected = self._parse_gold(str(gold))
        if not expected:
            answer = self.extract(text)
            return answer is not None and answer.strip() == str(gold).strip()
        return bool(_library().verify(expected, target, timeout_seconds=_timeout()))
