"""Reading prompts and labelled datasets: a text file (one prompt per line) or JSONL.

``load_examples`` reads them all into memory; ``PromptFile`` checks every line once and then reads a
prompt back by its position when a run needs it, so a run over a million lines does not hold them.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

from .textfiles import InputFileError, read_line_at, read_lines, read_lines_at

DIGEST_BYTES = 8  # of an example's digest: what --resume compares per input line


@dataclass
class Example:
    prompt: str
    answer: Optional[str] = None


class DatasetError(InputFileError):
    """A dataset file that cannot be read as prompts; the message names the file and line."""


def load_examples(path: "str | Path", require_answers: bool = False, limit: Optional[int] = None) -> list[Example]:
    """`.jsonl` files need a "prompt" field per line ("answer" when require_answers); other files
    are read as one prompt per non-empty line."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of examples, got {limit!r}")
    p = Path(path)
    examples: list[Example] = []
    for number, line in read_lines(p, "input file"):
        if limit is not None and len(examples) >= limit:
            break
        example = _parse_line(p, number, line, require_answers)
        if example is not None:
            examples.append(example)
    if not examples:
        raise DatasetError(f"{p}: no prompts found")
    return examples


def _parse_line(path: Path, number: int, line: str, require_answers: bool = False) -> Optional[Example]:
    """One line of a prompts file as an Example (None: a blank line, skipped)."""
    if not line.strip():
        return None
    if path.suffix == ".jsonl":
        return _parse_jsonl_line(path, number, line, require_answers)
    if require_answers:
        raise DatasetError(f"{path}: a labelled dataset must be JSONL with 'prompt' and 'answer' fields")
    return Example(prompt=line.replace("\\n", "\n"))


def example_digest(prompt: str, answer: Optional[str]) -> bytes:
    """What --resume compares per input line: a digest of the prompt and its answer."""
    data = json.dumps([prompt, answer], ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(data).digest()[:DIGEST_BYTES]


class PromptFile:
    """A prompts file (as ``load_examples`` reads it) checked whole once, then read back by position.

    The check reads every line and keeps, per prompt, where its line starts and its ``example_digest``
    (16 bytes a prompt): a malformed line is an error naming the file and line before anything runs, and
    the prompts themselves stay in the file until ``example(k)`` reads one. A line read back must still
    have its digest: a file changed under a run is an error, not a silent mix of two inputs.
    """

    def __init__(self, path: "str | Path") -> None:
        self.path = Path(path)
        self._offsets = array("q")
        digests = bytearray()
        self.all_answered = True
        for number, offset, line in read_lines_at(self.path, "input file"):
            example = _parse_line(self.path, number, line)
            if example is None:
                continue
            self._offsets.append(offset)
            digests += example_digest(example.prompt, example.answer)
            self.all_answered = self.all_answered and example.answer is not None
        if not self._offsets:
            raise DatasetError(f"{self.path}: no prompts found")
        self.digests = bytes(digests)
        self._file: Optional[BinaryIO] = None

    def __len__(self) -> int:
        return len(self._offsets)

    def digest(self, k: int) -> bytes:
        return self.digests[k * DIGEST_BYTES:(k + 1) * DIGEST_BYTES]

    def example(self, k: int) -> Example:
        """The `k`-th prompt of the file (from 0, blank lines not counted) with its answer."""
        if self._file is None:
            self._file = open(self.path, "rb")
        example = _parse_line(self.path, 0, read_line_at(self._file, self._offsets[k], self.path))
        if example is None or example_digest(example.prompt, example.answer) != self.digest(k):
            raise DatasetError(f"{self.path} changed while the run was reading it (prompt {k} is not the line "
                               "it checked); rerun on a file that stays as it is")
        return example

    def __iter__(self) -> Iterator[Example]:
        return (self.example(k) for k in range(len(self)))

    def answers(self) -> Optional["FileAnswers"]:
        """Every prompt's answer, read back by position (None: some line has no answer)."""
        return FileAnswers(self) if self.all_answered else None

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            file.close()


class FileAnswers:
    """The answers of a ``PromptFile`` as a sequence (what the phases index by prompt position)."""

    def __init__(self, prompts: PromptFile) -> None:
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, k: int) -> Optional[str]:
        return self.prompts.example(k).answer


def _parse_jsonl_line(path: Path, number: int, line: str, require_answers: bool) -> Example:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{number}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise DatasetError(f"{path}:{number}: expected a JSON object with a 'prompt' field")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        raise DatasetError(f"{path}:{number}: missing or empty 'prompt' field")
    answer = row.get("answer")
    if require_answers and answer is None:
        raise DatasetError(f"{path}:{number}: no 'answer' field; eval needs a labelled dataset")
    answer = None if answer is None else str(answer)
    # JSON escapes can spell a lone surrogate ("\\ud800"), which no UTF-8 text holds.
    for name, text in (("prompt", prompt), ("answer", answer)):
        try:
            (text or "").encode("utf-8")
        except UnicodeEncodeError as e:
            raise DatasetError(f"{path}:{number}: the '{name}' field is not valid Unicode text ({e.reason} at "
                               f"character {e.start})") from None
    return Example(prompt=prompt, answer=answer)
