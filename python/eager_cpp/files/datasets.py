"""Reading prompts and labelled datasets: a text file (one prompt per line) or JSONL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .textfiles import InputFileError, read_lines


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
        if not line.strip():
            continue
        if p.suffix == ".jsonl":
            examples.append(_parse_jsonl_line(p, number, line, require_answers))
        else:
            if require_answers:
                raise DatasetError(f"{p}: a labelled dataset must be JSONL with 'prompt' and 'answer' fields")
            examples.append(Example(prompt=line.replace("\\n", "\n")))
    if not examples:
        raise DatasetError(f"{p}: no prompts found")
    return examples


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
