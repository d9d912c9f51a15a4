#!/usr/bin/env python
"""Scale-out on Ray (issue 7): one process vs 1 and 2 Ray workers on the same prompts.

On the first N gsm8k prompts, M sequences each, three configurations in one run:
  - single: one process, `--threads` threads (default 2), the model loaded once;
  - ray x1: 1 Ray worker with 1 thread;
  - ray x2: 2 Ray workers with 1 thread each.
For each: wall seconds, generated tokens (#T) and tokens/s; for the Ray runs also each actor's model
load, each actor's seconds inside its shards, and the Ray overhead: the driver's wall minus, per
dispatch, the busiest actor's time in its shards (Ray Data starting the dispatch's actor pool, which
loads the model in each actor, the pre-check's task, scheduling, transfer of prompts and results,
driver-side gathering), as a share of the wall. Ratios compare
configurations measured in the same run (docs/method.md, "Numerical noise"); absolute times are context.

A local Ray is started once (2 logical CPUs, no dashboard) and reused by both Ray configurations.

Full size (about 20 minutes on 2 cores, mostly the 1-thread worker; --max-new-tokens 96 for about
15; run on a quiet machine):
    python benchmarks/bench_ray.py
Smoke:
    python benchmarks/bench_ray.py --prompts 8 --max-new-tokens 32 --out /tmp/bench_ray_smoke.json
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import statistics
import time
from typing import Any

import _common as C

import eager_cpp  # noqa: E402
from eager_cpp.core.results import prompt_to_dict  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "bench_ray")
    p.set_defaults(threads=2)
    p.add_argument("--prompts", type=C.positive, default=32, help="first N gsm8k prompts (default: 32)")
    p.add_argument("--max-sequences", type=C.positive, default=8, help="M (default: 8)")
    p.add_argument("--methods", default="eager_init",
                   help="comma-separated: eager_init and/or parallel (default: eager_init)")
    p.add_argument("--theta", type=float, default=2.0, help="entropy threshold θ of eager_init (default: 2.0)")
    p.add_argument("--max-new-tokens", type=C.positive, default=128, help="tokens per sequence (default: 128)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker-counts", default="1,2", help="Ray worker counts, 1 thread each (default: 1,2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed short runs per configuration (default: 1)")
    args = p.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    if not args.methods or any(m not in ("eager_init", "parallel") for m in args.methods):
        p.error("--methods takes eager_init and/or parallel")
    args.worker_counts = C.csv_values(p, args.worker_counts, int, "worker-counts", 1, 64)
    return args


def options(args: argparse.Namespace, method: str) -> dict[str, Any]:
    return dict(method=method, max_sequences=args.max_sequences, entropy_threshold=args.theta,
                temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed)


def figures(name: str, method: str, result: eager_cpp.RunResult, extra: dict[str, Any]) -> dict[str, Any]:
    s = result.stats
    row = {
        "config": name,
        "method": method,
        "wall_seconds": s.wall_seconds,
        "generated_tokens": s.generated_tokens,
        "tokens_per_second": s.tokens_per_second,
        "sequences": s.sequences,
        "mean_sequences_per_prompt": statistics.mean(p.n_sequences for p in result.prompts),
        "workers": s.workers,
        "worker_start_seconds": s.worker_start_seconds or None,
        "ray_overhead_seconds": s.ray_overhead_seconds if s.workers else None,
        "ray_overhead_share": C.ratio(s.ray_overhead_seconds, s.wall_seconds) if s.workers else None,
        "engine_seconds_summed": s.prefill_seconds + s.decode_seconds + s.row_kernel_seconds + s.bookkeeping_seconds,
        # What a worker sends back per prompt (pickled plain dicts, as the workers return them).
        "result_bytes_per_prompt": len(pickle.dumps([prompt_to_dict(p) for p in result.prompts])) / len(result.prompts),
    }
    row.update(extra)
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.warn_if_busy()
    import ray

    from eager_cpp.runner.distributed import RayWorkers

    path = C.model_path(args.model)
    records = C.load_prompts(args.data, args.prompts)
    prompts = [r["prompt"] for r in records]
    warm = prompts[:2]
    rows: list[dict[str, Any]] = []

    print(f"{len(prompts)} prompts, M={args.max_sequences}, max_new_tokens={args.max_new_tokens}, "
          f"methods {', '.join(args.methods)}; single process with {args.threads} threads vs Ray workers "
          f"{args.worker_counts} x 1 thread")

    t0 = time.perf_counter()
    model = eager_cpp.Model(path, n_threads=args.threads)
    load = time.perf_counter() - t0
    for _ in range(args.warmup):
        eager_cpp.run(model, warm, **dict(options(args, args.methods[0]), max_new_tokens=8))
    for method in args.methods:
        result = eager_cpp.run(model, prompts, **options(args, method))
        rows.append(figures(f"single {args.threads} threads", method, result, {"model_load_seconds": load}))
        print(f"  done: single, {method}: {result.stats.wall_seconds:.1f} s", flush=True)
    del model

    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=max(2, max(args.worker_counts)), include_dashboard=False,
             object_store_memory=200 * 1024 * 1024, logging_level=logging.WARNING)
    ray_start = time.perf_counter() - t0
    try:
        for n in args.worker_counts:
            with RayWorkers(path, "local", workers=n, threads_per_worker=1) as pool:
                for _ in range(args.warmup):
                    eager_cpp.run(path, warm, cluster=pool, **dict(options(args, args.methods[0]), max_new_tokens=8))
                for method in args.methods:
                    result = eager_cpp.run(path, prompts, cluster=pool, **options(args, method))
                    busy = [pool.last_busy.get(k, 0.0) for k in sorted(pool.last_busy)]
                    loads = [w["load_seconds"] for w in pool.last_workers.values()]  # each actor of the run
                    rows.append(figures(f"ray {n} x 1 thread", method, result, {
                        "ray_init_seconds": ray_start,
                        "model_load_seconds": max(loads),
                        "worker_busy_seconds": busy,
                        "worker_imbalance": C.ratio(max(busy), statistics.mean(busy)) if busy else None,
                        "shards": [len(s) for s in pool.last_shards.get("a", [])],
                    }))
                    print(f"  done: ray {n} workers, {method}: {result.stats.wall_seconds:.1f} s", flush=True)
    finally:
        ray.shutdown()

    for method in args.methods:
        base = next(r for r in rows if r["method"] == method and r["workers"] == 0)
        one = next((r for r in rows if r["method"] == method and r["workers"] == 1), None)
        for r in rows:
            if r["method"] != method:
                continue
            r["speedup_vs_single"] = C.ratio(base["wall_seconds"], r["wall_seconds"])
            r["speedup_vs_1_worker"] = C.ratio(one["wall_seconds"], r["wall_seconds"]) if one else None

    print()
    print(C.table(
        ["config", "method", "wall s", "#T", "tok/s", "#S/prompt", "start s", "overhead ms", "overhead",
         "x single", "x 1 worker"],
        [[r["config"], r["method"], r["wall_seconds"], r["generated_tokens"], r["tokens_per_second"],
          r["mean_sequences_per_prompt"], r["worker_start_seconds"],
          r["ray_overhead_seconds"] * 1000 if r["ray_overhead_seconds"] is not None else None,
          f"{r['ray_overhead_share']:.2%}" if r["ray_overhead_share"] is not None else None,
          r["speedup_vs_single"], r["speedup_vs_1_worker"]] for r in rows]))
    print(f"\nresult transfer: {statistics.mean(r['result_bytes_per_prompt'] for r in rows) / 1024:.1f} KiB per prompt "
          "(pickled dicts; token ids, own tokens and entropies of every sequence)")
    print("start s: the pool's own start, Ray being up (not in wall s; Ray itself took "
          f"{ray_start:.1f} s to start). overhead: wall minus the busiest actor's time per dispatch: the "
          "pre-check's task, Ray Data starting each dispatch's actors and their model loads, transfer, gathering.")
    for r in rows:
        if r["workers"]:
            print(f"{r['config']}, {r['method']}: worker busy seconds "
                  f"{', '.join(f'{b:.1f}' for b in r['worker_busy_seconds'])} (imbalance max/mean "
                  f"{C.fmt(r['worker_imbalance'])}), phase (a) shards of {r['shards']} prompts")

    payload = {
        "benchmark": "bench_ray",
        "environment": C.environment(path, args.threads),
        "settings": {"prompts": len(prompts), "data": str(args.data), "max_sequences": args.max_sequences,
                     "theta": args.theta, "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
                     "seed": args.seed, "methods": args.methods, "worker_counts": args.worker_counts,
                     "single_threads": args.threads, "threads_per_worker": 1, "cpu_count": os.cpu_count()},
        "rows": rows,
    }
    C.write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
