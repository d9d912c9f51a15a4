"""Reading prompts and labelled datasets: a text file (one prompt per line) or JSONL."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass
class Example:
    prompt: str
    answer: Optional[str] = None


class DatasetError(ValueError):
    """A dataset file that cannot be read as prompts; the message names the file and line."""


def load_examples(path: "str | Path", require_answers: bool = False, limit: Optional[int] = None) -> list[Example]:
    """`.jsonl` files need a "prompt" field per line ("answer" when require_answers); other files
    are read as one prompt per non-empty line."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"input file not found: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"input path is a directory: {p}")
    examples: list[Example] = []
    with open(p, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            if p.suffix == ".jsonl":
                examples.append(_parse_jsonl_line(p, number, line, require_answers))
            else:
                if require_answers:
                    raise DatasetError(f"{p}: a labelled dataset must be JSONL with 'prompt' and 'answer' fields")
                examples.append(Example(prompt=line.rstrip("\n").replace("\\n", "\n")))
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
    return Example(prompt=prompt, answer=None if answer is None else str(answer))
