"""`eager-cpp eval` and `eager-cpp bench`: methods, θ and M swept over a labelled dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..files.datasets import load_examples
from ..core.options import RunOptions
from ..core.vocabulary import METHODS, REALLOCATIONS
from .common import CliError, check_writable, load_model, model_or_workers, scorer_of
from .flags import given_options

__all__ = ["cmd_bench", "cmd_eval"]

SWEPT = ("method", "entropy_threshold", "max_sequences", "reallocation")  # flags a sweep reads as lists or axes


def _labelled(args: argparse.Namespace) -> tuple[list[str], list[str], Any]:
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be at least 1 (the number of examples to use), got {args.limit}")
    examples = load_examples(args.dataset, require_answers=True, limit=args.limit)
    scorer = scorer_of(args, args.dataset)
    return [e.prompt for e in examples], [e.answer for e in examples], scorer


def _csv(text: str, cast: Any, name: str) -> list:
    try:
        values = [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--{name} must be comma-separated values, got {text!r}") from None
    if not values:
        raise CliError(f"--{name} is empty")
    return values


def _choices(text: str, flag: str, noun: str, allowed: tuple[str, ...]) -> list[str]:
    """Comma-separated names of a flag, each one of `allowed`."""
    values = _csv(text, str, flag)
    for v in values:
        if v not in allowed:
            raise CliError(f"unknown {noun} {v!r} in --{flag}; expected {', '.join(allowed)}")
    return values


def _swept(args: argparse.Namespace, methods: list[str], thetas: list[float], ms: list[int],
           modes: list[str]) -> dict[str, Any]:
    """The options every row of a sweep shares, after checking every combination the sweep will run (so a
    bad one fails before the first row, not after hours of them)."""
    opts = given_options(args, skip=SWEPT)
    for m in methods:
        for t in thetas:
            for max_sequences in ms:
                for mode in modes:
                    try:
                        RunOptions.create(**dict(opts, method=m, entropy_threshold=t, max_sequences=max_sequences,
                                                 reallocation=mode))
                    except (TypeError, ValueError) as e:
                        raise CliError(str(e)) from None
    return opts


def _axes(args: argparse.Namespace, methods: str, thetas: str, ms: str) -> tuple[list, list, list, list]:
    """Methods, θs, Ms and reallocation modes of a sweep: the list flags, else the options' single values."""
    base = RunOptions.create(**given_options(args, skip=("reallocation",)))
    return (_choices(methods, "methods", "method", METHODS) if methods is not None else [base.method],
            _csv(thetas, float, "thetas") if thetas is not None else [base.entropy_threshold],
            _csv(ms, int, "Ms") if ms is not None else [base.max_sequences],
            _choices(args.reallocation, "reallocation", "reallocation", REALLOCATIONS)
            if args.reallocation is not None else [base.reallocation])


def _on_row(args: argparse.Namespace) -> Any:
    if args.quiet:
        return None
    return lambda r: print(f"  done: {r['method']} {r['reallocation']} θ={r['theta']} M={r['M']}", file=sys.stderr)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import format_table, sweep

    prompts, answers, scorer = _labelled(args)
    methods, thetas, ms, modes = _axes(args, args.methods, args.thetas, None)
    opts = _swept(args, methods, thetas, ms, modes)
    if args.json_out:
        check_writable(Path(args.json_out))
    model, cluster = model_or_workers(args, RunOptions.create(**opts))
    if cluster is not None:
        opts["cluster"] = cluster
    try:
        rows = sweep(model, prompts, answers, methods, thetas, ms, scorer, on_row=_on_row(args), reallocations=modes,
                     **opts)
    finally:
        if cluster is not None:
            cluster.close()
    print(format_table(rows))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"dataset": args.dataset, "rows": rows}, indent=2, default=str))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import format_table, sweep
    from ..evaluation.plots import plot_bench, require_matplotlib

    prompts, answers, scorer = _labelled(args)
    methods, thetas, ms, modes = _axes(args, args.methods, args.thetas, args.Ms)
    opts = _swept(args, methods, thetas, ms, modes)
    options = RunOptions.create(**opts)
    try:  # after the arguments (a bad one is the first thing to fix), before the sweep, not after it
        require_matplotlib()
    except ImportError as e:
        raise CliError(f"bench draws its plots with matplotlib: {e}") from None
    out = Path(args.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create --out-dir {out}: {e.strerror or e}") from None
    check_writable(out / "bench.json")
    model = load_model(args, options)
    rows = sweep(model, prompts, answers, methods, thetas, ms, scorer, on_row=_on_row(args), reallocations=modes,
                 **opts)
    (out / "bench.json").write_text(json.dumps({"dataset": args.dataset, "rows": rows}, indent=2, default=str))
    print(format_table(rows))
    for png in plot_bench(rows, out):
        print(f"wrote {png}")
    return 0
