"""Reading the line-oriented files users hand the CLI (prompts, datasets, results, their metadata).

Every failure names the file, and the line where there is one: a path that is not a regular file
(a FIFO would block ``open()`` forever, a device like /dev/zero never ends), a line longer than
``MAX_LINE_BYTES`` (read in bounded pieces, so an endless line cannot fill the memory), bytes that are
not UTF-8.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Union

PathLike = Union[str, "os.PathLike[str]"]

# One line of a prompts file or a results JSONL (one prompt and all its sequences). A results line
# takes about 40 bytes per generated token, so 256 sequences of 32,768 tokens stay below it.
MAX_LINE_BYTES = 1 << 30  # 1 GiB


class InputFileError(ValueError):
    """An input file that cannot be read as lines of text; the message names the file (and line)."""


def check_regular_file(path: PathLike, what: str) -> Path:
    """`path` as a Path after checking it names an existing regular file (`what`: "input file", ...).

    Checked with stat() before any open(): opening a FIFO for reading blocks until a writer comes.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {p}") from None
    except OSError as e:  # a symlink loop, a name too long, a folder without permission
        raise InputFileError(f"cannot open the {what} {p}: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{what} is a directory: {p}")
    if not stat.S_ISREG(st.st_mode):
        raise InputFileError(f"{what} is not a regular file (a FIFO, socket or device): {p}")
    return p


def read_lines(path: PathLike, what: str, max_line_bytes: int = 0) -> Iterator[tuple[int, str]]:
    """(line number from 1, line without its newline) of a regular UTF-8 text file.

    A line longer than `max_line_bytes` (0: ``MAX_LINE_BYTES``) is an error naming the file and line,
    found after reading at most that many bytes of it.
    """
    for number, _, line in read_lines_at(path, what, max_line_bytes):
        yield number, line


def read_lines_at(path: PathLike, what: str, max_line_bytes: int = 0) -> Iterator[tuple[int, int, str]]:
    """As ``read_lines``, with each line's byte offset in the file (to read it again: ``read_line_at``)."""
    limit = max_line_bytes or MAX_LINE_BYTES
    p = check_regular_file(path, what)
    try:
        f = open(p, "rb")
    except OSError as e:
        raise InputFileError(f"cannot read the {what} {p}: {e.strerror or e}") from None
    with f:
        number, offset = 0, 0
        while True:
            number += 1
            raw = f.readline(limit + 1)
            if not raw:
                return
            if len(raw) > limit and not (len(raw) == limit + 1 and raw.endswith(b"\n")):
                raise InputFileError(f"{p}:{number}: a line longer than {limit} bytes; not a {what} line")
            yield number, offset, decode_line(raw.rstrip(b"\n").rstrip(b"\r"), p, number)
            offset += len(raw)


def read_line_at(f: BinaryIO, offset: int, path: PathLike) -> str:
    """The line of the open file `f` that starts at `offset` (one ``read_lines_at`` reported), without its newline."""
    f.seek(offset)
    raw = f.readline(MAX_LINE_BYTES + 1)
    return decode_line(raw.rstrip(b"\n").rstrip(b"\r"), path, 0)


def decode_line(raw: bytes, path: PathLike, number: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(f"{path}:{number}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None


def read_text(path: PathLike, what: str, max_bytes: int = 0) -> str:
    """A whole small regular UTF-8 file (a metadata file), at most `max_bytes` (0: ``MAX_LINE_BYTES``)."""
    limit = max_bytes or MAX_LINE_BYTES
    p = check_regular_file(path, what)
    try:
        with open(p, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:
        raise InputFileError(f"cannot read the {what} {p}: {e.strerror or e}") from None
    if len(raw) > limit:
        raise InputFileError(f"{p}: longer than {limit} bytes; not a {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputFileError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
