"""`_core.pyi` matches the extension it describes: every public name, and every class's members."""

from __future__ import annotations

import ast
from pathlib import Path

from eager_cpp import _core

STUB = Path(__file__).resolve().parents[1] / "python" / "eager_cpp" / "_core.pyi"
ONLY_IN_STUB = {"_Policies"}  # the type of _core.policies, a submodule: a stub-only name
CUDA_ONLY = {"cuda_topk_entropy"}  # bound only in a build with CUDA


def stub_names(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    out: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = node
        elif isinstance(node, ast.Assign):
            out.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
    return out


def public(obj: object) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


def test_the_stub_names_what_the_module_has():
    stub = stub_names(ast.parse(STUB.read_text()).body)
    real = public(_core)
    assert real - set(stub) == set(), "bound but missing from _core.pyi"
    extra = set(stub) - real - ONLY_IN_STUB - ({"cuda_topk_entropy"} if not hasattr(_core, "cuda_topk_entropy")
                                                else set())
    assert extra == set(), "in _core.pyi but not bound"


def test_each_stub_class_has_the_classs_members():
    stub = stub_names(ast.parse(STUB.read_text()).body)
    for name, node in stub.items():
        if not isinstance(node, ast.ClassDef) or name in ONLY_IN_STUB:
            continue
        cls = getattr(_core, name)
        members = set(stub_names(node.body)) - {"__init__", "__enter__", "__exit__"}
        inherited = set().union(*(public(b) for b in cls.__mro__[1:]))
        own = public(cls) - inherited if not isinstance(cls, type) or not hasattr(cls, "__members__") else \
            set(cls.__members__)
        assert own - members == set(), f"{name}: bound but missing from _core.pyi"
        assert members - public(cls) == set(), f"{name}: in _core.pyi but not bound"
