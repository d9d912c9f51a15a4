"""``python -m eager_cpp.lm_eval ARGS``: lm-eval's command line with the ``eager_cpp`` model registered and
eager_cpp's task configs included, e.g. (from the repository root, where the tasks find ``data/``)::

    python -m eager_cpp.lm_eval run --model eager_cpp --model_args method=eager_init,entropy_threshold=2.0 \
        --tasks eager_gsm8k --limit 16

ARGS are lm-eval's own (``lm-eval run --help``); ``--include_path`` is added, or extended, with
``eager_cpp.lm_eval.TASKS_DIR``.
"""

from __future__ import annotations

import sys

from . import TASKS_DIR, register


def with_tasks(argv: list[str]) -> list[str]:
    """`argv` with eager_cpp's task folder in --include_path (lm-eval reads several as a:b)."""
    if argv and argv[0] in ("-h", "--help"):
        return argv
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--include_path" and i + 1 < len(out):
            out[i + 1] = f"{out[i + 1]}:{TASKS_DIR}"
            return out
        if arg.startswith("--include_path="):
            out[i] = f"{arg}:{TASKS_DIR}"
            return out
    return out + ["--include_path", str(TASKS_DIR)]


def main() -> None:
    try:
        register()
    except ImportError as e:
        print(f"eager_cpp.lm_eval: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    from lm_eval.__main__ import cli_evaluate

    command = sys.argv[1:]
    if command and command[0] not in ("run", "ls", "validate", "-h", "--help"):
        command = ["run"] + command  # lm-eval's legacy form: no subcommand means run
    sys.argv = [sys.argv[0]] + (with_tasks(command) if command[:1] in (["run"], ["ls"], ["validate"]) else command)
    cli_evaluate()


if __name__ == "__main__":
    main()
