"""The checks every option's value goes through, and the size form of ``kv_memory``. Pure.

One function per kind of value: ``check_int``, ``check_float``, ``check_bool``, ``check_text``;
``parse_kv_memory`` reads a KV budget ("8GiB", bytes, "auto").
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any, Optional

__all__ = ["MAX_KV_MEMORY", "check_bool", "check_float", "check_int", "check_text", "parse_kv_memory"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15, "K": 2**10, "M": 2**20,
          "G": 2**30, "T": 2**40, "P": 2**50, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "PIB": 2**50}
MAX_KV_MEMORY = 2**50  # 1 PiB: the largest kv_memory taken as a size (what a machine has is checked at the run)

def parse_kv_memory(value: Any) -> int:
    """Bytes for the KV cache from an int (numpy's too), a size such as "8GiB", "512MiB" or "2GB", or
    "auto"/None (0); at most 1 PiB (``MAX_KV_MEMORY``).

    0 means "auto": the cache starts with what the first prompts and live sequences of 64 tokens need and
    doubles as the run needs cells, up to a quarter of the memory available (RAM, or the GPU's free
    memory when layers are offloaded).
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return 0
    shown = repr(value)
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m is None or m.group(2).upper() not in _UNITS:
            raise ValueError(f"kv_memory {value!r} is not a size: use bytes, a size like '8GiB', '512MiB' or '2GB', "
                             "or 'auto'")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
        shown = f"{shown} ({value} bytes)"
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):  # numpy's integers too
        value = int(value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not math.isfinite(value) or value != int(value):
            raise ValueError(f"kv_memory must be a whole number of bytes, got {value!r}")
        value = int(value)
    else:
        raise TypeError(f"kv_memory must be a number of bytes, a size like '8GiB', or 'auto', got "
                        f"{type(value).__name__} {value!r}"[:300])
    if value < 1 or value > MAX_KV_MEMORY:
        raise ValueError(f"kv_memory must be between 1 byte and 1 PiB ({MAX_KV_MEMORY} bytes) or 'auto', got {shown}")
    return value


def check_int(name: str, value: Any, low: int, high: Optional[int] = None, why: str = "") -> int:
    """An int (not a bool) in [low, high]; `why` says where a bound comes from, in the message."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}{f' ({why})' if why else ''}, got {value}")
    return value


def check_text(name: str, value: str) -> str:
    """A str that is valid Unicode: a lone surrogate ("\\ud800") has no UTF-8 form for the engine."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} is not valid Unicode text ({e.reason} at character {e.start})") from None
    return value


def check_float(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False) -> float:
    """A real number (not a string, not a bool) in [low, high] (or (low, high]), finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < low or v > high or (low_open and v == low):
        lo = f"({low}" if low_open else f"[{low}"
        hi = f"{high}]" if math.isfinite(high) else "inf)"
        raise ValueError(f"{name} must be a finite number in {lo}, {hi}, got {value!r}")
    return v


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value
