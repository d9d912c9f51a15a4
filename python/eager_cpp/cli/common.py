"""What the commands share: the one-line error, loading the model or the Ray workers from the options, and
the checks of output files made before any work."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

from .._core import supports_gpu_offload
from ..engine.model import Model, check_kv_memory_available, default_model_path
from ..core.options import RunOptions, parse_kv_memory
from ..answers.scoring import dataset_style, default_scorer

__all__ = ["CliError", "check_writable", "load_model", "model_or_workers", "progress_enabled", "scorer_of",
           "scorer_style"]


class CliError(Exception):
    """An error shown as one line, without a traceback."""


def model_path(args: argparse.Namespace) -> str:
    if args.model is not None:
        return args.model
    try:
        return default_model_path()
    except ImportError as e:
        raise CliError(str(e)) from None


def check_kv_memory(options: RunOptions) -> None:
    """--kv-memory: no more than the memory available, where the model loads in this process."""
    try:
        check_kv_memory_available(parse_kv_memory(options.kv_memory),
                                  options.n_gpu_layers != 0 and supports_gpu_offload())
    except (TypeError, ValueError) as e:
        raise CliError(f"--kv-memory: {e}") from None


def load_model(args: argparse.Namespace, options: RunOptions) -> Model:
    """The model, loaded with what only loading decides (file, offload, buffer types); the rest of the
    placement (threads, context, KV memory) reaches the engine through the options."""
    check_kv_memory(options)
    path = model_path(args)
    try:
        return Model(path, n_gpu_layers=options.n_gpu_layers, cpu_buffers=args.cpu_buffers)
    except FileNotFoundError as e:
        raise CliError(f"{e}; pass --model PATH to a .gguf file, or omit --model for the default model") from None
    except (ValueError, IsADirectoryError, RuntimeError) as e:
        raise CliError(f"{e}; --model must name a GGUF model file") from None


def model_or_workers(args: argparse.Namespace, options: RunOptions) -> tuple[Any, Any]:
    """(model, cluster): the loaded model and None, or the model path and a pool of Ray workers (--ray), each
    holding the model with the options' placement."""
    if options.cluster is None:
        return load_model(args, options), None
    try:
        from ..runner.distributed import RayWorkers

        workers = RayWorkers(model_path(args), options.cluster, workers=options.workers,
                             threads_per_worker=options.threads_per_worker or options.n_threads,
                             n_gpu_layers=options.n_gpu_layers, kv_memory=options.kv_memory)
    except (ImportError, TimeoutError, RuntimeError, ValueError) as e:
        raise CliError(str(e)) from None
    return workers.model_path, workers


def check_writable(path: Path) -> None:
    """Fail before any work when results could not be written there."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists() and not path.is_file():
        raise CliError(f"cannot write {path}: it exists and is not a regular file")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".eager-cpp-check-"):
            pass
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror or e}") from None


def progress_enabled(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def scorer_style(args: argparse.Namespace, data_path: str) -> str:
    """The answer style of --scorer, else the dataset's (eval, bench and run agree on it)."""
    return args.scorer or dataset_style(data_path)


def scorer_of(args: argparse.Namespace, data_path: str) -> Any:
    """The scorer of `scorer_style`; a scorer whose package is missing (math_verify) is a CliError naming it."""
    try:
        return default_scorer(scorer_style(args, data_path))
    except ImportError as e:
        raise CliError(str(e)) from None
