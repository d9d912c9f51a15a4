"""The `eager-cpp run` checkpoint: results written prompt by prompt, resumed or overwritten safely.

Files beside the results file OUT:
- OUT.meta.json (the sidecar): the settings key (everything that shapes the file: --resume refuses to
  continue under anything else), one hash per input line (its prompt and answer), whether the run is
  complete, and the run's recorded options (``recorded``, read back by ``recorded_settings``).
- Phase (a)'s results, a JSON line per prompt appended (and fsynced) as each chunk finishes: OUT itself
  for methods without reallocation, OUT.init.jsonl for the others. Their reallocation tries append each
  prompt's new sequences to OUT.extras.jsonl (a line per prompt and try: the prompt's line with only the new
  sequences), and once phases (b) and (c) are done the final OUT is merged from the two, a prompt at a time,
  read back by byte offset (``parts``): the run never holds the results whole. An interrupted phase (c) is run
  again on --resume (phase (a) is the checkpoint), so OUT.extras.jsonl starts empty each time.
- --overwrite writes a staged OUT.new and moves it onto OUT once the first chunk is on disk, so the
  old results stay until new ones exist; the sidecar is replaced atomically.

Rows are plain dicts (``results.prompt_to_dict``): this module knows files, not result types.
"""

from __future__ import annotations

import json
import os
from array import array
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, TextIO, Union

import numpy as np

from .datasets import DIGEST_BYTES, example_digest
from .textfiles import read_text

__all__ = ["Checkpoint", "CheckpointError", "META_SUFFIX", "prompt_hash", "recorded_settings",
           "write_atomic"]

META_SUFFIX = ".meta.json"
PathArg = Union[str, "os.PathLike[str]"]


class CheckpointError(ValueError):
    """A results file or sidecar that cannot be resumed (the message says what to do)."""


def prompt_hash(prompt: str, answer: Optional[str]) -> str:
    """What --resume compares per input line: the prompt and its answer (``datasets.example_digest`` in hex)."""
    return example_digest(prompt, answer).hex()


Hashes = Union[Sequence[str], bytes]  # one prompt_hash per input line, or their digests end to end


def _hex_hashes(hashes: Hashes) -> Iterator[str]:
    if isinstance(hashes, (bytes, bytearray)):
        return (hashes[k:k + DIGEST_BYTES].hex() for k in range(0, len(hashes), DIGEST_BYTES))
    return iter(hashes)


def write_atomic(path: Path, text: Union[str, Iterable[str]]) -> None:
    """Replace `path` with `text` (a string, or its pieces) whole: a reader sees the old file or the new one,
    never a part."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for piece in [text] if isinstance(text, str) else text:
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def recorded_settings(results_path: PathArg) -> Optional[dict[str, Any]]:
    """The run settings `eager-cpp run` recorded beside a results file (None: no sidecar there)."""
    meta = os.fspath(results_path) + META_SUFFIX
    if not os.path.lexists(meta):
        return None
    try:
        recorded = json.loads(read_text(meta, "results metadata file"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{meta}: not a results metadata file (invalid JSON: {e})") from None
    settings = recorded.get("recorded") or recorded.get("engine_settings") or recorded.get("settings") \
        if isinstance(recorded, dict) else None  # "engine_settings": the name before 0.2
    if not isinstance(settings, dict):
        raise ValueError(f"{meta}: not a results metadata file (no 'settings' object)")
    return settings


def _line_offsets(path: Path, n_prompts: int) -> tuple[np.ndarray, int, int]:
    """The byte offset of each complete results line of `path` by prompt index (-1: none), how many lines
    those are, and the bytes they take. Reading stops at a line cut by an interruption, and goes a line at a
    time (a resumed run does not hold its results)."""
    offsets = np.full(n_prompts, -1, dtype=np.int64)
    if not path.exists():
        return offsets, 0, 0
    position, kept = 0, 0
    with open(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            index = row.get("index") if isinstance(row, dict) else None
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n_prompts:
                raise CheckpointError(f"{path}:{number}: a results line without the index of an input line; this "
                                      "file was not written by 'eager-cpp run' (rerun with --overwrite)")
            if not line.endswith(b"\n"):
                break  # a last line the interruption cut after its closing brace
            offsets[index] = position
            position += len(line)
            kept = number
    return offsets, kept, position


class Checkpoint:
    """The store of one `eager-cpp run` into `out` (module docstring).

    key: the settings key; hashes: one `prompt_hash` per input line (or their digests end to end, as
    ``datasets.PromptFile`` keeps them); staged_phase_a: phase (a) goes to OUT.init.jsonl and the final
    results are written by `finish` (methods with reallocation). Prompt indices are input positions.
    Per prompt it keeps an offset (8 bytes), not the prompt's line.
    """

    def __init__(self, out: Path, key: dict[str, Any], hashes: Hashes, staged_phase_a: bool) -> None:
        self.out = out
        self.meta_path = out.with_name(out.name + META_SUFFIX)
        self.phase_a_path = out.with_name(out.name + ".init.jsonl") if staged_phase_a else out
        self.extras_path = out.with_name(out.name + ".extras.jsonl")
        self.final_separately = staged_phase_a
        self.hashes = hashes
        self.n_prompts = len(hashes) // DIGEST_BYTES if isinstance(hashes, (bytes, bytearray)) else len(hashes)
        # prompt index -> byte offset of its line in phase_a_path (-1: not there)
        self._offsets = np.full(self.n_prompts, -1, dtype=np.int64)
        # The lines of extras_path, each linked to the one before it of the same prompt (8 + 16 bytes a line).
        self._extra_last = np.full(self.n_prompts, -1, dtype=np.int64)  # prompt index -> its latest line
        self._extra_offset = array("q")  # line -> byte offset
        self._extra_before = array("q")  # line -> the prompt's line before it (-1: none)
        self._size = 0  # bytes of phase (a)'s file so far
        self._written = 0  # prompts of phase (a) written
        self._durable = 0  # prompts of phase (a) fsynced (a chunk whose write failed is not)
        self.meta: dict[str, Any] = {"settings": key, "complete": False}  # the sidecar, less its hashes
        self._file: Optional[TextIO] = None
        self._stage: Optional[Path] = None

    @staticmethod
    def exists(out: Path) -> bool:
        return out.exists() or out.with_name(out.name + META_SUFFIX).exists()

    def start(self, resume: bool) -> list[int]:
        """Open the store: fresh (staged, nothing replaced yet), or resumed after checking that the
        interrupted run had this key and these prompts. Returns the indices of the prompts whose phase (a)
        is already on disk (``has``; read back with ``parts``)."""
        self.extras_path.unlink(missing_ok=True)
        if not (resume and self.exists(self.out)):
            self._stage = self.phase_a_path.with_name(self.phase_a_path.name + ".new")
            self._file = open(self._stage, "w", encoding="utf-8")
            return []
        if not self.meta_path.exists():
            raise CheckpointError(f"{self.out} has no {self.meta_path.name}; it was not written by 'eager-cpp run'")
        old = self._read_meta()
        self._check_resume(old)
        old.pop("prompt_hashes", None)
        self.meta = dict(old, settings=self.meta["settings"])
        self._offsets, kept, self._size = _line_offsets(self.phase_a_path, self.n_prompts)
        if self.phase_a_path.exists():  # drop a line cut by the interruption before appending after it
            os.truncate(self.phase_a_path, self._size)
        self._write_meta()
        self._file = open(self.phase_a_path, "a", encoding="utf-8")
        self._written = self._durable = kept
        return [int(k) for k in np.flatnonzero(self._offsets >= 0)]

    def has(self, index: int) -> bool:
        """Whether prompt `index`'s phase (a) is in the store."""
        return bool(self._offsets[index] >= 0)

    def chunk_done(self, rows: list[dict], recorded: Optional[dict[str, Any]] = None) -> None:
        """Phase (a)'s rows of one chunk, durable before this returns; the first chunk of a fresh run
        moves the staged file onto its place."""
        assert self._file is not None, "start() first"
        for row in rows:
            line = json.dumps(row, ensure_ascii=False) + "\n"
            self._file.write(line)
            self._offsets[row["index"]] = self._size
            self._size += len(line.encode("utf-8"))
            self._written += 1
        self._file.flush()
        os.fsync(self._file.fileno())
        self._durable = self._written
        first = self._stage is not None
        if first:
            os.replace(self._stage, self.phase_a_path)  # the open file follows the rename
            self._stage = None
        # The sidecar (one hash per input line: megabytes at a million prompts) is rewritten only when it changes.
        if first or (recorded is not None and recorded != self.meta.get("recorded")):
            if recorded is not None:
                self.meta["recorded"] = recorded
            self._write_meta()

    def extras_done(self, rows: list[dict]) -> None:
        """A reallocation try's new sequences, a row per prompt (its index, steps and new sequences)."""
        with open(self.extras_path, "ab") as f:
            for row in rows:
                index = row["index"]
                self._extra_before.append(int(self._extra_last[index]))
                self._extra_last[index] = len(self._extra_offset)
                self._extra_offset.append(f.tell())
                f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

    def parts(self, index: int) -> tuple[dict, list[dict]]:
        """Prompt `index`'s rows so far: its phase (a) line, and each try's line of new sequences."""
        self._flush()
        with open(self.phase_a_path if self._stage is None else self._stage, "rb") as f:
            f.seek(self._offsets[index])
            base = json.loads(f.readline())
        lines, line = [], int(self._extra_last[index])
        while line >= 0:
            lines.append(line)
            line = self._extra_before[line]
        extras = []
        if lines:
            with open(self.extras_path, "rb") as f:
                for line in reversed(lines):
                    f.seek(self._extra_offset[line])
                    extras.append(json.loads(f.readline()))
        return base, extras

    def finish(self, order: Optional[list[int]], recorded: dict[str, Any],
               merge: Optional[Callable[[dict, list[dict]], dict]] = None) -> None:
        """The run is complete: the final results (when written separately: the prompts `order` names, each
        `merge`d from its ``parts`` one at a time) and the sidecar saying so."""
        self._flush()
        if self._stage is not None:  # no chunk ran (no prompt was pending)
            self.close()
            os.replace(self._stage, self.phase_a_path)
            self._stage = None
        if self.final_separately:
            assert order is not None and merge is not None
            tmp = self.out.with_name(self.out.name + ".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for index in order:
                    base, extras = self.parts(index)
                    f.write(json.dumps(merge(base, extras) if extras else base, ensure_ascii=False) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.out)
            self.extras_path.unlink(missing_ok=True)
        self.close()
        self.meta["recorded"] = recorded
        self.meta["complete"] = True
        self._write_meta()

    def _flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        """Close the open results file; a staged file no chunk reached is removed (the old results stay)."""
        if self._file is not None:
            file, self._file = self._file, None
            file.close()

    def intact(self) -> str:
        """What a resumed run starts from, in words (for an error that ends the run)."""
        if self._stage is not None:
            return f"no chunk reached {self.phase_a_path}, so any results there are the old ones"
        return f"phase (a) of {self._durable} prompts is intact in {self.phase_a_path}"

    def abandon(self) -> None:
        try:
            self.close()
        except OSError:  # what was left in its buffer could not be written either: --resume drops a cut line
            pass
        self.extras_path.unlink(missing_ok=True)  # a resumed run makes them again
        self.out.with_name(self.out.name + ".tmp").unlink(missing_ok=True)  # a final merge cut short
        if self._stage is not None:
            self._stage.unlink(missing_ok=True)
            self._stage = None

    def _write_meta(self) -> None:
        """The sidecar: its fields, then one hash per input line, written piece by piece (megabytes at a
        million prompts: never one string)."""
        head = json.dumps(self.meta, indent=2)
        assert head.endswith("\n}")
        hashes = _hex_hashes(self.hashes)

        def pieces() -> Iterator[str]:
            yield head[:-2] + ',\n  "prompt_hashes": ['
            for k, h in enumerate(hashes):
                yield f'{"," if k else ""}\n    "{h}"'
            yield "\n  ]\n}"

        write_atomic(self.meta_path, pieces())

    def _read_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(read_text(self.meta_path, "results metadata file"))
            if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
                raise ValueError("no 'settings' object")
            return meta
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {self.meta_path} ({e}); rerun with --overwrite to start over") from None

    def _check_resume(self, old_meta: dict[str, Any]) -> None:
        old, key, hashes = old_meta["settings"], self.meta["settings"], _hex_hashes(self.hashes)
        diff = {k: (old.get(k), v) for k, v in key.items() if old.get(k) != v}
        if diff:
            shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(f"--resume with other settings than the interrupted run ({shown})")
        old_hashes = old_meta.get("prompt_hashes")
        if not isinstance(old_hashes, list):
            raise CheckpointError(f"{self.meta_path} records no prompt hashes (written by an older eager-cpp); "
                                  "rerun with --overwrite")
        for number, (a, b) in enumerate(zip(old_hashes, hashes), start=1):
            if a != b:
                raise CheckpointError(f"--resume: prompt {number} of the input (or its answer) changed since the "
                                      "interrupted run; rerun with --overwrite")
