"""`eager-cpp run`: prompts to a results file, phase (a) checkpointed chunk by chunk, resumable."""

from __future__ import annotations

import argparse
import errno
from pathlib import Path
from typing import Any, Optional

from ..files.checkpoint import Checkpoint, prompt_hash
from ..files.datasets import Example, load_examples
from ..runner.driver import drive
from ..engine.model import Model
from ..core.options import RunOptions
from ..core.progress import ProgressLine
from ..core.results import PromptResult, prompt_from_dict, prompt_to_dict
from ..core.vocabulary import Method
from .common import CliError, check_writable, model_or_workers, progress_enabled, scorer_of, scorer_style
from .flags import given_options

__all__ = ["cmd_run"]


def settings_key(args: argparse.Namespace, options: RunOptions, model: Any, examples: list[Example],
                 chunk_size: int) -> dict[str, Any]:
    """Everything that shapes the results file: --resume refuses to continue under anything else. The recorded
    options, the input, the model and the chunking (llama.cpp is not batch-invariant: docs/method.md)."""
    path = model.path if isinstance(model, Model) else str(model)
    return {**options.recorded(len(examples)), "input": str(Path(args.input).resolve()), "model": path,
            "chunk_size": chunk_size, "scorer": scorer_style(args, args.input)}


def _checked_prompt(path: Path, row: dict) -> PromptResult:
    """A line the checkpoint kept, as a PromptResult; a malformed one names the file and the prompt."""
    try:
        return prompt_from_dict(row)
    except (ValueError, KeyError, TypeError) as e:
        raise CliError(f"{path}: prompt {row['index']} is not a results line ({e}); rerun with --overwrite") from None


class _FileResults:
    """The checkpoint as the phases' result store (phases.ResultStore): prompts read back whole from its files,
    a reallocation try's new sequences appended to them."""

    def __init__(self, checkpoint: Checkpoint) -> None:
        self.checkpoint = checkpoint

    def load(self, index: int) -> PromptResult:
        return _merged_prompt(*self.checkpoint.parts(index))

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
    examples = load_examples(args.input)
    if args.chunk_size is not None and args.chunk_size < 1:
        raise CliError("--chunk-size must be at least 1")
    # Everything checkable is checked before the model loads and before any file is touched.
    given = given_options(args)
    options = RunOptions.create(**given)
    answers = [e.answer for e in examples] if all(e.answer is not None for e in examples) else None
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
        return _run(args, options, examples, answers, model, cluster, scorer)
    finally:
        if cluster is not None:
            cluster.close()


def _run(args: argparse.Namespace, options: RunOptions, examples: list[Example], answers: Optional[list[str]],
         model: Any, cluster: Any, scorer: Any) -> int:
    """The run through the driver, phase (a) checkpointed chunk by chunk (checkpoint.Checkpoint)."""
    chunk_size = args.chunk_size or (32 * cluster.n_workers if cluster is not None else 32)
    out = Path(args.output)
    method = Method(options.method)
    store = Checkpoint(out, settings_key(args, options, model, examples, chunk_size),
                       [prompt_hash(e.prompt, e.answer) for e in examples], staged_phase_a=method.reallocates)
    progress = ProgressLine(total=len(examples)) if progress_enabled(args) else None
    done = store.start(resume=args.resume)
    try:
        prompts = [_checked_prompt(store.phase_a_path, done[i]) if i in done
                   else PromptResult(index=i, prompt=e.prompt, sequences=[], prompt_tokens=0)
                   for i, e in enumerate(examples)]
        pending = [i for i in range(len(examples)) if i not in done]
        if progress is not None:
            progress.offset = len(done)

        def checkpoint(chunk: list[PromptResult]) -> None:
            store.chunk_done([prompt_to_dict(p) for p in chunk], options.recorded(len(examples)))
            if progress is not None:
                progress.offset += len(chunk)

        # A failed reallocation try is a warning (main): the file keeps what was made. The scorer goes with or
        # without labels: the label-free plan reads phase (a)'s answers with it, labels only score. The run
        # keeps each prompt's summary; its sequences are in the files (_FileResults).
        result = drive(model, options, prompts, answers, scorer, progress, pending=pending,
                       chunk_size=chunk_size, on_chunk=checkpoint, store=_FileResults(store))
        store.finish([p.index for p in result.prompts] if method.reallocates else None, result.settings, _merged_row)
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
