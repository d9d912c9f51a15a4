#!/usr/bin/env python
"""Driver memory as the prompts grow (issue 37): a run that keeps summaries against one that keeps results.

EAGer-adapt, M = 4, `max_new_tokens` 4 (so the work is mostly per-prompt overhead), on N prompts: the
repository's capitals prompts repeated, each with its index in front so no two are the same. For each N
two fresh processes, one after the other:
  - files: `eager-cpp run INPUT -o OUT` (phase (a) in chunks of 32, each chunk's results written and let
    go; the tries' sequences written beside them; the final file merged a prompt at a time);
  - memory: the same job as an in-memory run: `eager_cpp.run` (EAGer-init) on the same chunks of 32, every
    result kept, then the reallocation on all of them (as `eager_cpp.reallocate`, its tries in the same
    chunks as the CLI's), as a driver that holds results does.
Each reports its peak RSS (the process's, model and llama.cpp's buffers included) and wall. The files run's
output is then checked: every prompt exactly once; its totals (#S, #T, extra sequences) equal to the memory
run's, which made the same samples (same chunks). The memory run goes only at the smallest N unless
`--memory-at-every-n` (it holds every result: at 100,000 prompts it is the memory the files run saves). The
figure that counts is the growth: peak RSS at the largest N against the one before it (target <= 1.2x for
the files run), and the bytes each prompt added in between. With `--ray WORKERS` both run on
a local Ray of that many 1-thread workers (files: `eager-cpp run --ray`; memory: the same chunks through
the same driver, every result kept): the driver then holds no model, so its RSS is the driver's own.

    python benchmarks/bench_driver_memory.py                       # 1,000, 10,000, 100,000 (about 40 min on 2 cores)
    python benchmarks/bench_driver_memory.py --ns 200,2000 --out /tmp/driver_smoke.json
    python benchmarks/bench_driver_memory.py --ns 1000,4000 --ray 2 --out benchmarks/results/bench_driver_memory_ray.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _common as C

CHUNK = 32  # the CLI's default chunk when run locally

MEMORY_CHILD = r"""
import dataclasses, json, sys
import eager_cpp
from eager_cpp.core.options import RunOptions
from eager_cpp.core.results import RunResult
from eager_cpp.runner.driver import drive

data, path, m, tokens, threads, chunk = sys.argv[1:7]
m, tokens, threads, chunk = int(m), int(tokens), int(threads), int(chunk)
prompts = [json.loads(line)["prompt"] for line in open(data, encoding="utf-8")]
model = eager_cpp.Model(path, n_threads=threads)
parts = [eager_cpp.run(model, prompts[k:k + chunk], method="eager_init", max_sequences=m, max_new_tokens=tokens,
                       prompt_indices=range(k, min(k + chunk, len(prompts))))
         for k in range(0, len(prompts), chunk)]
whole = RunResult(prompts=[p for part in parts for p in part.prompts], stats=parts[0].stats, settings=parts[0].settings)
# eager_cpp.reallocate, with its tries in the same chunks as the CLI's
options = dataclasses.replace(RunOptions.from_recorded(whole.settings), method="eager_adapt").validate()
r = drive(model, options, whole.prompts, None, None, None, pending=(), stats=whole.stats, chunk_size=chunk)
print(json.dumps({"sequences": sum(p.n_sequences for p in r.prompts),
                  "generated_tokens": sum(p.generated_tokens for p in r.prompts),
                  "extras": sum(1 for p in r.prompts for s in p.sequences if s.round > 0)}))
"""


# The in-memory run on Ray: the same chunks through the same driver (so the same shards), every result kept.
MEMORY_CHILD_RAY = r"""
import json, sys
import eager_cpp
from eager_cpp.core.options import RunOptions
from eager_cpp.runner.driver import drive

data, path, m, tokens, workers, chunk = sys.argv[1:7]
prompts = [json.loads(line)["prompt"] for line in open(data, encoding="utf-8")]
options = RunOptions.create(method="eager_adapt", max_sequences=int(m), max_new_tokens=int(tokens), cluster="local",
                            workers=int(workers), threads_per_worker=1)
fresh = [eager_cpp.PromptResult(index=i, prompt=p, sequences=[], prompt_tokens=0) for i, p in enumerate(prompts)]
r = drive(path, options, fresh, None, None, None, chunk_size=int(chunk))
print(json.dumps({"sequences": sum(p.n_sequences for p in r.prompts),
                  "generated_tokens": sum(p.generated_tokens for p in r.prompts),
                  "extras": sum(1 for p in r.prompts for s in p.sequences if s.round > 0)}))
"""


def write_input(path: Path, data: Path, n: int) -> None:
    rows = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"#{i}\n{rows[i % len(rows)]['prompt']}"}) + "\n")


def measured(argv: list[str]) -> tuple[dict[str, Any], str]:
    """Runs `argv` to its end: its peak RSS (KiB, from the kernel's accounting of that child) and wall, and stdout."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed ({proc.returncode}):\n{stderr[-3000:]}")
    return {"rss_peak_kib": usage.ru_maxrss, "wall_seconds": wall}, stdout


def checked_output(path: Path, n: int) -> dict[str, Any]:
    """Totals of an `eager-cpp run` output, after checking that it holds every prompt exactly once."""
    seen, sequences, tokens, extras = set(), 0, 0, 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["index"] in seen:
                raise SystemExit(f"prompt {row['index']} written twice")
            seen.add(row["index"])
            sequences += len(row["sequences"])
            tokens += sum(len(s["own_tokens"]) for s in row["sequences"])
            extras += sum(1 for s in row["sequences"] if s["round"] > 0)
    if seen != set(range(n)):
        raise SystemExit(f"{n - len(seen)} prompts missing from {path}")
    return {"sequences": sequences, "generated_tokens": tokens, "extras": extras}


def one_size(n: int, args: argparse.Namespace, model: str, work: Path, with_memory: bool) -> dict[str, Any]:
    data, out = work / f"prompts_{n}.jsonl", work / f"out_{n}.jsonl"
    write_input(data, args.data, n)
    where = (["--ray", "--workers", str(args.ray), "--threads", "1"] if args.ray
             else ["--threads", str(args.threads)])
    files, _ = measured([sys.executable, "-m", "eager_cpp", "run", str(data), "-o", str(out), "--model", model,
                         "--method", "eager_adapt", "-M", str(args.max_sequences), "--max-new-tokens",
                         str(args.max_new_tokens), "--chunk-size", str(CHUNK), *where, "--quiet"])
    files["totals"] = checked_output(out, n)
    memory: Any = None
    if with_memory:
        child = (MEMORY_CHILD_RAY, str(args.ray)) if args.ray else (MEMORY_CHILD, str(args.threads))
        memory, stdout = measured([sys.executable, "-c", child[0], str(data), model, str(args.max_sequences),
                                   str(args.max_new_tokens), child[1], str(CHUNK)])
        memory["totals"] = json.loads(stdout.strip().splitlines()[-1])
    for path in (data, out):
        path.unlink()
    return {"n_prompts": n, "files": files, "memory": memory,
            "totals_equal": None if memory is None else files["totals"] == memory["totals"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "bench_driver_memory")
    p.add_argument("--ns", default="1000,10000,100000", help="prompt counts (default: 1000,10000,100000)")
    p.add_argument("-M", "--max-sequences", type=C.positive, default=4)
    p.add_argument("--max-new-tokens", type=C.positive, default=4)
    p.add_argument("--ray", type=C.positive, default=0, metavar="WORKERS",
                   help="run both on a local Ray with this many 1-thread workers (the driver then holds no model)")
    p.add_argument("--memory-at-every-n", action="store_true",
                   help="run the in-memory comparison at every N (default: at the smallest only)")
    p.set_defaults(data=C.DATA_DIR / "capitals_dev_100.jsonl")
    args = p.parse_args(argv)
    ns = C.csv_values(p, args.ns, int, "ns", 1, 10**8)
    C.warn_if_busy()
    model = C.model_path(args.model)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for n in ns:
            print(f"  N={n} ...", flush=True)
            rows.append(one_size(n, args, model, Path(work), args.memory_at_every_n or n == min(ns)))
    print()
    print(C.table(["prompts", "files: peak RSS MiB", "wall s", "memory: peak RSS MiB", "wall s", "#S", "#T",
                   "extras", "totals equal"],
                  [[r["n_prompts"], r["files"]["rss_peak_kib"] / 1024, r["files"]["wall_seconds"],
                    *((r["memory"]["rss_peak_kib"] / 1024, r["memory"]["wall_seconds"]) if r["memory"] else ("-", "-")),
                    r["files"]["totals"]["sequences"], r["files"]["totals"]["generated_tokens"],
                    r["files"]["totals"]["extras"], "-" if r["totals_equal"] is None else r["totals_equal"]]
                   for r in rows]))
    if len(rows) >= 2:
        for kind in ("files", "memory"):
            if rows[-1][kind] is None or rows[-2][kind] is None:
                continue
            last, before = rows[-1][kind]["rss_peak_kib"], rows[-2][kind]["rss_peak_kib"]
            growth = C.ratio(last, before)
            per_prompt = 1024 * (last - before) / (rows[-1]["n_prompts"] - rows[-2]["n_prompts"])
            print(f"  {kind}: peak RSS at N={rows[-1]['n_prompts']} / N={rows[-2]['n_prompts']}: {growth:.3f}"
                  + (f" (target <= 1.2: {C.verdict(growth, 1.2, False)})" if kind == "files" else "")
                  + f"; {per_prompt:.0f} bytes per added prompt")
    C.write_json(args.out, {"benchmark": "driver_memory", "environment": C.environment(model, args.threads),
                            "settings": {"method": "eager_adapt", "max_sequences": args.max_sequences,
                                         "max_new_tokens": args.max_new_tokens, "chunk": CHUNK,
                                         "ray_workers": args.ray or None,
                                         "data": str(args.data)},
                            "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
