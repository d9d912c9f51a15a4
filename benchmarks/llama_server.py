#!/usr/bin/env python
"""llama-server, the peer a llama.cpp user picks for many samples per prompt: built once, started, driven.

Build (once, about 20 minutes on 2 cores; cached under build/llama-server/):
    python benchmarks/llama_server.py build
It compiles `llama-server` from the llama.cpp sources inside the pinned llama-cpp-python sdist (the same
sources eager_cpp links), Release, shared libraries, GGML_NATIVE like pip's build, with the AMX guard of
eager_cpp's default (`-mno-amx-*`: the pinned AMX matmul dies with SIGILL; every other extra buffer type,
CPU_REPACK included, stays), no curl, no web UI download.

Use from a benchmark:
    with LlamaServer(model_path, slots=32, threads=2) as server:
        out = server.complete_all(prompts, n_cmpl=8, max_tokens=128, temperature=0.6, seed=0)
`complete_all` sends one `n_cmpl` request per prompt, all in flight at once, and returns the completions
and the wall time from the first request to the last answer.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

REPO_DIR = Path(__file__).resolve().parents[1]
BUILD_ROOT = REPO_DIR / "build" / "llama-server"
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
AMX_GUARD_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"


def binary_path(root: Path = BUILD_ROOT) -> Path:
    return root / "cmake" / "bin" / "llama-server"


def _source_dir(root: Path) -> Path:
    return root / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"


def fetch_sources(root: Path = BUILD_ROOT, sdist: Optional[Path] = None) -> Path:
    """The llama.cpp sources of the pinned sdist under root/src (downloaded by pip unless `sdist` is given)."""
    src = _source_dir(root)
    if (src / "CMakeLists.txt").exists():
        return src
    (root / "src").mkdir(parents=True, exist_ok=True)
    if sdist is None:
        dl = root / "sdist"
        dl.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(dl)], check=True)
        found = sorted(dl.glob(f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"))
        if not found:
            raise SystemExit(f"pip download left no sdist in {dl}")
        sdist = found[0]
    with tarfile.open(sdist) as tar:
        tar.extractall(root / "src", filter="data")
    if not (src / "CMakeLists.txt").exists():
        raise SystemExit(f"{sdist} holds no vendor/llama.cpp")
    return src


def build(root: Path = BUILD_ROOT, jobs: int = os.cpu_count() or 1, sdist: Optional[Path] = None) -> Path:
    """Configure and build llama-server; returns the binary's path. A finished build is reused."""
    binary = binary_path(root)
    if binary.exists():
        return binary
    src = fetch_sources(root, sdist)
    cmake_dir = root / "cmake"
    configure = [
        "cmake", "-S", str(src), "-B", str(cmake_dir), "-G", "Ninja" if shutil.which("ninja") else "Unix Makefiles",
        "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=ON",
        f"-DCMAKE_C_FLAGS={AMX_GUARD_FLAGS}", f"-DCMAKE_CXX_FLAGS={AMX_GUARD_FLAGS}",
        "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON",
        "-DLLAMA_BUILD_SERVER=ON",
    ]
    subprocess.run(configure, check=True)
    subprocess.run(["cmake", "--build", str(cmake_dir), "--target", "llama-server", "-j", str(jobs)], check=True)
    if not binary.exists():
        raise SystemExit(f"the build finished without {binary}")
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """A llama-server process on 127.0.0.1: unified KV, `slots` parallel slots, continuous batching."""

    def __init__(self, model_path: str, *, slots: int = 32, threads: int = os.cpu_count() or 1,
                 n_ctx: int = 0, binary: Optional[Path] = None, log: Optional[Path] = None,
                 startup_timeout_s: float = 300.0) -> None:
        self.binary = Path(binary) if binary else binary_path()
        if not self.binary.exists():
            raise SystemExit(f"{self.binary} not built: run `python benchmarks/llama_server.py build` first")
        self.model_path = model_path
        self.slots = slots
        self.threads = threads
        self.n_ctx = n_ctx
        self.log = log
        self.startup_timeout_s = startup_timeout_s
        self.port = 0
        self._proc: Optional[subprocess.Popen] = None
        self._log_file = None

    def command(self) -> list[str]:
        # n_ctx is the unified pool every slot shares (-kvu); 0 lets the caller size it.
        return [str(self.binary), "-m", self.model_path, "--host", "127.0.0.1", "--port", str(self.port),
                "-np", str(self.slots), "-kvu", "-cb", "-t", str(self.threads), "-tb", str(self.threads),
                "-c", str(self.n_ctx), "--no-warmup", "--no-webui", "-ngl", "0"]

    def __enter__(self) -> "LlamaServer":
        self.port = _free_port()
        self._log_file = open(self.log, "w") if self.log else subprocess.DEVNULL
        self._proc = subprocess.Popen(self.command(), stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self._proc.returncode} while starting"
                                   + (f" (log: {self.log})" if self.log else ""))
            try:
                status, _ = self._request("GET", "/health", None, timeout=2)
                if status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.25)
        self.__exit__(None, None, None)
        raise RuntimeError(f"llama-server did not answer /health within {self.startup_timeout_s:.0f} s")

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._log_file not in (None, subprocess.DEVNULL):
            self._log_file.close()
        self._log_file = None

    def _request(self, method: str, path: str, body: Optional[dict], timeout: float) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            payload = json.dumps(body) if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, json.loads(data) if data else None
        finally:
            conn.close()

    def complete(self, prompt: str, *, n_cmpl: int, max_tokens: int, temperature: float, seed: int,
                 ignore_eos: bool = False, timeout_s: float = 3600.0) -> list[dict[str, Any]]:
        """`n_cmpl` completions of one prompt (one request); each a dict with 'content' and 'tokens_predicted'.
        ignore_eos: every completion runs to max_tokens (fixed-length benchmarks)."""
        body = {"prompt": prompt, "n_predict": max_tokens, "n_cmpl": n_cmpl, "temperature": temperature,
                "seed": seed, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "cache_prompt": True,
                "ignore_eos": ignore_eos}
        status, data = self._request("POST", "/completion", body, timeout=timeout_s)
        if status != 200:
            raise RuntimeError(f"llama-server answered {status}: {data}")
        items = data if isinstance(data, list) else [data]
        return [{"content": d.get("content", ""), "tokens_predicted": int(d.get("tokens_predicted", 0)),
                 "stop_type": d.get("stop_type")} for d in items]

    def complete_all(self, prompts: Sequence[str], *, n_cmpl: int, max_tokens: int, temperature: float,
                     seed: int, ignore_eos: bool = False) -> dict[str, Any]:
        """Every prompt's request in flight at once; returns completions per prompt, tokens and wall."""
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(prompts))) as pool:
            futures = [pool.submit(self.complete, p, n_cmpl=n_cmpl, max_tokens=max_tokens,
                                   temperature=temperature, seed=seed + i, ignore_eos=ignore_eos)
                       for i, p in enumerate(prompts)]
            completions = [f.result() for f in futures]
        wall = time.perf_counter() - t0
        tokens = sum(c["tokens_predicted"] for per in completions for c in per)
        return {"completions": completions, "tokens": tokens, "wall_s": wall,
                "tokens_per_s": tokens / wall if wall > 0 else 0.0,
                "sequences": sum(len(per) for per in completions)}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build llama-server under build/llama-server (reused once built)")
    b.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    b.add_argument("--sdist", type=Path, default=None, help="a llama-cpp-python sdist to use instead of pip download")
    s = sub.add_parser("smoke", help="start the built server on the default model and ask for 2 completions")
    s.add_argument("--model", default=None)
    args = p.parse_args(argv)
    if args.command == "build":
        print(build(jobs=args.jobs, sdist=args.sdist))
        return 0
    model = args.model
    if model is None:
        import eager_cpp
        model = eager_cpp.default_model_path()
    with LlamaServer(model, slots=2, threads=os.cpu_count() or 1, n_ctx=1024) as server:
        out = server.complete_all(["Country: Peru\nCapital:"], n_cmpl=2, max_tokens=8, temperature=0.6, seed=0)
    print(json.dumps({k: v for k, v in out.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
