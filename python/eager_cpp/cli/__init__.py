"""The `eager-cpp` command line: demo, run, eval, bench, show, info.

``parser`` builds the arguments (a flag for every run option, generated from ``RunOptions``); ``flags``
turns them into options; each command lives in ``run``, ``sweeps`` (eval, bench) or ``tools`` (demo,
show, info); ``common`` holds what they share. A user error is one ``eager-cpp: error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any, Callable, Optional

from ..method.phases import ReallocationWarning
from .common import CliError
from .parser import build_parser

__all__ = ["CliError", "build_parser", "main"]


def command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function of a command, imported when it runs (`eager-cpp show` need not load the engine)."""
    if name == "run":
        from .run import cmd_run
        return cmd_run
    if name in ("eval", "bench"):
        from .sweeps import cmd_bench, cmd_eval
        return cmd_eval if name == "eval" else cmd_bench
    from .tools import cmd_demo, cmd_info, cmd_show
    return {"demo": cmd_demo, "show": cmd_show, "info": cmd_info}[name]


def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None,
                  line: Optional[str] = None) -> None:
    """A failed reallocation try as one `eager-cpp: warning:` line; other warnings as Python shows them."""
    if issubclass(category, ReallocationWarning):
        print(f"eager-cpp: warning: {message}", file=sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ReallocationWarning)
            warnings.showwarning = _show_warning
            return command(args.command)(args)
    except CliError as e:
        print(f"eager-cpp: error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, TypeError, RuntimeError) as e:  # OSError: FileNotFoundError, PermissionError, ...
        print(f"eager-cpp: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        hint = " (rerun with --resume to continue)" if args.command == "run" else ""
        print(f"\neager-cpp: interrupted{hint}", file=sys.stderr)
        return 130
