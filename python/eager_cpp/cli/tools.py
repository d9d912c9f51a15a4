"""`eager-cpp demo`, `show` and `info`: the built-in tour, one prompt's tree, and the bug-report facts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..runner.api import run
from ..engine.model import Model, default_model_path
from ..core.options import RunOptions
from ..core.results import RunResult
from .common import CliError, check_writable, load_model
from .flags import given_options

__all__ = ["cmd_demo", "cmd_info", "cmd_show"]

DEMO_PROMPTS = [
    "Country: France\nCapital: Paris\n\nCountry: Kenya\nCapital: Nairobi\n\nCountry: Australia\nCapital:",
    "Country: France\nCapital: Paris\n\nCountry: Kenya\nCapital: Nairobi\n\nCountry: Japan\nCapital:",
    "Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:",
    "The most surprising thing about the ocean is",
]
SPARK = "▁▂▃▄▅▆▇█"
LN20 = 2.995732273553991


def _sparkline(values: list[float]) -> str:
    return "".join(SPARK[min(len(SPARK) - 1, int(v / LN20 * len(SPARK)))] for v in values)


def cmd_demo(args: argparse.Namespace) -> int:
    options = RunOptions.create(**given_options(args))
    model = load_model(args, options)
    print(f"eager_cpp demo: EAGer-init on {Path(model.path).name} ({model.description}); "
          f"M={args.max_sequences}, θ={args.theta}, up to {args.max_new_tokens} tokens per sequence\n")
    result = run(model, DEMO_PROMPTS, method="eager_init", max_sequences=args.max_sequences,
                 entropy_threshold=args.theta, max_new_tokens=args.max_new_tokens, seed=args.seed, stop="\n\n",
                 progress=None, **{k: getattr(options, k) for k in RunOptions.with_role("placement")})
    total_t, total_full = 0, 0
    for p in result.prompts:
        lengths = [len(s.token_ids) for s in p.sequences]
        full = args.max_sequences * round(sum(lengths) / len(lengths))
        total_t += p.generated_tokens
        total_full += full
        last = p.prompt.strip().splitlines()[-1]
        print(f"prompt {p.index}: ...{last!r}")
        print(f"  {p.n_sequences} sequences, {p.generated_tokens} tokens generated; {args.max_sequences} full samples "
              f"of this length would take about {full} ({1 - p.generated_tokens / max(1, full):.0%} saved)")
        for s in p.sequences:
            text = s.text.strip().replace("\n", " / ")[:60]
            if s.parent is None:
                print(f"  #{s.index} root     {_sparkline(s.entropies)}  {text!r}")
            else:
                parent = p.sequences[s.parent]
                took = model.detokenize([parent.token_ids[s.branch_step]])
                alt = model.detokenize([s.own_tokens[0]])
                print(f"  #{s.index} from #{s.parent} at step {s.branch_step} (H={s.branch_entropy:.2f}: "
                      f"{took!r} vs {alt!r})  {_sparkline(s.entropies)}  {text!r}")
        print()
    print(f"total: {result.stats.sequences} sequences, {total_t} tokens vs about {total_full} for "
          f"{args.max_sequences} full samples per prompt; {result.stats.wall_seconds:.1f} s")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..evaluation.plots import format_tree, plot_tree, require_matplotlib

    if args.output:
        try:  # before reading the results, not after printing the tree
            require_matplotlib()
        except ImportError as e:
            raise CliError(f"show -o draws the tree with matplotlib: {e}") from None
        check_writable(Path(args.output))
    result = RunResult.from_jsonl(args.results)
    found = [p for p in result.prompts if p.index == args.prompt]
    if not found:
        have = [p.index for p in result.prompts]
        span = f"{min(have)}..{max(have)}" if have else "none"
        raise CliError(f"prompt {args.prompt} is not in {args.results} (its prompt indices: {span})")
    prompt = found[0]
    print(format_tree(prompt))
    if args.output:
        print(f"wrote {plot_tree(prompt, args.output)}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..engine.system import format_system_info, system_info

    model = None
    if not args.no_model:
        path = args.model
        if path is None:
            try:
                path = default_model_path()
            except ImportError:
                path = None  # the report says the default model is not installed
        if path is not None:
            model = Model(path, cpu_buffers=args.cpu_buffers)
    info = system_info(model)
    print(json.dumps(info, indent=2) if args.json else format_system_info(info))
    return 0
