"""The flags of the run options, generated from ``RunOptions``' fields, and the options they give.

Every field has a flag (its ``OptionSpec.flag``, else ``--`` and the name with dashes); a flag not given
is None, so a preset fills it and then the option's default. ``given_options`` checks each given flag on
its own, so a bad value is one error naming the flag, then the combination.
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from typing import Any, Iterable, Optional

from ..core.options import OptionSpec, RunOptions, spec_of
from .common import CliError

__all__ = ["add_option_flags", "flag_of", "given_options"]

DEFAULTS = RunOptions()


def flag_of(name: str) -> str:
    return spec_of(name).flag or "--" + name.replace("_", "-")


def _help(name: str, spec: OptionSpec) -> str:
    default = getattr(DEFAULTS, name)
    shown = ",".join(default) if isinstance(default, tuple) else default
    choices = f" {{{', '.join(spec.choices)}}}" if spec.choices else ""
    return f"{spec.help}{choices} (option {name}; default: {shown})".replace("%", "%%")


def add_option_flags(parser: argparse.ArgumentParser, names: Optional[Iterable[str]] = None) -> None:
    """A flag for each of `names` (default: every option), with None as its argparse default."""
    wanted = set(RunOptions.names() if names is None else names)
    for f in fields(RunOptions):
        if f.name not in wanted:
            continue
        spec: OptionSpec = spec_of(f.name)
        flags = [spec.short, flag_of(f.name)] if spec.short else [flag_of(f.name)]
        kind = spec.value or type(f.default)
        kw: dict[str, Any] = dict(dest=f.name, default=None, help=_help(f.name, spec))
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif spec.repeat:
            kw.update(action="append", metavar=spec.metavar or "TEXT")
        elif f.name == "cluster":  # --ray alone: start Ray here
            kw.update(nargs="?", const="local", metavar=spec.metavar)
        else:
            kw.update(type=kind if kind in (int, float) else str, metavar=spec.metavar or kind.__name__.upper())
        parser.add_argument(*flags, **kw)


def _unescape(s: str) -> str:
    return s.replace("\\n", "\n").replace("\\t", "\t")


def given_options(args: argparse.Namespace, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The options of the flags given (not None), each checked alone (an error names its flag), then together."""
    given: dict[str, Any] = {}
    for name in RunOptions.names():
        value = getattr(args, name, None)
        if value is None or name in skip:
            continue
        if name == "stop":
            value = [_unescape(s) for s in value]
        elif name == "think_end_marker" and value == "":
            value = None  # '' = branch anywhere
        elif name == "kv_memory" and isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        try:
            RunOptions.create(**{name: value, **({"cluster": "local"} if name in ("workers", "threads_per_worker")
                                                 else {})})
        except (TypeError, ValueError) as e:
            message, flag = str(e), flag_of(name)
            # "n_threads must be ..." reads "--threads must be ..."; other messages follow the flag.
            raise CliError(flag + message[len(name):] if message.startswith(name + " ") else f"{flag}: {message}") \
                from None
        given[name] = value
    try:
        RunOptions.create(**given)
    except (TypeError, ValueError) as e:
        raise CliError(str(e)) from None
    return given
