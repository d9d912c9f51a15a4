"""Evaluating methods on a labelled dataset: one table row per (method, θ, M).

Shared by `eager-cpp eval`, `eager-cpp bench` and the scripts in benchmarks/.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence

from ..runner.api import run
from ..engine.model import Model
from ..core.vocabulary import REALLOCATING_METHODS, Method
from ..core.results import RunResult

COLUMNS = [
    ("method", "method", "{}"),
    ("reallocation", "spend", "{}"),
    ("theta", "θ", "{}"),
    ("M", "M", "{}"),
    ("pass@k", "Pass@k", "{:.3f}"),
    ("cons@k", "Cons@k", "{:.3f}"),
    ("cons_weighted@k", "Cons@k w", "{:.3f}"),
    ("pass_rate", "PassRate", "{:.3f}"),
    ("tokens", "#T", "{}"),
    ("tokens_ratio", "#T/FP", "{:.2f}"),
    ("mean_sequences", "#S", "{:.2f}"),
    ("reallocated", "realloc", "{}"),
    ("reprocessed", "#reproc", "{}"),
    ("unspent", "unspent", "{}"),
    ("extras_length_ended", "ext@len", "{}"),
    ("wall_seconds", "wall s", "{:.1f}"),
]


def evaluate_one(model: Model, prompts: Sequence[str], answers: Sequence[str], method: str, theta: Optional[float],
                 max_sequences: int, scorer: Callable[[str, str], bool], **run_kwargs: Any) -> tuple[dict, RunResult]:
    kwargs = dict(run_kwargs)
    if theta is not None:
        kwargs["entropy_threshold"] = theta
    result = run(model, list(prompts), method=method, max_sequences=max_sequences, answers=list(answers),
                 scorer=scorer, **kwargs)
    m = result.metrics()
    mode = result.settings.get("reallocation", "fresh") if result.stats.method in REALLOCATING_METHODS else "-"
    row = {
        "method": method,
        "reallocation": mode,
        "theta": theta if method != Method.PARALLEL else "-",
        "M": max_sequences,
        "pass@k": m["pass@k"],
        "cons@k": m["cons@k"],
        "cons_weighted@k": m["cons_weighted@k"],
        "pass_rate": m["pass_rate"],
        "tokens": m["tokens"],
        "mean_sequences": m["mean_sequences"],
        "reallocated": result.stats.reallocated_sequences,
        "reprocessed": result.stats.reprocessed_tokens,
        "unspent": result.stats.unspent_sequences,
        "extras_length_ended": result.stats.reallocated_length_ended,
        "unavailable_seeds": result.stats.unavailable_seeds,
        "reallocation_error": result.stats.reallocation_error,
        "sequences": result.stats.sequences,
        "prompts_given_budget": sum(1 for p in result.prompts if any(s.round > 0 for s in p.sequences)),
        "solved_by_reallocation": sum(
            1 for p in result.prompts
            if any(s.correct for s in p.sequences if s.round > 0) and not any(s.correct for s in p.sequences if s.round == 0)
        ),
        "wall_seconds": result.stats.wall_seconds,
    }
    return row, result


def sweep(model: Model, prompts: Sequence[str], answers: Sequence[str], methods: Iterable[str],
          thetas: Iterable[float], max_sequences: Iterable[int], scorer: Callable[[str, str], bool],
          on_row: Optional[Callable[[dict], None]] = None, reallocations: Iterable[str] = ("fresh",),
          **run_kwargs: Any) -> list[dict]:
    """Full Parallel once per M, every other method once per (θ, M), the reallocating ones once per
    reallocation mode ("fresh", "tree"); #T ratios against Full Parallel at the same M."""
    rows: list[dict] = []
    methods = list(methods)
    thetas = list(thetas)
    modes = list(reallocations)
    for m in max_sequences:
        baseline_tokens = None
        if Method.PARALLEL in methods:
            row, _ = evaluate_one(model, prompts, answers, Method.PARALLEL.value, None, m, scorer, **run_kwargs)
            baseline_tokens = row["tokens"]
            row["tokens_ratio"] = 1.0
            rows.append(row)
            if on_row:
                on_row(row)
        for theta in thetas:
            for method in methods:
                if method == Method.PARALLEL:
                    continue
                for mode in modes if method in REALLOCATING_METHODS else modes[:1]:
                    row, _ = evaluate_one(model, prompts, answers, method, theta, m, scorer, reallocation=mode,
                                          **run_kwargs)
                    row["tokens_ratio"] = row["tokens"] / baseline_tokens if baseline_tokens else float("nan")
                    rows.append(row)
                    if on_row:
                        on_row(row)
    return rows


def format_table(rows: list[dict]) -> str:
    header = [title for _, title, _ in COLUMNS]
    body = [[fmt.format(r.get(key, "")) if r.get(key, "") != "" else "" for key, _, fmt in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)
