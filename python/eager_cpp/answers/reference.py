"""The authors' reference code's answer rules (``rules="reference"``), beside eager_cpp's (``scoring``).

The reference is the paper's vLLM code (``evaluate.py`` and ``main_vllm.py`` of Omega-Reasoning/EAGer).
What it does, and what these functions reproduce (docs/method.md, "Reference rules"):

- **Normalisation**: strip, lowercase, remove spaces; nothing else (no ``$``, no trailing period, no
  thousands commas, no numeric canonical form).
- **Targets**: GSM8K's and AIME's are ints (``int(answer.split(' ')[-1])``), the others strings; a gold
  answer here is an int target when ``int()`` reads it ("18", " -5 "), else a string one.
- **A correct sequence** (Pass@k, the pass rate): the extracted answer, if not empty, read as an int
  equals the target; where it is no int, its normalised form equals the normalised target *or contains
  it* (a substring: "x = 5" matches 5; "25" does not, it is an int).
- **Cons@k**: the most common normalised non-empty answer (the first seen wins a tie), then the same
  int test, else exact equality (no substring).
- **Full EAGer's unsolved set**: the target, as a string, is not among the extracted answers as they are
  (exact membership, no normalisation), and the target is not "none" (such prompts get no budget).

Extraction stays the scorer's (``extract``; the "auto" extractor without one): the reference reads only
the last ``\\boxed{}``, which ``AnswerScorer("boxed")`` reproduces. Pure: standard library only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

from .scoring import AnswerScorer, answer_extractor

__all__ = ["ReferenceScorer", "reference_consensus", "reference_correct", "reference_normalize",
           "reference_solved", "reference_target"]


def reference_normalize(answer: str) -> str:
    return answer.strip().lower().replace(" ", "")


def reference_target(gold: Any) -> Union[int, str]:
    """The gold answer as the reference holds it: an int where int() reads it, else the string."""
    try:
        return int(str(gold))
    except ValueError:
        return str(gold)


def _int_test(answer: str, target: Union[int, str]) -> Optional[bool]:
    """The int comparison when `answer` reads as an int (an int never equals a string target), else None."""
    try:
        value = int(answer)
    except ValueError:
        return None
    return value == target


def reference_correct(extracted: Optional[str], gold: Any) -> bool:
    """Whether one sequence's extracted answer is correct by the reference's ``is_correct``."""
    if not extracted:
        return False
    target = reference_target(gold)
    answer = reference_normalize(extracted)
    by_int = _int_test(answer, target)
    if by_int is not None:
        return by_int
    wanted = reference_normalize(str(target))
    return answer == wanted or wanted in answer


def reference_consensus(answers: Sequence[Optional[str]], gold: Any) -> bool:
    """Whether a prompt's majority answer is correct by the reference's ``compute_cons_at_max``."""
    votes = [reference_normalize(a) for a in answers if a]
    if not votes:
        return False
    majority = Counter(votes).most_common(1)[0][0]  # ties: the answer seen first
    target = reference_target(gold)
    by_int = _int_test(majority, target)
    return by_int if by_int is not None else majority == reference_normalize(str(target))


def reference_solved(answers: Sequence[Optional[str]], gold: Any) -> bool:
    """Not in full EAGer's unsolved set: the target's string among the answers as extracted, or "none"."""
    target = str(reference_target(gold))
    return target.lower() == "none" or target in [a if a is not None else "" for a in answers]


@dataclass(frozen=True)
class ReferenceScorer:
    """A scorer that reads answers as `inner` does (its ``extract``) and judges them as the reference does."""

    inner: Optional[Callable[[str, str], bool]] = None

    def extract(self, text: str) -> Optional[str]:
        return answer_extractor(self.inner or AnswerScorer("auto"))(text)

    def __call__(self, text: str, answer: str) -> bool:
        return reference_correct(self.extract(text), answer)
