#!/usr/bin/env python
"""Cost as the work grows: N short capitals-style prompts (M = 8, 16 tokens, stop at a newline).

For each N (default 100, 1,000, 10,000) one fresh process loads the model and runs all N prompts
in one `eager_cpp.run`: tokens/s, peak RSS (and its growth over the loaded model), the Python-side
share of the wall time (wall minus the engine's prefill, decode, row kernel and bookkeeping), and the
bytes of the results as JSON per generated token. The ratios against the smallest N are what count:
tokens/s should stay flat and RSS grow no faster than the results.

    python benchmarks/bench_scale.py                 # 100, 1,000, 10,000 (the last takes ~45 min on 2 cores)
    python benchmarks/bench_scale.py --ns 100,1000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

import _common as C

CHILD = r"""
import json, resource, sys, time
import eager_cpp

n, method, m, tokens, threads, path, data = sys.argv[1:8]
n, m, tokens, threads = int(n), int(m), int(tokens), int(threads)
rows = [json.loads(line) for line in open(data, encoding="utf-8") if line.strip()]
prompts = [rows[i % len(rows)]["prompt"] for i in range(n)]
model = eager_cpp.Model(path, n_threads=threads)
rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
r = eager_cpp.run(model, prompts, method=method, max_sequences=m, max_new_tokens=tokens, stop="\n",
                  entropy_threshold=1.0, seed=0)
wall = time.perf_counter() - t0
s = r.stats
engine = s.prefill_seconds + s.decode_seconds + s.row_kernel_seconds + s.bookkeeping_seconds
result_bytes = sum(len(json.dumps(eager_cpp.core.results.prompt_to_dict(p))) for p in r.prompts)
print(json.dumps({
    "n_prompts": n, "wall_seconds": wall, "engine_seconds": engine, "prefill_seconds": s.prefill_seconds,
    "generated_tokens": s.generated_tokens, "prompt_tokens": s.prompt_tokens, "sequences": s.sequences,
    "tokens_per_second": s.generated_tokens / wall, "python_share": max(0.0, wall - engine) / wall,
    "python_ms_per_prompt": 1000 * max(0.0, wall - engine) / n,
    "rss_loaded_kib": rss_loaded, "rss_peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    "result_bytes": result_bytes, "result_bytes_per_token": result_bytes / max(1, s.generated_tokens),
}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "bench_scale")
    p.add_argument("--ns", default="100,1000,10000", help="prompt counts (default: 100,1000,10000)")
    p.add_argument("--method", default="parallel", choices=("parallel", "eager_init"))
    p.add_argument("-M", "--max-sequences", type=C.positive, default=8)
    p.add_argument("--max-new-tokens", type=C.positive, default=16)
    p.set_defaults(data=C.DATA_DIR / "capitals_dev_100.jsonl")
    args = p.parse_args(argv)
    ns = C.csv_values(p, args.ns, int, "ns", 1, 10**7)
    C.warn_if_busy()
    path = C.model_path(args.model)
    rows: list[dict[str, Any]] = []
    for n in ns:
        print(f"  N={n} ...", flush=True)
        proc = subprocess.run([sys.executable, "-c", CHILD, str(n), args.method, str(args.max_sequences),
                               str(args.max_new_tokens), str(args.threads), path, str(args.data)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"N={n} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = rows[0]
    for r in rows:
        r["tokens_per_second_ratio"] = C.ratio(r["tokens_per_second"], base["tokens_per_second"])
        grown = r["rss_peak_kib"] - r["rss_loaded_kib"]
        r["rss_growth_kib"] = grown
        r["rss_growth_bytes_per_token"] = 1024 * grown / max(1, r["generated_tokens"])
    print()
    print(C.table(["prompts", "tokens", "tok/s", "vs first", "python %", "py ms/prompt", "RSS MiB",
                   "RSS growth B/token", "result B/token"],
                  [[r["n_prompts"], r["generated_tokens"], r["tokens_per_second"], r["tokens_per_second_ratio"],
                    100 * r["python_share"], r["python_ms_per_prompt"], r["rss_peak_kib"] / 1024,
                    r["rss_growth_bytes_per_token"], r["result_bytes_per_token"]] for r in rows]))
    worst = min(r["tokens_per_second_ratio"] for r in rows)
    print(f"\n  lowest tokens/s vs N={base['n_prompts']}: {worst:.3f} (target >= 0.9: {C.verdict(worst, 0.9, True)})")
    C.write_json(args.out, {"benchmark": "scale", "environment": C.environment(path, args.threads),
                            "settings": {"method": args.method, "max_sequences": args.max_sequences,
                                         "max_new_tokens": args.max_new_tokens, "stop": "\\n",
                                         "data": str(args.data)},
                            "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
