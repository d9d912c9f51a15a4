"""The choices of the eager_capitals_mc task: the document's capital and three others, in an order fixed by the
country's name (no randomness between runs). Loaded by lm-eval from the task's folder (``!function``)."""

from __future__ import annotations

import zlib

OTHERS = ("Paris", "Moscow", "Beijing", "Lima", "Nairobi", "Ottawa", "Canberra", "Cairo", "Madrid", "Tokyo",
          "Berlin", "Rome", "Oslo", "Dakar", "Quito", "Hanoi", "Lisbon", "Athens", "Warsaw", "Santiago")
CHOICES = 4


def _key(doc: dict) -> int:
    return zlib.crc32(doc["country"].encode("utf-8"))


def doc_to_choice(doc: dict) -> list[str]:
    """The answer at position doc_to_target(doc) among three other capitals."""
    key = _key(doc)
    others = [c for c in OTHERS if c != doc["answer"]]
    picked = [others[(key + 7 * i) % len(others)] for i in range(CHOICES - 1)]
    gold = key % CHOICES
    return picked[:gold] + [doc["answer"]] + picked[gold:]


def doc_to_target(doc: dict) -> int:
    return _key(doc) % CHOICES
