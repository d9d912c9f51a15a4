"""The documentation's examples run, and its relative links point at files and headings that exist.

Every fenced ```python block of README.md and docs/*.md is run as its own script, in a fresh
interpreter, from the repository root, with a timeout; it must exit with code 0. A block that cannot
run here (a Ray cluster, a GPU, placeholders such as `path` or `prompts`) says so on the line right
before its fence:

    <!-- not run: the reason -->

and is reported as skipped with that reason. Nothing else is skipped: a block without the marker that
raises fails the test, so a stale example cannot hide.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>\S.*?)\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<ticks>```+)(?P<info>.*)$")
TIMEOUT_S = 60


@dataclass(frozen=True)
class Block:
    page: Path
    line: int              # 1-based line of the opening fence
    lang: str
    code: str
    not_run: Optional[str]  # the reason from the marker, or None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fenced_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        ticks, lang = m["ticks"], m["info"].strip().split(" ")[0].lower()
        end = i + 1
        while end < len(lines) and lines[end].strip() != ticks:
            end += 1
        if end == len(lines):
            raise AssertionError(f"{page.relative_to(ROOT)}:{i + 1}: unclosed code fence")
        prev = lines[i - 1].strip() if i > 0 else ""
        marker = NOT_RUN.match(prev)
        blocks.append(Block(page, i + 1, lang, "\n".join(lines[i + 1:end]) + "\n",
                            marker["reason"] if marker else None))
        i = end + 1
    return blocks


PYTHON_BLOCKS = [b for page in PAGES for b in fenced_blocks(page) if b.lang in ("python", "py")]


def test_there_are_examples_to_run() -> None:
    runnable = [b for b in PYTHON_BLOCKS if b.not_run is None]
    assert any(b.page.name == "README.md" for b in runnable), "README.md's Python example is not run"
    assert len(runnable) >= 3, [b.id for b in PYTHON_BLOCKS]


def test_not_run_markers_sit_on_python_blocks() -> None:
    """A marker that precedes no Python block (a typo, a moved block) would silently stop skipping."""
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        starts = {b.line for b in fenced_blocks(page) if b.lang in ("python", "py")}
        for n, text in enumerate(lines, 1):
            if "not run" in text and "<!--" in text:
                assert NOT_RUN.match(text.strip()), f"{page.relative_to(ROOT)}:{n}: malformed marker {text!r}"
                assert n + 1 in starts, f"{page.relative_to(ROOT)}:{n}: the marker is not right before a ```python fence"


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=[b.id for b in PYTHON_BLOCKS])
def test_python_example_runs(block: Block, tmp_path: Path) -> None:
    if block.not_run is not None:
        pytest.skip(f"{block.id}: not run: {block.not_run}")
    script = tmp_path / "example.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg")
    try:
        proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id}: the example ran past {TIMEOUT_S} s; shrink its arguments in the docs")
    assert proc.returncode == 0, (f"{block.id}: exit code {proc.returncode}\n--- code ---\n{block.code}"
                                  f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")


# Relative links and images: the file exists, and a #fragment names a heading of that page.

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """GitHub's heading id: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, seen, in_code = set(), {}, False
    for line in page.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_code = not in_code
            continue
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m and not in_code:
            base = github_anchor(m[1])
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def test_relative_links_resolve() -> None:
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"^[a-z]+:", target):
                continue                                   # http(s), mailto: not checked here
            path, _, fragment = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
