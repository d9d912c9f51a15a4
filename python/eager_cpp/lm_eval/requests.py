"""lm-eval's requests as eager_cpp prompts, and eager_cpp's samples as lm-eval's responses (pure: no lm_eval import).

``generate_until`` receives each request k times in a row (the task's ``repeats``: lm-eval's evaluator clones
the Instance k times) and wants one string per copy, in order. ``group_copies`` makes one prompt of the copies
of a request (same context, same generation settings, same task document), M = the number of copies;
``settings_of`` reads lm-eval's ``gen_kwargs`` as eager_cpp options; ``fill`` gives each copy its string.

What the copies get (``fill``): sequence j of the prompt for copy j while there are sequences. Full Parallel
makes exactly M. EAGer-init makes n <= M (a prompt whose entropy never passes θ keeps one sequence): the
copies then cycle through the n sequences (copy j gets sequence j mod n), so ``take_first_k`` with k <= n sees
k distinct samples, and ``majority_vote`` counts each sequence M // n or M // n + 1 times: the plain majority of
the n samples when n divides M, otherwise the first M mod n sequences weigh one vote more. A reallocating method
can give a prompt more than M sequences: the copies see the first M (in the order the result lists them); the
backend keeps every prompt's whole ``PromptResult`` (``EagerCppLM.generations``) for eager_cpp's own metrics.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any, Hashable, Sequence

__all__ = ["Group", "cut_at_stops", "fill", "group_copies", "settings_of"]

log = logging.getLogger(__name__)

# gen_kwargs lm-eval tasks pass that map onto eager_cpp options; others are logged once and ignored.
_SAMPLING = ("temperature", "top_k", "top_p", "min_p")


@dataclass
class Group:
    """The copies of one generate_until request: one eager_cpp prompt with M = len(positions)."""

    context: str
    settings: dict[str, Any]  # eager_cpp options of this request (settings_of)
    document: tuple[Any, Any, Any] = (None, None, None)  # lm-eval's (task name, doc id, request index), if given
    positions: list[int] = field(default_factory=list)  # where the copies sit in the request list

    @property
    def copies(self) -> int:
        return len(self.positions)

    def settings_key(self) -> str:
        """Requests whose settings and M agree run in one eager_cpp.run call."""
        return json.dumps([self.settings, self.copies], sort_keys=True)


def settings_of(gen_kwargs: dict[str, Any], default_max_new_tokens: int) -> dict[str, Any]:
    """eager_cpp options from lm-eval's gen_kwargs: ``until`` as stop strings, ``max_gen_toks`` as max_new_tokens,
    ``do_sample: false`` as temperature 0 (greedy; EAGer-init's branches still take the second-best token),
    temperature, top_k, top_p, min_p as given. Other keys are logged and ignored."""
    kwargs = dict(gen_kwargs or {})
    until = kwargs.pop("until", None)
    if until is None:
        stop: list[str] = []
    elif isinstance(until, str):
        stop = [until]
    elif isinstance(until, (list, tuple)) and all(isinstance(s, str) for s in until):
        stop = [s for s in until if s]
    else:
        raise ValueError(f"generate_until: 'until' must be a string or a list of strings, got {until!r}")
    settings: dict[str, Any] = {"stop": stop, "max_new_tokens": int(kwargs.pop("max_gen_toks", default_max_new_tokens))}
    do_sample = kwargs.pop("do_sample", None)
    for name in _SAMPLING:
        if name in kwargs:
            settings[name] = kwargs.pop(name)
    if do_sample is False:
        settings["temperature"] = 0.0
    if kwargs:
        log.warning("eager_cpp ignores these generation settings of lm-eval: %s", ", ".join(sorted(kwargs)))
    return settings


def _identity(request: Any) -> tuple[Any, Any, Any]:
    """What makes copies the same request: its document (task, doc id, request index) where lm-eval says so."""
    return (getattr(request, "task_name", None), getattr(request, "doc_id", None), getattr(request, "idx", None))


def group_copies(requests: Sequence[Any], default_max_new_tokens: int) -> list[Group]:
    """The requests grouped into prompts: same context, same gen_kwargs, same document; in first-seen order.

    Interleaved requests of different contexts group correctly: a group lists the positions of its copies."""
    groups: dict[Hashable, Group] = {}
    for position, request in enumerate(requests):
        context, gen_kwargs = request.args
        if not isinstance(context, str) or not context:
            raise ValueError(f"generate_until request {position} has no context (got {context!r})")
        key = (context, json.dumps(gen_kwargs or {}, sort_keys=True, default=str), _identity(request))
        if key not in groups:
            groups[key] = Group(context, settings_of(gen_kwargs, default_max_new_tokens), _identity(request))
        groups[key].positions.append(position)
    return list(groups.values())


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """The text before the first stop string (lm-eval's responses exclude it; eager_cpp's text already does)."""
    cut = len(text)
    for s in stops:
        at = text.find(s)
        if at != -1:
            cut = min(cut, at)
    return text[:cut]


def fill(texts: Sequence[str], copies: int) -> list[str]:
    """One string per copy: the samples in order, cycling when there are fewer (module docstring)."""
    if not texts:
        return [""] * copies
    return [texts[j % len(texts)] for j in range(copies)]
