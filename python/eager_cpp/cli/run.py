"""`eager-cpp run`: prompts to a results file, phase (a) checkpointed chunk by chunk, resumable.

The run holds neither the prompts nor the results: the input is checked whole, then read a prompt at a
time (``datasets.PromptFile``); results go to the checkpoint's files as they are made and are read back from
there (``_FileResults``); in memory are the columns of each prompt's summary (``ledger.PromptLedger``).
"""

from __future__ import annotations

import argparse
import errno
from pathlib import Path
from typing import Any, Optional, Sequence

from ..files.checkpoint import Checkpoint
from ..files.datasets import PromptFile
from ..runner.driver import drive
from ..engine.model import Model
from ..core.options import RunOptions
from ..core.progress import ProgressLine
from ..core.results import PromptResult, prompt_from_dict, prompt_to_dict
from ..core.vocabulary import Method
from .common import CliError, check_writable, model_or_workers, progress_enabled, scorer_of, scorer_style
from .flags import given_options

__all__ = ["cmd_run"]


def settings_key(args: argparse.Namespace, options: RunOptions, model: Any, n_prompts: int,
                 chunk_size: int) -> dict[str, Any]:
    """Everything that shapes the results file: --resume refuses to continue under anything else. The recorded
    options, the input, the model and the chunking (llama.cpp is not batch-invariant: docs/method.md)."""
    path = model.path if isinstance(model, Model) else str(model)
    return {**options.recorded(n_prompts), "input": str(Path(args.input).resolve()), "model": path,
            "chunk_size": chunk_size, "scorer": scorer_style(args, args.input)}


class _InputPrompts:
    """The input file as the phases' prompts (``ledger.PromptTable``): prompt k made from line k when asked for."""

    def __init__(self, inputs: PromptFile) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, k: int) -> PromptResult:
        return PromptResult(index=k, prompt=self.inputs.example(k).prompt, sequences=[], prompt_tokens=0)


class _FileResults:
    """The checkpoint as the phases' result store (phases.ResultStore): prompts read back whole from its files,
    a reallocation try's new sequences appended to them."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint

    def load(self, index: int) -> PromptResult:
        base, extras = self.checkpoint.parts(index)
        try:
            return _merged_prompt(base, extras)
        except (ValueError, KeyError, TypeError) as e:  # a line of an interrupted run, edited since
            raise CliError(f"{self.checkpoint.phase_a_path}: prompt {index} is not a results line ({e}); rerun with "
                           "--overwrite") from None

    def extras(self, prompts: list[PromptResult]) -> None:
        self.checkpoint.extras_done([prompt_to_dict(p) for p in prompts])


def _merged_prompt(base: dict, extras: list[dict]) -> PromptResult:
    """A prompt's phase (a) row with each try's row of new sequences after it."""
    prompt = prompt_from_dict(base)
    for row in extras:
        prompt.extend(prompt_from_dict(row))
    return prompt


# A write that failed for want of room or permission: the run ends with what is on disk kept for --resume.
WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _merged_row(base: dict, extras: list[dict]) -> dict:
    return prompt_to_dict(_merged_prompt(base, extras))


def cmd_run(args: argparse.Namespace) -> int:
    if args.resume and args.overwrite:
        raise CliError("--resume continues the existing output and --overwrite replaces it: pass one of them")
    inputs = PromptFile(args.input)
    if args.chunk_size is not None and args.chunk_size < 1:
        raise CliError("--chunk-size must be at least 1")
    # Everything checkable is checked before the model loads and before any file is touched.
    given = given_options(args)
    options = RunOptions.create(**given)
    answers = inputs.answers()
    if Method(options.method).needs_labels and answers is None:
        raise CliError("--method eager needs an 'answer' field on every JSONL line")
    out = Path(args.output)
    check_writable(out)
    if Checkpoint.exists(out) and not (args.resume or args.overwrite):
        what = out if out.exists() else f"an unfinished run into {out} (its checkpoint files beside it)"
        raise CliError(f"{what} exists; pass --resume to continue it or --overwrite to replace it")
    scorer = scorer_of(args, args.input)
    model, cluster = model_or_workers(args, options)
    try:
        if cluster is not None:
            options = RunOptions.create(**dict(given, cluster=cluster))
        return _run(args, options, inputs, answers, model, cluster, scorer)
    finally:
        inputs.close()
        if cluster is not None:
            cluster.close()


def _run(args: argparse.Namespace, options: RunOptions, inputs: PromptFile, answers: Optional[Sequence[Optional[str]]],
         model: Any, cluster: Any, scorer: Any) -> int:
    """The run through the driver, phase (a) checkpointed chunk by chunk (checkpoint.Checkpoint)."""
    chunk_size = args.chunk_size or (32 * cluster.n_workers if cluster is not None else 32)
    out = Path(args.output)
    method = Method(options.method)
    n = len(inputs)
    store = Checkpoint(out, settings_key(args, options, model, n, chunk_size), inputs.digests,
                       staged_phase_a=method.reallocates)
    progress = ProgressLine(total=n) if progress_enabled(args) else None
    done = len(store.start(resume=args.resume))
    try:
        pending: Sequence[int] = range(n) if not done else [k for k in range(n) if not store.has(k)]
        if progress is not None:
            progress.offset = done

        def checkpoint(chunk: list[PromptResult]) -> None:
            store.chunk_done([prompt_to_dict(p) for p in chunk], options.recorded(n))
            if progress is not None:
                progress.offset += len(chunk)

        # A failed reallocation try is a warning (main): the file keeps what was made. The scorer goes with or
        # without labels: the label-free plan reads phase (a)'s answers with it, labels only score. The run
        # keeps each prompt's summary; its sequences are in the files (_FileResults).
        result = drive(model, options, _InputPrompts(inputs), answers, scorer, progress, pending=pending,
                       chunk_size=chunk_size, on_chunk=checkpoint, store=_FileResults(store))
        store.finish(range(n) if method.reallocates else None, result.settings, _merged_row)
    except OSError as e:
        store.abandon()
        if e.errno not in WRITE_FAILURES:
            raise
        where = f" ({e.filename})" if e.filename else ""
        raise CliError(f"writing the results beside {out} failed: {e.strerror or e}{where}; {store.intact()}: "
                       f"make room (or fix the folder) and rerun with --resume to continue") from None
    except BaseException:
        store.abandon()
        raise
    finally:
        if progress is not None:
            progress.close()
    print(f"wrote {len(result.prompts)} prompts to {out}")
    return 0
