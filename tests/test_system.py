"""The CPU buffer guard (no weights in AMX unless asked) and the system report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import eager_cpp
from eager_cpp import _core
from eager_cpp.engine.system import (
    GUARDED_BUFFERS_ENV,
    guarded_cpu_buffers,
    machine_cpu_buffer_plan,
    plan_cpu_buffers,
    resolve_cpu_buffers,
)

from conftest import CAPITAL_PROMPTS, write_gguf

# ---------------------------------------------------------------------------- the decision, pure


def test_safe_keeps_every_type_but_amx():
    plan = plan_cpu_buffers(["AMX", "CPU_REPACK"], "safe")
    assert plan.use_extra_bufts
    assert list(plan.keep) == ["CPU_REPACK"]
    assert list(plan.dropped) == ["AMX"]


def test_all_keeps_amx_and_none_keeps_nothing():
    plan = plan_cpu_buffers(["AMX", "CPU_REPACK"], "all")
    assert plan.use_extra_bufts and list(plan.keep) == ["AMX", "CPU_REPACK"] and not plan.dropped
    plan = plan_cpu_buffers(["AMX", "CPU_REPACK"], "none")
    assert not plan.use_extra_bufts and not plan.keep and list(plan.dropped) == ["AMX", "CPU_REPACK"]


def test_without_amx_safe_changes_nothing():
    plan = plan_cpu_buffers(["CPU_REPACK"], "safe")
    assert plan.use_extra_bufts and list(plan.keep) == ["CPU_REPACK"] and not plan.dropped


def test_only_amx_offered_falls_back_to_no_extra_types():
    # Nothing left to keep: llama.cpp's own switch (use_extra_bufts = false) says the same.
    plan = plan_cpu_buffers(["AMX"], "safe")
    assert not plan.use_extra_bufts and not plan.keep and list(plan.dropped) == ["AMX"]


def test_guarded_names_are_a_parameter():
    plan = plan_cpu_buffers(["AMX", "KLEIDIAI", "CPU_REPACK"], "safe", guarded=["CPU_REPACK"])
    assert list(plan.keep) == ["AMX", "KLEIDIAI"] and list(plan.dropped) == ["CPU_REPACK"]


def test_choice_comes_from_argument_then_environment(monkeypatch):
    monkeypatch.delenv("EAGER_CPP_CPU_BUFFERS", raising=False)
    assert resolve_cpu_buffers() == "safe"
    monkeypatch.setenv("EAGER_CPP_CPU_BUFFERS", "ALL")
    assert resolve_cpu_buffers() == "all"
    assert resolve_cpu_buffers("none") == "none"
    monkeypatch.setenv("EAGER_CPP_CPU_BUFFERS", "amx")
    with pytest.raises(ValueError, match="EAGER_CPP_CPU_BUFFERS must be one of safe, all, none"):
        resolve_cpu_buffers()
    with pytest.raises(ValueError, match="cpu_buffers must be one of"):
        resolve_cpu_buffers("fast")


def test_guarded_buffers_from_environment(monkeypatch):
    monkeypatch.delenv(GUARDED_BUFFERS_ENV, raising=False)
    assert guarded_cpu_buffers() == ["AMX"]
    monkeypatch.setenv(GUARDED_BUFFERS_ENV, "AMX, CPU_REPACK")
    assert guarded_cpu_buffers() == ["AMX", "CPU_REPACK"]


def test_bad_choice_is_a_clear_error_before_loading(model_path):
    with pytest.raises(ValueError, match="cpu_buffers must be one of"):
        eager_cpp.Model(model_path, cpu_buffers="amx")


# ---------------------------------------------------------------------------- the load path


def _buffer_names(model: eager_cpp.Model) -> set[str]:
    return {name for name, _ in model.weight_buffers}


def test_default_load_keeps_weights_out_of_amx(model):
    # On a CPU that reports AMX this is the guard at work; elsewhere AMX is not offered at all.
    assert "AMX" not in _buffer_names(model)
    assert "AMX" not in model.cpu_buffer_plan.keep
    assert model.weight_buffers and all(mib > 0 for _, mib in model.weight_buffers)


def test_forced_guard_keeps_weights_out_of_a_guarded_type(model_path, model, monkeypatch):
    """The guarded load path on every machine: guard CPU_REPACK as AMX is guarded where it is offered."""
    if "CPU_REPACK" not in _core.offered_cpu_buffers():
        pytest.skip("llama.cpp's CPU backend offers no CPU_REPACK buffer type on this machine")
    if "CPU_REPACK" not in _buffer_names(model):
        pytest.skip("the default model puts no weights in CPU_REPACK on this machine")
    monkeypatch.setenv(GUARDED_BUFFERS_ENV, "AMX,CPU_REPACK")
    guarded = eager_cpp.Model(model_path, n_threads=2)
    assert "CPU_REPACK" in guarded.cpu_buffer_plan.dropped
    assert not {"CPU_REPACK", "AMX"} & _buffer_names(guarded)
    # The weights moved to the plain CPU buffer and the model still answers as the default load does
    # (the answer token only: later near-ties may flip with the other matmul's rounding).
    kwargs = dict(method="parallel", max_sequences=1, temperature=0.0, max_new_tokens=1)
    a = eager_cpp.run(guarded, CAPITAL_PROMPTS, **kwargs)
    b = eager_cpp.run(model, CAPITAL_PROMPTS, **kwargs)
    assert [p.sequences[0].text for p in a.prompts] == [p.sequences[0].text for p in b.prompts]
    # The scope restored the process-wide list: a later default load uses CPU_REPACK again.
    monkeypatch.delenv(GUARDED_BUFFERS_ENV)
    assert "CPU_REPACK" in _core.offered_cpu_buffers()
    assert "CPU_REPACK" in _buffer_names(eager_cpp.Model(model_path, n_threads=2))


def test_none_loads_without_extra_types(model_path):
    m = eager_cpp.Model(model_path, n_threads=2, cpu_buffers="none")
    assert not m.cpu_buffer_plan.use_extra_bufts
    assert _buffer_names(m) <= {"CPU", "CPU_Mapped"}


@pytest.mark.skipif("AMX" not in _core.offered_cpu_buffers(), reason="this CPU is offered no AMX buffer type")
def test_amx_is_what_the_guard_removes(model_path):
    # Loading only (no decode: decoding with AMX weights is what crashes on some of these CPUs).
    m = eager_cpp.Model(model_path, n_threads=2, cpu_buffers="all")
    assert "AMX" in _buffer_names(m)


def test_llama_cpp_reference_generates_under_the_guard(model_path):
    pytest.importorskip("llama_cpp")
    # A subprocess: on a CPU whose AMX faults, an unguarded reference would end the process with SIGILL.
    code = (
        "import eager_cpp, sys\n"
        f"llm = eager_cpp.llama_cpp_reference({model_path!r}, n_ctx=256, n_threads=2, verbose=False)\n"
        "out = llm('Country: Peru\\nCapital:', max_tokens=3, temperature=0.0)\n"
        "print(out['choices'][0]['text'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Lima" in proc.stdout


# ---------------------------------------------------------------------------- the report


def test_system_info_reports_build_cpu_and_buffers(model):
    info = eager_cpp.system_info(model)
    assert info["llama_cpp_python"] == "0.3.36"
    assert "CPU" in info["llama_cpp_features"]
    assert any(d["type"] == "cpu" for d in info["devices"])
    assert info["default_threads"] >= 1
    assert info["cpu_extra_buffers_offered"] == list(_core.offered_cpu_buffers())
    plan = machine_cpu_buffer_plan()
    assert info["cpu_buffers_kept"] == list(plan.keep)
    assert info["amx_guard_active"] == ("AMX" in info["cpu_extra_buffers_offered"])
    assert info["model_weight_buffers"] and all("MiB" in b for b in info["model_weight_buffers"])
    if "amx_int8" in info["cpu_flags"] and "AMX_INT8 = 1" in info["llama_cpp_features"]:
        assert info["amx_guard_active"]


def test_info_command_prints_the_report(model_path):
    proc = subprocess.run([sys.executable, "-m", "eager_cpp.cli", "info", "--model", model_path, "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout)
    assert info["model"] == model_path
    assert "AMX" not in " ".join(info["model_weight_buffers"])
    text = subprocess.run([sys.executable, "-m", "eager_cpp.cli", "info", "--no-model"], capture_output=True,
                          text=True, timeout=300)
    assert text.returncode == 0 and "amx_guard_active" in text.stdout and "llama_cpp_features" in text.stdout


def test_a_load_inside_a_buffer_scope_on_the_same_thread_raises_instead_of_waiting(model_path):
    with _core.CpuBufferScope(list(_core.offered_cpu_buffers())):
        with pytest.raises(RuntimeError, match="inside a CPU buffer scope on the same thread"):
            eager_cpp.Model(model_path, n_threads=2)
        assert _core.offered_cpu_buffers()  # answered without waiting for the scope
    assert eager_cpp.Model(model_path, n_threads=2).weight_buffers


def test_info_on_a_model_llama_cpp_refuses_is_one_line(tmp_path):
    path = write_gguf(tmp_path / "empty.gguf")
    proc = subprocess.run([sys.executable, "-m", "eager_cpp.cli", "info", "--model", str(path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "could not load" in proc.stderr and "Traceback" not in proc.stderr


def test_no_devnull_left_open_at_exit_after_llama_cpp_is_imported():
    """llama-cpp-python opens os.devnull twice at import and never closes it; eager_cpp closes both at
    exit, so a test session or benchmark ends without `ResourceWarning: unclosed file '/dev/null'`."""
    pytest.importorskip("llama_cpp")
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-X", "dev", "-W", "always::ResourceWarning", "-c",
                           "import llama_cpp, eager_cpp"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "unclosed file" not in proc.stderr, proc.stderr


# ---------------------------------------------------------------------------- OpenMP's wait at llama.cpp's barriers

SPIN_PROBE = """
import os
def gomp_loaded():
    return any("libgomp" in line for line in open("/proc/self/maps"))
before = gomp_loaded()
import eager_cpp
print(before, gomp_loaded(), os.environ.get("GOMP_SPINCOUNT"), os.environ.get("OMP_WAIT_POLICY"))
"""


@pytest.mark.parametrize("preset, expected", [
    ({}, "False True 1000 None"),  # set before llama.cpp (and libgomp, which reads it once) is loaded
    ({"GOMP_SPINCOUNT": "5"}, "False True 5 None"),  # the user's own setting wins
    ({"OMP_WAIT_POLICY": "passive"}, "False True None passive"),
])
def test_importing_eager_cpp_sets_a_short_openmp_spin_unless_the_environment_chose(preset, expected):
    # libgomp spins ~300,000 times before sleeping at each barrier; beside another process on the same cores that
    # cost two processes 0.60 of their throughput (benchmarks/bench_shared_cores.py).
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(preset)
    out = subprocess.run([sys.executable, "-c", SPIN_PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[-2] == expected
