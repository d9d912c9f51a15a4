#!/usr/bin/env python
"""EAGer-init vs Full Parallel (issue: EAGer-init vs Full Parallel).

On the first N gsm8k prompts, with one loaded model: one Full Parallel run (M samples per prompt),
then one EAGer-init run per entropy threshold θ. For each run: generated tokens (#T, a shared
prefix counted once), mean sequences per prompt, wall seconds, and each as a ratio to Full
Parallel. Targets at θ = 2.5: tokens <= 0.6x, wall <= 0.75x, mean sequences >= 2.

Full size:
    python benchmarks/bench_eager.py
Smoke:
    python benchmarks/bench_eager.py --prompts 2 --max-new-tokens 8 --thetas 2.5
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from typing import Any

import _common as C

import eager_cpp  # noqa: E402

TARGET_THETA = 2.5
TARGET_TOKENS = 0.6
TARGET_WALL = 0.75
TARGET_SEQUENCES = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "bench_eager")
    p.add_argument("--prompts", type=C.positive, default=32, help="first N gsm8k prompts (default: 32)")
    p.add_argument("--max-sequences", type=C.positive, default=8, help="M (default: 8)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default: 0.6)")
    p.add_argument("--max-new-tokens", type=C.positive, default=256, help="max new tokens per sequence (default: 256)")
    p.add_argument("--thetas", default="1.5,2.0,2.5,2.8",
                   help="entropy thresholds θ, comma-separated (default: 1.5,2.0,2.5,2.8)")
    p.add_argument("--stop", action="append", default=None,
                   help="stop string (repeatable; default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--max-live-sequences", type=C.positive, default=32,
                   help="engine's live-sequence cap (default: 32, the run() default)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed short warm-up runs before the measurements (default: 1)")
    args = p.parse_args(argv)
    args.thetas = C.csv_values(p, args.thetas, float, "thetas", 0.0)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def measure(model: Any, prompts: list[str], method: str, theta: float, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = eager_cpp.run(model, prompts, method=method, max_sequences=args.max_sequences, entropy_threshold=theta,
                        temperature=args.temperature, max_new_tokens=args.max_new_tokens, seed=args.seed,
                        stop=args.stop, max_live_sequences=args.max_live_sequences)
    wall = time.perf_counter() - t0
    s = res.stats
    per_prompt = [p.n_sequences for p in res.prompts]
    finish = collections.Counter(seq.finish_reason for p in res.prompts for seq in p.sequences)
    return {
        "method": method,
        "theta": theta if method == "eager_init" else None,
        "generated_tokens": s.generated_tokens,
        "sequences": s.sequences,
        "mean_sequences_per_prompt": statistics.mean(per_prompt),
        "sequences_per_prompt_histogram": {str(k): v for k, v in sorted(collections.Counter(per_prompt).items())},
        "prompts_at_max_sequences": sum(1 for n in per_prompt if n >= args.max_sequences),
        "wall_seconds": wall,
        "tokens_per_second": C.ratio(s.generated_tokens, wall),
        **C.engine_split(s),
        "finish_reasons": dict(finish),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.warn_if_busy()
    path = C.model_path(args.model)
    env = C.environment(path, args.threads)
    model = eager_cpp.Model(path, n_threads=args.threads)
    records = C.load_prompts(args.data, args.prompts)
    prompts = [r["prompt"] for r in records]
    print(f"model: {path} ({model.description}), threads={args.threads}")
    print(f"{len(prompts)} gsm8k prompts, M={args.max_sequences}, T={args.temperature}, max_new_tokens="
          f"{args.max_new_tokens}, stop={args.stop}, θ ∈ {args.thetas}; order: Full Parallel, then EAGer-init per θ")

    for _ in range(args.warmup):
        eager_cpp.run(model, prompts[:1], method="parallel", max_sequences=args.max_sequences, max_new_tokens=4,
                      temperature=args.temperature, seed=args.seed + 1)

    runs = []
    print("  timing Full Parallel ...", flush=True)
    runs.append(measure(model, prompts, "parallel", 0.0, args))
    for theta in args.thetas:
        print(f"  timing EAGer-init θ={theta:g} ...", flush=True)
        runs.append(measure(model, prompts, "eager_init", theta, args))

    base = runs[0]
    for r in runs:
        r["tokens_ratio"] = C.ratio(r["generated_tokens"], base["generated_tokens"])
        r["wall_ratio"] = C.ratio(r["wall_seconds"], base["wall_seconds"])
        r["sequences_ratio"] = C.ratio(r["mean_sequences_per_prompt"], base["mean_sequences_per_prompt"])

    print()
    print(C.table(
        ["run", "gen tokens", "tokens x", "mean seqs", "seqs x", "at M", "wall s", "wall x", "tok/s", "finish"],
        [["Full Parallel" if r["method"] == "parallel" else f"EAGer-init θ={r['theta']:g}",
          r["generated_tokens"], r["tokens_ratio"], r["mean_sequences_per_prompt"], r["sequences_ratio"],
          f"{r['prompts_at_max_sequences']}/{len(prompts)}", r["wall_seconds"], r["wall_ratio"],
          r["tokens_per_second"], ", ".join(f"{k}:{v}" for k, v in sorted(r["finish_reasons"].items()))]
         for r in runs]))
    print("  (x = ratio to Full Parallel; 'at M' = prompts that reached M sequences)")

    target = next((r for r in runs[1:] if abs(r["theta"] - TARGET_THETA) < 1e-9), None)
    checks: dict[str, Any] = {"theta": TARGET_THETA}
    if target is None:
        print(f"\n  θ={TARGET_THETA} not measured: no target check")
    else:
        checks.update({
            "tokens_ratio": target["tokens_ratio"], "tokens_target": TARGET_TOKENS,
            "tokens_ok": bool(target["tokens_ratio"] <= TARGET_TOKENS),
            "wall_ratio": target["wall_ratio"], "wall_target": TARGET_WALL,
            "wall_ok": bool(target["wall_ratio"] <= TARGET_WALL),
            "mean_sequences": target["mean_sequences_per_prompt"], "mean_sequences_target": TARGET_SEQUENCES,
            "mean_sequences_ok": bool(target["mean_sequences_per_prompt"] >= TARGET_SEQUENCES),
        })
        print(f"\n  at θ={TARGET_THETA}: tokens {target['tokens_ratio']:.3f}x (target <= {TARGET_TOKENS}: "
              f"{C.verdict(target['tokens_ratio'], TARGET_TOKENS, False)}), wall {target['wall_ratio']:.3f}x "
              f"(target <= {TARGET_WALL}: {C.verdict(target['wall_ratio'], TARGET_WALL, False)}), mean sequences "
              f"{target['mean_sequences_per_prompt']:.2f} (target >= {TARGET_SEQUENCES:g}: "
              f"{C.verdict(target['mean_sequences_per_prompt'], TARGET_SEQUENCES, True)})")

    payload = {
        "benchmark": "eager_init_vs_parallel",
        "environment": env,
        "settings": {"prompts": len(prompts), "max_sequences": args.max_sequences,
                     "temperature": args.temperature, "max_new_tokens": args.max_new_tokens,
                     "thetas": args.thetas, "stop": args.stop, "seed": args.seed,
                     "max_live_sequences": args.max_live_sequences, "warmup": args.warmup,
                     "order": "parallel, then eager_init per theta in the order given"},
        "runs": runs,
        "targets": checks,
    }
    C.write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
