"""Long reasoning budgets in bounded memory: wall and peak RSS as max_new_tokens grows, and long generations
under a KV budget that forces preemption.

    python benchmarks/bench_long.py --part a        # capitals, budgets 16 .. 32000, M 8 and 32 (~5 min here)
    python benchmarks/bench_long.py --part b        # 8 GSM8K x M=8 x 4096 tokens, whole vs a quarter of the memory
    python benchmarks/bench_long.py --part b --prompts 2 --tokens 1024   # the same at a size that fits a session
    python benchmarks/bench_long.py --part c        # Full Parallel vs llama-server at 512, 2048, 4096 tokens
    python benchmarks/bench_long.py --part d --prompts 2 --lengths 256,4096   # tok/s by KV layout as sequences grow
    python benchmarks/bench_long.py --part e --lengths 256 --repeats 2       # short answers (a stop) by KV layout

(a) The same short-answer job (32 capitals prompts, T 0.6, stop at the first newline) at max_new_tokens
16, 1024, 8192 and 32000, Full Parallel and EAGer-init (θ 1.0), M = 8 and 32, each run in a fresh process:
wall and peak RSS as ratios to the 16-token run, once per --kv-layouts. Target: every ratio <= 1.2, M = 32 x 32000
runs.
(b) Long generations with no stop (ignore_eos), Full Parallel and EAGer-init (θ 2.0): once with a KV budget
that holds the whole job, once with a quarter of it. Target: the constrained run completes, every sequence
reaches its length, preemptions are reported, tok/s >= 0.8x the unconstrained run's.
(c) The job of (b) (no stop, T 0.6), Full Parallel and llama-server (benchmarks/llama_server.py: unified
KV, 32 slots, one n_cmpl=M request per prompt, all in flight) at 512, 2048 and 4096 tokens per sequence,
in the same run, each length eager_cpp (once per --kv-layouts) then the server. Target: Full Parallel >= 1.0x
the server's tok/s at every length; reports each engine's tok/s at the longest length over its tok/s at the
shortest.
(d) The job of (b) (2 prompts by default), Full Parallel and EAGer-init (θ 2.0), once per KV layout (unified,
per_sequence) at each length, each run in a fresh process: tok/s, and tok/s over the shortest length's. Target
(issue 20, item 5): Full Parallel at 4096 tokens per sequence keeps >= 0.8x its tok/s at 256.
(e) Full Parallel on 4 GSM8K prompts x M = 8 with a stop ("\n\n", so sequences end at different steps and free
their ids mid-run) up to the longest --lengths, both layouts alternating in one process, --repeats seeds.
Figures go to benchmarks/results/bench_long_<part>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from typing import Any

from _common import DATA_DIR, add_common_args, csv_values, default_out, environment, model_path, ratio, table, verdict, write_json

# One run in a fresh process, so peak RSS is that run's alone: prints its figures as one JSON line.
CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import eager_cpp
    spec = json.loads(sys.argv[1])
    model = eager_cpp.Model(spec.pop("model"), n_threads=spec.pop("threads"))
    prompts = spec.pop("prompts")
    t0 = time.perf_counter()
    r = eager_cpp.run(model, prompts, **spec)
    wall = time.perf_counter() - t0
    s = r.stats
    print(json.dumps(dict(wall=wall, rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          tokens=s.generated_tokens, sequences=s.sequences, kv_cells=s.kv_cells,
                          peak_kv_cells=s.peak_kv_cells, kv_grows=s.kv_grows, preemptions=s.preemptions,
                          recomputed=s.recomputed_tokens, decode_s=s.decode_seconds, used_layout=s.kv_layout,
                          lengths=sorted({len(q.token_ids) for p in r.prompts for q in p.sequences}))))
""")


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["exit %d" % out.returncode])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def part_a(args: argparse.Namespace, model: str) -> dict[str, Any]:
    rows = [json.loads(line) for line in (DATA_DIR / "capitals_dev_100.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in rows[: args.prompts or 32]]
    results = []
    for layout, method, extra in [(layout, method, extra) for layout in args.kv_layouts
                                  for method, extra in (("parallel", {}), ("eager_init", {"entropy_threshold": 1.0}))]:
        for m in (8, 32):
            base = None
            for budget in args.budgets:
                spec = dict(model=model, threads=args.threads, prompts=prompts, method=method, max_sequences=m,
                            temperature=0.6, stop="\n", seed=0, max_new_tokens=budget, kv_layout=layout, **extra)
                # Runs of a few seconds are noisy here: the run with the median wall of --repeats stands.
                tries = [run_child(spec) for _ in range(args.repeats)]
                got = sorted(tries, key=lambda g: g.get("wall", float("inf")))[len(tries) // 2]
                if args.repeats > 1:
                    got["walls"] = [g.get("wall") for g in tries]
                base = got if budget == 16 else base
                row = dict(method=method, kv_layout=layout, M=m, max_new_tokens=budget, **got)
                if "error" not in got and base and "error" not in base:
                    row["wall_ratio"] = ratio(got["wall"], base["wall"])
                    row["rss_ratio"] = ratio(got["rss_mib"], base["rss_mib"])
                results.append(row)
                print(f"{layout:12s} {method:10s} M={m:2d} budget={budget:5d}: " +
                      (got.get("error") or f"wall {got['wall']:.1f} s, RSS {got['rss_mib']:.0f} MiB, "
                       f"{got['tokens']} tokens, KV cells {got['kv_cells']} (peak {got['peak_kv_cells']}, "
                       f"grown {got['kv_grows']}x), "
                       f"preemptions {got['preemptions']}"), flush=True)
    print(table(["kv_layout", "method", "M", "budget", "wall s", "wall/16", "RSS MiB", "RSS/16", "tokens", "KV cells",
                 "target"],
                [[r["kv_layout"], r["method"], r["M"], r["max_new_tokens"], r.get("wall"), r.get("wall_ratio"), r.get("rss_mib"),
                  r.get("rss_ratio"), r.get("tokens"), r.get("kv_cells"),
                  r.get("error") or ("" if r["max_new_tokens"] == 16 else
                                      verdict(max(r["wall_ratio"], r["rss_ratio"]), 1.2, False))]
                 for r in results]))
    return {"runs": results}


def part_b(args: argparse.Namespace, model: str) -> dict[str, Any]:
    rows = [json.loads(line) for line in (DATA_DIR / "gsm8k_train_200.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in rows[: args.prompts or 8]]
    m, n = args.sequences, args.tokens
    # The whole job's cells: every prompt's tokens and its M sequences at full length, in bytes of KV memory.
    from eager_cpp import Model

    probe = Model(model, n_threads=1)
    whole_cells = sum(len(probe.tokenize(p)) for p in prompts) + len(prompts) * m * n
    cell_bytes = probe.kv_bytes_per_cell
    del probe
    results = []
    # Each layout at the same bytes: per-sequence streams that outgrow the quarter become fewer and longer.
    for method, layout in [(method, layout) for method in args.methods for layout in args.kv_layouts]:
        extra = {"entropy_threshold": 2.0} if method == "eager_init" else {}
        pair = {}
        for label, cells in (("whole", whole_cells), ("quarter", whole_cells // 4)):
            spec = dict(model=model, threads=args.threads, prompts=prompts, method=method, max_sequences=m,
                        temperature=0.6, ignore_eos=True, seed=0, max_new_tokens=n, kv_memory=int(cells * cell_bytes),
                        kv_layout=layout, **extra)
            got = run_child(spec)
            if "error" not in got:
                got["tok_s"] = got["tokens"] / got["wall"]
            pair[label] = got
            results.append(dict(method=method, kv_layout=layout, memory=label, **got))
            print(f"{method:10s} {layout:12s} {label:7s}: " + (got.get("error") or
                  f"{got['tok_s']:.1f} tok/s, {got['tokens']} tokens, lengths {got['lengths']}, KV cells "
                  f"{got['kv_cells']} (peak {got['peak_kv_cells']}), preemptions {got['preemptions']}, "
                  f"recomputed {got['recomputed']}"), flush=True)
        if all("error" not in v for v in pair.values()):
            results[-1]["tok_s_ratio"] = ratio(pair["quarter"]["tok_s"], pair["whole"]["tok_s"])
    print(table(["method", "kv_layout", "memory", "tok/s", "quarter/whole", "preemptions", "recomputed", "lengths",
                 "target"],
                [[r["method"], r["kv_layout"], r["memory"], r.get("tok_s"), r.get("tok_s_ratio"), r.get("preemptions"),
                  r.get("recomputed"), r.get("lengths"),
                  verdict(r["tok_s_ratio"], 0.8, True) if "tok_s_ratio" in r else r.get("error", "")]
                 for r in results]))
    return {"prompts": len(prompts), "max_sequences": m, "tokens": n, "whole_cells": whole_cells, "runs": results}


def eager_child(model: str, args: argparse.Namespace, prompts: list[str], method: str, layout: str, n: int,
                **extra: Any) -> dict[str, Any]:
    """One eager_cpp run of the long job (no stop, T 0.6) in a fresh process, with its tok/s."""
    spec = dict(model=model, threads=args.threads, prompts=prompts, method=method, max_sequences=args.sequences,
                temperature=0.6, ignore_eos=True, seed=0, max_new_tokens=n, kv_layout=layout, **extra)
    got = run_child(spec)
    if "error" not in got:
        got["tok_s"] = got["tokens"] / got["wall"]
    return got


def part_c(args: argparse.Namespace, model: str) -> dict[str, Any]:
    import llama_server as LS

    rows = [json.loads(line) for line in (DATA_DIR / "gsm8k_train_200.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in rows[: args.prompts or 8]]
    m = args.sequences
    from eager_cpp import Model

    probe = Model(model, n_threads=1)
    prompt_cells = sum(len(probe.tokenize(p)) for p in prompts)
    del probe
    longest = max(args.lengths)
    # The server's unified pool holds every sequence at the longest length (its -c), as eager_cpp's auto does.
    n_ctx = (prompt_cells * m + len(prompts) * m * (longest + 16) + 255) // 256 * 256
    results = []
    with LS.LlamaServer(model, slots=32, threads=args.threads, n_ctx=n_ctx) as server:
        server.complete_all(prompts[:1], n_cmpl=1, max_tokens=4, temperature=0.6, seed=0)  # warm-up
        for n in args.lengths:
            ours = {layout: eager_child(model, args, prompts, "parallel", layout, n) for layout in args.kv_layouts}
            peer = server.complete_all(prompts, n_cmpl=m, max_tokens=n, temperature=0.6, seed=0, ignore_eos=True)
            peer.pop("completions")
            row = dict(tokens_per_sequence=n, eager_cpp=ours, llama_server=peer,
                       ratio={k: ratio(v.get("tok_s", float("nan")), peer["tokens_per_s"]) for k, v in ours.items()})
            results.append(row)
            print(f"{n:5d} tokens: " + ", ".join(f"eager_cpp {k} " + (v.get("error") or f"{v['tok_s']:.1f} tok/s "
                                                                         f"({v['tokens']} tokens)")
                                                 for k, v in ours.items())
                  + f", llama-server {peer['tokens_per_s']:.1f} tok/s ({peer['tokens']} tokens)", flush=True)
    first, last = results[0], results[-1]
    keep = {f"eager_cpp {k}": ratio(last["eager_cpp"][k].get("tok_s", float("nan")),
                                    first["eager_cpp"][k].get("tok_s", float("nan"))) for k in args.kv_layouts}
    keep["llama_server"] = ratio(last["llama_server"]["tokens_per_s"], first["llama_server"]["tokens_per_s"])
    print(table(["tokens/seq", "engine", "tok/s", "over the server", "target >= 1.0"],
                [[r["tokens_per_sequence"], f"eager_cpp {k}", v.get("tok_s"), r["ratio"][k], verdict(r["ratio"][k], 1.0, True)]
                 for r in results for k, v in r["eager_cpp"].items()]
                + [[r["tokens_per_sequence"], "llama-server", r["llama_server"]["tokens_per_s"], None, ""] for r in results]))
    print(f"tok/s at {last['tokens_per_sequence']} over tok/s at {first['tokens_per_sequence']}: "
          + ", ".join(f"{k} {v:.2f}" for k, v in keep.items()))
    return {"prompts": len(prompts), "max_sequences": m, "server_n_ctx": n_ctx, "runs": results,
            "longest_over_shortest": keep}


def part_d(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """Full Parallel and EAGer-init (θ 2.0) on the long job at each length, once per KV layout."""
    rows = [json.loads(line) for line in (DATA_DIR / "gsm8k_train_200.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in rows[: args.prompts or 2]]
    results = []
    for method, extra in (("parallel", {}), ("eager_init", {"entropy_threshold": 2.0})):
        if method not in args.methods:
            continue
        for layout in args.kv_layouts:
            base = None
            for n in args.lengths:
                got = eager_child(model, args, prompts, method, layout, n, **extra)
                base = base or got.get("tok_s")
                got["over_shortest"] = ratio(got["tok_s"], base) if "tok_s" in got and base else None
                results.append(dict(method=method, kv_layout=layout, tokens_per_sequence=n, **got))
                print(f"{method:10s} {layout:12s} {n:5d}: " + (got.get("error") or
                      f"{got['tok_s']:.1f} tok/s on {got['used_layout']} ({got['tokens']} tokens, {got['sequences']} "
                      f"sequences, KV cells "
                      f"{got['kv_cells']}, peak RSS {got['rss_mib']:.0f} MiB), {got['over_shortest']:.2f} of the "
                      f"shortest"), flush=True)
    print(table(["method", "kv_layout", "tokens/seq", "tok/s", "over the shortest", "KV cells", "RSS MiB"],
                [[r["method"], r["kv_layout"], r["tokens_per_sequence"], r.get("tok_s"), r.get("over_shortest"),
                  r.get("kv_cells"), r.get("rss_mib")] for r in results]))
    return {"prompts": len(prompts), "max_sequences": args.sequences, "runs": results}


def part_e(args: argparse.Namespace, model: str) -> dict[str, Any]:
    """Full Parallel with a stop (sequences end at different steps, freeing ids mid-run), both layouts in one
    process, alternating, --repeats times: what the per-sequence layout costs where generations are short."""
    import time

    import eager_cpp

    rows = [json.loads(line) for line in (DATA_DIR / "gsm8k_train_200.jsonl").read_text().splitlines()]
    prompts = [r["prompt"] for r in rows[: args.prompts or 4]]
    m = eager_cpp.Model(model, n_threads=args.threads)
    eager_cpp.run(m, prompts[:1], max_new_tokens=4, progress=None)  # warm-up
    results = []
    for rep in range(args.repeats):
        for layout in args.kv_layouts:
            t0 = time.perf_counter()
            r = eager_cpp.run(m, prompts, method="parallel", max_sequences=args.sequences, temperature=0.6,
                              max_new_tokens=max(args.lengths), stop="\n\n", seed=rep, kv_layout=layout, progress=None)
            wall = time.perf_counter() - t0
            lengths = sorted(len(s.token_ids) for p in r.prompts for s in p.sequences)
            row = dict(kv_layout=layout, seed=rep, wall=wall, tokens=r.stats.generated_tokens,
                       tok_s=r.stats.generated_tokens / wall, steps=r.stats.steps, decode_s=r.stats.decode_seconds,
                       length_min=lengths[0], length_median=lengths[len(lengths) // 2], length_max=lengths[-1])
            results.append(row)
            print(f"seed {rep} {layout:12s}: {row['tok_s']:.1f} tok/s ({row['tokens']} tokens, {row['steps']} steps, "
                  f"lengths {lengths[0]}..{lengths[-1]})", flush=True)
    by = {k: sum(r["tokens"] for r in results if r["kv_layout"] == k) / sum(r["wall"] for r in results
                                                                           if r["kv_layout"] == k)
          for k in args.kv_layouts}
    print("tok/s over all seeds: " + ", ".join(f"{k} {v:.1f}" for k, v in by.items()))
    return {"prompts": len(prompts), "max_sequences": args.sequences, "runs": results, "tok_s": by}


def names(parser: argparse.ArgumentParser, text: str, flag: str, known: tuple[str, ...]) -> list[str]:
    """Comma-separated names among `known`, or a parser error naming the flag."""
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values or any(v not in known for v in values):
        parser.error(f"--{flag} takes comma-separated names among {', '.join(known)}, got {text!r}")
    return values


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, "bench_long")
    ap.add_argument("--part", choices=("a", "b", "c", "d", "e"), default="a")
    ap.add_argument("--prompts", type=int, default=None, help="prompts (default: 32 for a, 8 for b and c)")
    ap.add_argument("--sequences", type=int, default=8, help="M for parts b and c (default 8)")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per sequence for part b (default 4096)")
    ap.add_argument("--budgets", default="16,1024,8192,32000",
                    help="max_new_tokens values for part a, the first the baseline (default 16,1024,8192,32000)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="part a: runs per budget, the median wall stands; part e: seeds (default 1)")
    ap.add_argument("--lengths", default="512,2048,4096",
                    help="tokens per sequence for parts c and d, the first the baseline (default 512,2048,4096)")
    ap.add_argument("--kv-layouts", default="unified,per_sequence",
                    help="eager_cpp's KV layouts for parts a, c and d: auto, unified, per_sequence (default unified,per_sequence)")
    ap.add_argument("--methods", default="parallel,eager_init",
                    help="methods of parts b and d (default parallel,eager_init)")
    args = ap.parse_args()
    args.budgets = csv_values(ap, args.budgets, int, "budgets", 1, 32000)
    args.lengths = sorted(csv_values(ap, args.lengths, int, "lengths", 1, 32000))
    args.kv_layouts = names(ap, args.kv_layouts, "kv-layouts", ("auto", "unified", "per_sequence"))
    args.methods = names(ap, args.methods, "methods", ("parallel", "eager_init"))
    model = model_path(args.model)
    figures = {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "e": part_e}[args.part](args, model)
    out = args.out if args.out != default_out("bench_long") else default_out(f"bench_long_{args.part}")
    write_json(out, {"environment": environment(model, args.threads), "part": args.part, **figures})
    return 0


if __name__ == "__main__":
    sys.exit(main())
