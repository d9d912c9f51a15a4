"""Shared helpers of the benchmark scripts: data, model, tables, JSON output.

Timings on the development machine are noisy (docs/method.md, "Numerical noise"): every script compares two things
measured in the same run and reports their ratio; absolute times are context, not pass/fail.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DATA_DIR = Path(os.environ.get("EAGER_CPP_DATA", Path(__file__).resolve().parents[1] / "data"))
GSM8K_FILE = DATA_DIR / "gsm8k_train_200.jsonl"
RESULTS_DIR = BENCH_DIR / "results"


def default_out(name: str) -> Path:
    return RESULTS_DIR / f"{name}.json"


def add_common_args(parser: argparse.ArgumentParser, name: str) -> None:
    parser.add_argument("--model", default=None,
                        help="path of a .gguf model (default: eager_cpp.default_model_path())")
    parser.add_argument("--data", type=Path, default=GSM8K_FILE,
                        help=f"GSM8K jsonl file with a 'prompt' field (default: {GSM8K_FILE})")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads for every engine compared (default: os.cpu_count())")
    parser.add_argument("--out", type=Path, default=default_out(name),
                        help=f"JSON file for the figures (default: {default_out(name)})")


def positive(value: str) -> int:
    v = int(value)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return v


def csv_values(parser: argparse.ArgumentParser, text: str, cast, name: str, low: float, high: float = float("inf")) -> list:
    """Comma-separated values within [low, high], or a parser error naming the flag."""
    try:
        values = [cast(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--{name} must be comma-separated numbers, got {text!r}")
    if not values or any(not (low <= v <= high) for v in values):
        parser.error(f"--{name} values must be between {low} and {high}")
    return values


def load_prompts(path: Path, n: int) -> list[dict[str, Any]]:
    """The first `n` records of a jsonl file (each must have a 'prompt')."""
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"data file not found: {path} (pass --data)")
    records: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if "prompt" not in rec:
                raise SystemExit(f"{path}: record {len(records)} has no 'prompt' field")
            records.append(rec)
            if len(records) == n:
                break
    if len(records) < n:
        raise SystemExit(f"{path} holds only {len(records)} records, {n} requested")
    return records


def model_path(arg: Optional[str]) -> str:
    import eager_cpp

    return str(arg) if arg else eager_cpp.default_model_path()


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO_DIR), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5)
        commit = out.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{commit}{'+dirty' if dirty else ''}" if commit else None
    except Exception:
        return None


def cpu_flags() -> list[str]:
    try:
        flags = set(next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split(":")[1].split())
    except (OSError, StopIteration):
        return []
    return sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"})


def environment(model: str, threads: int) -> dict[str, Any]:
    import eager_cpp

    env: dict[str, Any] = {
        "timestamp": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "n_threads": threads,
        "eager_cpp": getattr(eager_cpp, "__version__", None),
        "git_commit": git_commit(),
        "model": model,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "cpu_flags": cpu_flags(),  # llama.cpp's kernels, and so its numerical noise, follow these
    }
    try:  # not `import llama_cpp`: importing it replaces llama.cpp's log callback (verbose output)
        from importlib.metadata import version

        env["llama_cpp_python"] = version("llama_cpp_python")
    except Exception:  # pragma: no cover - optional
        env["llama_cpp_python"] = None
    return env


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 2) -> str:
    """A plain-text table; numbers right-aligned."""
    cells = [[fmt(v, digits) for v in row] for row in rows]
    raw_rows = [list(r) for r in cells]
    widths = [len(h) for h in headers]
    for r in raw_rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in raw_rows]
    return "\n".join([line, sep, *body])


def verdict(value: Optional[float], target: float, higher_is_better: bool) -> str:
    if value is None or value != value:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "meets target" if ok else "MISSES target"


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, so the file is strict JSON."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_finite(payload), f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")
    print(f"\nwrote {path}")


def engine_split(stats: Any) -> dict[str, Any]:
    """The engine's time split and step count of a RunStats, as every benchmark reports them."""
    return {
        "prefill_seconds": stats.prefill_seconds,
        "decode_seconds": stats.decode_seconds,
        "row_kernel_seconds": stats.row_kernel_seconds,
        "bookkeeping_seconds": stats.bookkeeping_seconds,
        "steps": stats.steps,
        "max_live_sequences": stats.max_live_sequences,
    }


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def warn_if_busy() -> None:
    """Timings with other CPU-heavy processes running mean little (llama.cpp's threads spin)."""
    if not hasattr(os, "getloadavg"):
        return
    load = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if load > 0.5 * cpus:
        print(f"WARNING: 1-minute load average is {load:.2f} on {cpus} CPUs; other processes will distort the "
              f"timings (the ratios less than the absolute figures).", file=sys.stderr)
