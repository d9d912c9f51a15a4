"""Sizes that keep the package readable: no module over 400 lines, no function over 50 lines of code.

`runner/distributed.py` (610 lines, its pool's constructor 55) is exempt until the out-of-core work
replaces its hand-written Ray pool with Ray Data; splitting code that is about to go would be wasted.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "eager_cpp"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 50
EXEMPT = {"runner/distributed.py"}


def modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.relative_to(PACKAGE).as_posix() not in EXEMPT]


def code_lines(lines: list[str], node: ast.AST) -> int:
    """Lines of a function's body that hold code (its docstring, blank lines and comments not counted)."""
    body = list(node.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    start = body[0].lineno
    end = max(getattr(n, "end_lineno", None) or 0 for stmt in body for n in ast.walk(stmt))
    return sum(1 for line in lines[start - 1:end] if line.strip() and not line.strip().startswith("#"))


def long_functions(path: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    text = path.read_text()
    lines = text.splitlines()
    return [f"{path.name}:{node.lineno} {node.name} ({code_lines(lines, node)} lines)"
            for node in ast.walk(ast.parse(text))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and code_lines(lines, node) > limit]


def test_no_module_is_over_400_lines():
    long = [f"{p.relative_to(PACKAGE)} ({n} lines)" for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert long == []


def test_no_function_is_over_50_lines_of_code():
    assert [f for p in modules() for f in long_functions(p)] == []


def test_the_check_counts_code_lines(tmp_path):
    source = tmp_path / "m.py"
    body = "".join(f"    x{i} = {i}\n" for i in range(51))
    source.write_text(f'def f():\n    """Doc."""\n    # a comment\n\n{body}')
    assert long_functions(source) == ["m.py:1 f (51 lines)"]
    source.write_text(f'def f():\n    """Doc."""\n    # a comment\n\n{body[body.index(chr(10)) + 1:]}')
    assert long_functions(source) == []
