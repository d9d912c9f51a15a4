#!/usr/bin/env python
"""Device path vs host path (issue: GPU path), on whatever backend runs the model.

For each number of live sequences n (default 1, 8, 32, 64, 128, 256) and each method (Full
Parallel: M = min(8, n) samples per prompt; EAGer-init: M = 8, theta = 2.0), one engine run with
max_live_sequences = n and ignore_eos (fixed lengths), twice: with the top-K and entropy selected
in the model's graph (device path, `device_topk=True`, C = 1024 candidates leave the device) and
on the host kernel (the whole logits row leaves the device). Reported per run: decode tokens/s,
the share of a step spent in the entropy/sampling kernel ((row kernel) / (decode + row kernel +
bookkeeping)), the largest probability mass the device path left out, and the ratio device/host.

With a CUDA build of eager_cpp (-DEAGER_CPP_CUDA=ON) and a GPU, it also times the CUDA top-K
entropy kernel per row on the model's vocabulary: the alternative to the in-graph top-K.

On an H200 (benchmarks/device/h200.sh runs it):
    python benchmarks/bench_device.py --gpu-layers -1
Smoke test on the CPU:
    python benchmarks/bench_device.py --ns 1,4 --tokens 8 --gpu-layers 0
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np

import _common as C

import eager_cpp  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "bench_device")
    p.add_argument("--gpu-layers", type=int, default=-1, help="layers offloaded (default: -1, all)")
    p.add_argument("--ns", default="1,8,32,64,128,256", help="live sequences (default: 1,8,32,64,128,256)")
    p.add_argument("--tokens", type=C.positive, default=64, help="new tokens per sequence (default: 64)")
    p.add_argument("--candidates", type=C.positive, default=1024, help="device_candidates (default: 1024)")
    p.add_argument("--theta", type=float, default=2.0, help="EAGer-init threshold (default: 2.0)")
    p.add_argument("--kernel-rows", type=C.positive, default=256, help="rows for the CUDA kernel timing")
    args = p.parse_args(argv)
    args.ns = C.csv_values(p, args.ns, int, "ns", 1, 256)
    return args


def engine_run(model, prompts: list[str], method: str, n: int, args, device: bool) -> dict[str, Any]:
    m = min(8, n) if method == "parallel" else 8
    t0 = time.perf_counter()
    r = eager_cpp.run(model, prompts, method=method, max_sequences=m, entropy_threshold=args.theta,
                      temperature=0.6, max_new_tokens=args.tokens, ignore_eos=True, think_end_marker=None,
                      max_live_sequences=n, device_topk=device, device_candidates=args.candidates,
                      record_entropies=False)
    wall = time.perf_counter() - t0
    s = r.stats
    step = s.decode_seconds + s.row_kernel_seconds + s.bookkeeping_seconds
    return {
        "path": "device" if device else "host", "method": method, "live": n, "max_sequences": m,
        "prompts": len(prompts), "sequences": s.sequences, "tokens": s.generated_tokens, "wall_s": wall,
        "decode_tok_s": s.generated_tokens / step if step > 0 else float("nan"),
        "entropy_share": s.row_kernel_seconds / step if step > 0 else float("nan"),
        "max_live": s.max_live_sequences, "dropped_mass_max": s.device_dropped_mass_max,
    }


def cuda_kernel_timing(model, rows: int) -> dict[str, Any]:
    ok, why = eager_cpp.engine.kernels.cuda_available()
    if not ok:
        return {"available": False, "reason": why}
    logits = np.random.default_rng(0).normal(0, 3, size=(rows, model.n_vocab)).astype(np.float32)
    eager_cpp._core.cuda_topk_entropy(logits[:2], 20, 1.0)  # warm-up: context creation
    times = [eager_cpp._core.cuda_topk_entropy(logits, 20, 1.0)[3] for _ in range(5)]
    best = min(times)
    return {"available": True, "rows": rows, "kernel_ms": best, "us_per_row": 1000 * best / rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = C.model_path(args.model)
    model = eager_cpp.Model(path, n_threads=args.threads, n_gpu_layers=args.gpu_layers)
    print(f"model {path}; offloaded to a GPU: {model.offloaded}")
    pool = [r["prompt"] for r in C.load_prompts(args.data, 64)]
    runs = []
    for n in args.ns:
        for method in ("parallel", "eager_init"):
            # Two waves of prompts at the live target: parallel needs n / M prompts a wave.
            per_wave = max(1, math.ceil(n / min(8, n))) if method == "parallel" else max(1, math.ceil(n / 4))
            prompts = [pool[i % len(pool)] for i in range(2 * per_wave)]
            pair = [engine_run(model, prompts, method, n, args, device) for device in (True, False)]
            pair[0]["device_over_host"] = C.ratio(pair[0]["decode_tok_s"], pair[1]["decode_tok_s"])
            runs += pair
            print(f"n={n:3d} {method:10s} device {pair[0]['decode_tok_s']:9.1f} tok/s "
                  f"(entropy {100 * pair[0]['entropy_share']:.2f}%)  host {pair[1]['decode_tok_s']:9.1f} tok/s "
                  f"(entropy {100 * pair[1]['entropy_share']:.2f}%)  device/host {pair[0]['device_over_host']:.2f}",
                  flush=True)
    headers = ["path", "method", "live", "seqs", "tokens", "decode tok/s", "entropy %", "dropped mass", "dev/host"]
    print()
    print(C.table(headers, [[r["path"], r["method"], r["live"], r["sequences"], r["tokens"], r["decode_tok_s"],
                             100 * r["entropy_share"], r["dropped_mass_max"], r.get("device_over_host")]
                            for r in runs], digits=3))
    kernel = cuda_kernel_timing(model, args.kernel_rows)
    print("\nCUDA top-K entropy kernel:", kernel)
    C.write_json(args.out, {"environment": C.environment(path, args.threads), "gpu_layers": args.gpu_layers,
                            "offloaded": model.offloaded, "runs": runs, "cuda_kernel": kernel,
                            "settings": {"tokens": args.tokens, "candidates": args.candidates, "theta": args.theta}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
