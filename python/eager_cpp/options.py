"""The options of a run: their checks, their engine config, and the dict a result records.

One place for every option's validation and wire format, shared by the API, the executors and the
Ray workers (which rebuild a run's settings from the recorded dict).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from . import _core
from .model import MAX_CTX, MAX_THREADS, Model

METHODS = ("parallel", "eager_init", "eager_adapt", "eager")
THRESHOLD_MODES = {"fixed": _core.ThresholdMode.FIXED, "p99": _core.ThresholdMode.P99}
MAX_SEQUENCES_LIMIT = 256  # llama.cpp's sequence-id limit


@dataclass
class Settings:
    """Validated options of one run, shared by its phases."""

    method: str
    max_sequences: int
    theta: float
    config: Any  # _core.EngineConfig
    chat: bool
    chat_template: Optional[str]


def bind_to_model(settings: Settings, llm: Model) -> None:
    """Rebuilt settings take the context size and threads of the model they will run on."""
    settings.config.n_ctx = llm.n_ctx or 0
    settings.config.n_threads = llm.n_threads or 0


def check_int(name: str, value: Any, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def check_float(name: str, value: Any, low: float, allow_equal: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v) or v < low or (not allow_equal and v == low):
        raise ValueError(f"{name} must be {'>=' if allow_equal else '>'} {low}, got {value}")
    return v


def check_settings(method, max_sequences, theta, temperature, top_k_entropy, max_new_tokens, seed, stop,
                    record_entropies, top_k, top_p, min_p, entropy_after_temperature, think_end_marker,
                    no_branch_window, threshold_mode, chat, chat_template, max_live_sequences, ignore_eos,
                    n_ctx, n_threads) -> Settings:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    check_int("max_sequences", max_sequences, 1, MAX_SEQUENCES_LIMIT)
    theta = check_float("entropy_threshold", theta, 0.0)
    temperature = check_float("temperature", temperature, 0.0)
    if math.isinf(temperature):
        raise ValueError("temperature must be finite")
    check_int("top_k_entropy", top_k_entropy, 2, 64)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_int("seed", seed, 0)
    check_int("top_k", top_k, 0)
    top_p = check_float("top_p", top_p, 0.0, allow_equal=False)
    if top_p > 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    min_p = check_float("min_p", min_p, 0.0)
    if min_p > 1.0:
        raise ValueError(f"min_p must be in [0, 1], got {min_p}")
    check_int("no_branch_window", no_branch_window, 1)
    check_int("max_live_sequences", max_live_sequences, 1, MAX_SEQUENCES_LIMIT)
    if threshold_mode not in THRESHOLD_MODES:
        raise ValueError(f"unknown threshold_mode {threshold_mode!r}; expected 'fixed' or 'p99'")
    if stop is None:
        stops: list[str] = []
    elif isinstance(stop, str):
        stops = [stop]
    else:
        stops = list(stop)
    if any(not isinstance(s, str) or not s for s in stops):
        raise ValueError("stop must be a non-empty string or a list of non-empty strings")
    if think_end_marker is not None and not isinstance(think_end_marker, str):
        raise TypeError("think_end_marker must be a string or None")
    if n_ctx is not None:
        check_int("n_ctx", n_ctx, 1, MAX_CTX)
    if n_threads is not None:
        check_int("n_threads", n_threads, 1, MAX_THREADS)

    cfg = _core.EngineConfig()
    cfg.max_new_tokens = max_new_tokens
    cfg.seed = seed
    cfg.sampling.temperature = temperature
    cfg.sampling.top_k = top_k
    cfg.sampling.top_p = top_p
    cfg.sampling.min_p = min_p
    cfg.entropy_k = top_k_entropy
    cfg.entropy_after_temperature = bool(entropy_after_temperature)
    cfg.record_entropies = bool(record_entropies)
    cfg.stop = stops
    cfg.think_end_marker = think_end_marker or ""
    cfg.no_branch_window = no_branch_window
    cfg.threshold_mode = THRESHOLD_MODES[threshold_mode]
    cfg.max_live_sequences = max_live_sequences
    cfg.ignore_eos = bool(ignore_eos)
    cfg.n_ctx = n_ctx or 0
    cfg.n_threads = n_threads or 0
    return Settings(method, max_sequences, theta, cfg, bool(chat), chat_template)


def set_device_path(cfg: Any, llm: Model, device_topk: Optional[bool], device_candidates: int) -> None:
    cfg.device_topk = llm.offloaded if device_topk is None else device_topk
    cfg.device_candidates = device_candidates
    if cfg.device_topk and device_candidates < cfg.entropy_k:
        raise ValueError(f"device_candidates={device_candidates} must be at least top_k_entropy={cfg.entropy_k}")
    if cfg.device_topk and cfg.sampling.top_k > device_candidates:
        raise ValueError(f"top_k={cfg.sampling.top_k} exceeds device_candidates={device_candidates}; "
                         "raise device_candidates")


def settings_dict(settings: Settings, n_prompts: int) -> dict[str, Any]:
    """Every option that shapes the samples, enough to rebuild the run's settings."""
    c = settings.config
    return {
        "method": settings.method,
        "max_sequences": settings.max_sequences,
        "entropy_threshold": settings.theta,
        "temperature": c.sampling.temperature,
        "top_k_entropy": c.entropy_k,
        "max_new_tokens": c.max_new_tokens,
        "seed": c.seed,
        "stop": list(c.stop),
        "record_entropies": c.record_entropies,
        "top_k": c.sampling.top_k,
        "top_p": c.sampling.top_p,
        "min_p": c.sampling.min_p,
        "entropy_after_temperature": c.entropy_after_temperature,
        "think_end_marker": c.think_end_marker or None,
        "no_branch_window": c.no_branch_window,
        "threshold_mode": "p99" if c.threshold_mode == _core.ThresholdMode.P99 else "fixed",
        "chat": settings.chat,
        "chat_template": settings.chat_template,
        "max_live_sequences": c.max_live_sequences,
        "ignore_eos": c.ignore_eos,
        "device_topk": c.device_topk,
        "device_candidates": c.device_candidates,
        "n_prompts": n_prompts,
    }


def settings_from_dict(d: dict[str, Any]) -> Settings:
    settings = check_settings(
        d["method"], d["max_sequences"], d["entropy_threshold"], d["temperature"], d["top_k_entropy"],
        d["max_new_tokens"], d["seed"], d["stop"], d["record_entropies"], d["top_k"], d["top_p"], d["min_p"],
        d["entropy_after_temperature"], d["think_end_marker"], d["no_branch_window"], d["threshold_mode"],
        d["chat"], d["chat_template"], d["max_live_sequences"], d["ignore_eos"], None, None,
    )
    # Results written before the device path existed ran on the host kernel.
    settings.config.device_topk = bool(d.get("device_topk", False))
    settings.config.device_candidates = int(d.get("device_candidates", 1024))
    return settings
