"""Do T > 0 samples survive preemption, and does the batch alone move them? (issue 40, W1)

W1's job (Full Parallel, 3 open-ended prompts x M 8 x 120 tokens, stop at a blank paragraph or "Question:", seed 0,
T 0.6, one thread) in one process, each run against the same job with memory for everything:
  - kv_memory "9MiB": the cache fills and preempts (the W1 reproducer);
  - max_live_sequences=8: nothing preempted, one prompt at a time (only the batch differs);
  - greedy (T 0) at "9MiB" against greedy at "1GiB".
Prints, for each, how many of the 24 samples are token-identical and where the others part. On CPUs whose kernels
give a row the same result whatever else is in the batch, the second comparison keeps all 24; where it does not,
no schedule that changes the batch (preemption included) can keep T > 0 samples bit-identical.

    python benchmarks/sample_identity.py [--out benchmarks/results/sample_identity.json]
"""

from __future__ import annotations

import argparse
import json
import time

import eager_cpp
from _common import environment

PROMPTS = ["Write a short story about a lighthouse keeper.\n", "Explain how rain forms, step by step.\n",
           "Describe your favourite city and why you like it.\n"]
JOB = dict(method="parallel", max_sequences=8, max_new_tokens=120, stop=["\n\n\n", "Question:"], seed=0,
           temperature=0.6, progress=None)


def samples(model, **kw):
    t = time.perf_counter()
    r = eager_cpp.run(model, PROMPTS, **{**JOB, **kw})
    return [list(s.token_ids) for p in r.prompts for s in p.sequences], r.stats, time.perf_counter() - t


def compare(a, b):
    parts = [next((i for i, (x, y) in enumerate(zip(s, t)) if x != y), None if len(s) == len(t) else min(len(s), len(t)))
             for s, t in zip(a, b)]
    return sum(p is None for p in parts), sorted(p for p in parts if p is not None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()
    path = eager_cpp.default_model_path()
    model = eager_cpp.Model(path, n_threads=1)
    cases = [("preempted (9MiB)", dict(kv_memory="9MiB"), dict(kv_memory="1GiB")),
             ("one prompt at a time", dict(kv_memory="1GiB", max_live_sequences=8), dict(kv_memory="1GiB")),
             ("greedy, preempted", dict(kv_memory="9MiB", temperature=0.0), dict(kv_memory="1GiB", temperature=0.0))]
    rows = []
    for name, kw, ref_kw in cases:
        got, stats, wall = samples(model, **kw)
        ref, _, _ = samples(model, **ref_kw)
        same, parts = compare(got, ref)
        rows.append(dict(case=name, identical=same, samples=len(got), part_at=parts, preemptions=stats.preemptions,
                         recomputed=stats.recomputed_tokens, layout=stats.kv_layout, wall_s=round(wall, 1)))
        print(f"{name:22s} {same:2d} of {len(got)} identical; others part at {parts}; "
              f"{stats.preemptions} preemptions, {stats.recomputed_tokens} tokens recomputed ({stats.kv_layout})",
              flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"environment": environment(path, 1), "job": {**JOB, "prompts": PROMPTS}, "runs": rows}, f, indent=1)
        print("wrote", args.out)


if __name__ == "__main__":
    main()
