"""The `eager-cpp` command line: demo, run, eval, bench, show, info.

``parser`` builds the arguments (a flag for every run option, generated from ``RunOptions``); ``flags``
turns them into options; each command lives in ``run``, ``sweeps`` (eval, bench) or ``tools`` (demo,
show, info); ``common`` holds what they share. A user error is one ``eager-cpp: error:`` line, exit 2.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Optional

from ..phases import ReallocationWarning
from .common import CliError
from .parser import build_parser
from .run import cmd_run
from .sweeps import cmd_bench, cmd_eval
from .tools import cmd_demo, cmd_info, cmd_show

__all__ = ["CliError", "build_parser", "main"]

COMMANDS = {"demo": cmd_demo, "run": cmd_run, "eval": cmd_eval, "bench": cmd_bench, "show": cmd_show,
            "info": cmd_info}


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
            return COMMANDS[args.command](args)
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
