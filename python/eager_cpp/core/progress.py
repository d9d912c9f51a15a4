"""Progress of a run: one event, whatever executes the phases, and one renderer for the terminal.

A `progress=` callable gets `ProgressEvent.to_dict()`; `progress=True` (and the CLI) draws a
throttled status line on stderr from the same events. The local executor reports between engine
steps, the Ray executor once per finished shard (with the pid of the actor that ran it and its node).
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Union

ProgressArg = Union[None, bool, Callable[[dict], Any], "ProgressLine"]


@dataclass
class ProgressEvent:
    phase: str  # "a": EAGer-init / Full Parallel over the prompts; "c": a reallocation try
    round: int  # 0 in phase (a), the try number in (c)
    prompts_done: int  # of this engine run or dispatch (the prompts whose sequences all finished)
    prompts_total: int
    live_sequences: int
    generated_tokens: int  # in this run so far
    elapsed_seconds: float
    # Ray only: the shard that just finished.
    shards_done: Optional[int] = None
    shards_total: Optional[int] = None
    worker: Optional[int] = None  # the pid of the Ray actor that ran the shard
    node: Optional[str] = None
    shard_prompts: Optional[int] = None
    shard_tokens: Optional[int] = None
    shard_seconds: Optional[float] = None

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        d["tokens_per_second"] = self.tokens_per_second
        return d


class ProgressLine:
    """The status line on stderr; `offset` prompts were done before (a resumed CLI run)."""

    def __init__(self, total: Optional[int] = None, interval: float = 0.5) -> None:
        self.total = total
        self.offset = 0
        self.interval = interval
        self.last = 0.0
        self.shown = False

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        finished = event.prompts_done >= event.prompts_total
        if now - self.last < self.interval and not finished and event.shards_done is None:
            return
        self.last = now
        total = self.total if self.total is not None else event.prompts_total
        done = self.offset + event.prompts_done if self.total is not None else event.prompts_done
        width = 24
        filled = int(width * min(done, total) / max(1, total))
        phase = "" if event.phase == "a" else f" try {event.round}"
        where = f" | worker {event.worker} ({event.node})" if event.worker is not None else ""
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} prompts{phase} | live "
                         f"{event.live_sequences:3d} | {event.generated_tokens} tokens | "
                         f"{event.tokens_per_second:6.1f} tok/s{where} ")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.shown = False


class ProgressSink:
    """What `progress=` becomes: the user's callable fed dicts, the status line, or nothing."""

    def __init__(self, progress: ProgressArg) -> None:
        self.owns_line = progress is True
        if isinstance(progress, ProgressLine):  # the caller's own line (the CLI's: it knows prompts done before)
            self.callback, self.line = None, progress
            return
        if progress is not None and not isinstance(progress, bool) and not callable(progress):
            raise TypeError("progress must be None, True/False or a callable taking a dict")
        self.callback = progress if callable(progress) and not isinstance(progress, bool) else None
        self.line = ProgressLine() if progress is True else None

    @property
    def active(self) -> bool:
        return self.callback is not None or self.line is not None

    def __call__(self, event: ProgressEvent) -> None:
        if self.callback is not None:
            self.callback(event.to_dict())
        elif self.line is not None:
            self.line(event)

    def close(self) -> None:
        """End the status line this sink drew (a caller's own line is the caller's to end)."""
        if self.line is not None and self.owns_line:
            self.line.close()
