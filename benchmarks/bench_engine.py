#!/usr/bin/env python
"""Engine benchmark (issue: engine).

(a) Full Parallel, M samples per prompt: eager_cpp's batched engine vs llama-cpp-python's
    high-level API generating the same M samples one after another (it reuses the cached prompt
    prefix between calls). Target: eager_cpp tokens/s >= 1.7x llama-cpp-python's.
(b) Engine efficiency at n live sequences: tokens/s of the engine's generation steps (decode +
    entropy/sampling row kernel + bookkeeping, prefill excluded) vs bare llama_decode steps of the
    same n tokens (`_core.bench_bare_decode`). Target: engine/bare >= 0.9.
(c) Cost of the CPU buffer guard's fallback: batched decode tok/s (bare llama_decode and engine steps)
    at n live sequences with the model loaded with --cpu-buffers (default "safe": every extra buffer
    type but AMX) vs with none (use_extra_bufts = false), interleaved in one run.
(s) llama-server, the peer a llama.cpp user picks for many samples: built from the pinned llama.cpp
    sources (benchmarks/llama_server.py; built once under build/llama-server, about 10-20 minutes),
    32 slots, unified KV, the same threads; the same GSM8K prompts as n_cmpl = M requests, all in
    flight at once. Beside it in the same run: eager_cpp Full Parallel, EAGer-init at each --thetas,
    and bare llama_decode at 32 sequences. Targets: Full Parallel >= 1.0x llama-server's tokens/s
    and >= 0.95x bare decode's; EAGer-init's wall <= 0.5x llama-server's at θ = 2.5.

Both models are loaded before timing; only generation is timed. Full size (parts a, b and s):
    python benchmarks/bench_engine.py
Smoke:
    python benchmarks/bench_engine.py --prompts 1 --max-sequences 2 --max-new-tokens 8 --ns 1,2 --steps 4
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import _common as C

import eager_cpp  # noqa: E402  (before llama_cpp: one copy of libllama in the process)
from eager_cpp import _core  # noqa: E402

WARMUP_TEXT = "Question: Tom has 3 apples and buys 4 more. How many apples does he have?\nAnswer:"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    C.add_common_args(p, "bench_engine")
    p.add_argument("--part", choices=("a", "b", "c", "s", "both", "default", "all"), default="default",
                   help="which part to run: a, b, c, s, both (a and b), default (a, b and s) or all")
    p.add_argument("--cpu-buffers", choices=("safe", "all", "none"), default=None,
                   help="CPU buffer types of both engines' models (default: $EAGER_CPP_CPU_BUFFERS or safe)")
    g = p.add_argument_group("(a) eager_cpp vs llama-cpp-python, Full Parallel")
    g.add_argument("--prompts", type=C.positive, default=16, help="first N gsm8k prompts (default: 16)")
    g.add_argument("--max-sequences", type=C.positive, default=8, help="M samples per prompt (default: 8)")
    g.add_argument("--max-new-tokens", type=C.positive, default=128, help="max new tokens per sample (default: 128)")
    g.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default: 0.6)")
    g.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    g.add_argument("--n-ctx", type=int, default=None,
                   help="llama-cpp-python n_ctx (default: max(2048, longest prompt + max_new_tokens, rounded))")
    g.add_argument("--order", choices=("llama-first", "eager-first"), default="llama-first",
                   help="which engine is timed first (default: llama-first)")
    g.add_argument("--warmup", type=int, default=1,
                   help="untimed short warm-up generations per engine on a text outside the set (default: 1)")
    g = p.add_argument_group("(b) engine step vs bare llama_decode")
    g.add_argument("--ns", default="1,8,16,32", help="live-sequence counts, comma-separated (default: 1,8,16,32)")
    g.add_argument("--steps", type=C.positive, default=48, help="generation steps per measurement (default: 48)")
    g.add_argument("--prompt-index", type=int, default=0, help="which gsm8k prompt is the shared prefix (default: 0)")
    g.add_argument("--repeats", type=C.positive, default=1,
                   help="interleaved repeats per n; the median time is reported (default: 1)")
    g = p.add_argument_group("(s) llama-server side by side (also uses --prompts, --max-sequences, "
                             "--max-new-tokens, --temperature, --seed)")
    g.add_argument("--thetas", default="2.0,2.5,2.8", help="EAGer-init thresholds (default: 2.0,2.5,2.8)")
    g.add_argument("--slots", type=C.positive, default=32, help="llama-server parallel slots (default: 32)")
    g.add_argument("--server-log", default=None, help="file for llama-server's log (default: none)")
    g = p.add_argument_group("(c) CPU buffer types vs none")
    g.add_argument("--buffer-ns", default="1,8,32", help="live-sequence counts (default: 1,8,32)")
    args = p.parse_args(argv)
    args.ns = C.csv_values(p, args.ns, int, "ns", 1, 256)
    args.buffer_ns = C.csv_values(p, args.buffer_ns, int, "buffer-ns", 1, 256)
    args.thetas = C.csv_values(p, args.thetas, float, "thetas", 0.0)
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


# ---------------------------------------------------------------------------------------------
# (a) eager_cpp vs llama-cpp-python
# ---------------------------------------------------------------------------------------------


def run_llama_cpp_python(llm: Any, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    tokens = 0
    finish = collections.Counter()
    per_call: list[float] = []
    t0 = time.perf_counter()
    for i, prompt in enumerate(prompts):
        for j in range(args.max_sequences):
            c0 = time.perf_counter()
            out = llm(prompt, max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=0, top_p=1.0,
                      min_p=0.0, typical_p=1.0, repeat_penalty=1.0, seed=args.seed + i * args.max_sequences + j)
            per_call.append(time.perf_counter() - c0)
            tokens += int(out["usage"]["completion_tokens"])
            finish[str(out["choices"][0].get("finish_reason"))] += 1
    wall = time.perf_counter() - t0
    first = [per_call[i * args.max_sequences] for i in range(len(prompts))]
    rest = [t for k, t in enumerate(per_call) if k % args.max_sequences != 0]
    return {
        "generated_tokens": tokens,
        "samples": len(per_call),
        "wall_seconds": wall,
        "tokens_per_second": C.ratio(tokens, wall),
        "mean_tokens_per_sample": C.ratio(tokens, len(per_call)),
        "finish_reasons": dict(finish),
        "mean_first_call_seconds": statistics.mean(first) if first else None,
        "mean_repeat_call_seconds": statistics.mean(rest) if rest else None,
    }


def run_eager(model: Any, prompts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = eager_cpp.run(model, prompts, method="parallel", max_sequences=args.max_sequences,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed)
    wall = time.perf_counter() - t0
    s = res.stats
    finish = collections.Counter(seq.finish_reason for p in res.prompts for seq in p.sequences)
    return {
        "generated_tokens": s.generated_tokens,
        "samples": s.sequences,
        "wall_seconds": wall,
        "tokens_per_second": C.ratio(s.generated_tokens, wall),
        "mean_tokens_per_sample": C.ratio(s.generated_tokens, s.sequences),
        "finish_reasons": dict(finish),
        "engine_wall_seconds": s.wall_seconds,
        **C.engine_split(s),
        "step_overhead_share": s.step_overhead_share,
    }


def part_a(args: argparse.Namespace, path: str, model: Any) -> dict[str, Any]:
    records = C.load_prompts(args.data, args.prompts)
    prompts = [r["prompt"] for r in records]
    lengths = [len(model.tokenize(p)) for p in prompts]
    need = max(lengths) + args.max_new_tokens + 16
    n_ctx = args.n_ctx or max(2048, (need + 255) // 256 * 256)
    if n_ctx < need:
        raise SystemExit(f"--n-ctx {n_ctx} is too small: the longest prompt needs {need}")

    print(f"\n(a) Full Parallel: {len(prompts)} prompts x M={args.max_sequences}, max_new_tokens="
          f"{args.max_new_tokens}, T={args.temperature}, threads={args.threads}; prompt tokens "
          f"{min(lengths)}..{max(lengths)}; llama-cpp-python n_ctx={n_ctx}; order: {args.order}")
    # The same CPU buffer types as eager_cpp's model (the AMX guard), so the comparison is fair.
    llm = eager_cpp.llama_cpp_reference(path, cpu_buffers=args.cpu_buffers, n_ctx=n_ctx, n_threads=args.threads,
                                        n_threads_batch=args.threads, seed=args.seed, verbose=False,
                                        logits_all=False)
    for _ in range(args.warmup):
        llm(WARMUP_TEXT, max_tokens=4, temperature=args.temperature, top_k=0, top_p=1.0, min_p=0.0, seed=1)
        eager_cpp.run(model, [WARMUP_TEXT], method="parallel", max_sequences=args.max_sequences, max_new_tokens=4,
                      temperature=args.temperature, seed=1)

    order = ["llama", "eager"] if args.order == "llama-first" else ["eager", "llama"]
    out: dict[str, Any] = {}
    for name in order:
        print(f"  timing {'llama-cpp-python' if name == 'llama' else 'eager_cpp'} ...", flush=True)
        out[name] = run_llama_cpp_python(llm, prompts, args) if name == "llama" else run_eager(model, prompts, args)
    del llm

    lp, ec = out["llama"], out["eager"]
    speedup = C.ratio(ec["tokens_per_second"], lp["tokens_per_second"])
    print()
    print(C.table(
        ["engine", "samples", "gen tokens", "tok/sample", "wall s", "tok/s", "finish reasons"],
        [["llama-cpp-python (sequential)", lp["samples"], lp["generated_tokens"], lp["mean_tokens_per_sample"],
          lp["wall_seconds"], lp["tokens_per_second"], _reasons(lp["finish_reasons"])],
         ["eager_cpp (batched parallel)", ec["samples"], ec["generated_tokens"], ec["mean_tokens_per_sample"],
          ec["wall_seconds"], ec["tokens_per_second"], _reasons(ec["finish_reasons"])]]))
    print(f"\n  tokens/s ratio eager_cpp / llama-cpp-python: {speedup:.2f}x  (target >= 1.7x: "
          f"{C.verdict(speedup, 1.7, True)})")
    print(f"  wall ratio eager_cpp / llama-cpp-python: {C.ratio(ec['wall_seconds'], lp['wall_seconds']):.2f}")
    print(f"  llama-cpp-python mean call: {_s(lp['mean_first_call_seconds'])} s for a prompt's first sample vs "
          f"{_s(lp['mean_repeat_call_seconds'])} s for its repeats (repeats reuse the cached prompt prefix)")
    print(f"  eager_cpp breakdown: prefill {ec['prefill_seconds']:.2f} s, decode {ec['decode_seconds']:.2f} s, "
          f"row kernel {ec['row_kernel_seconds']:.2f} s, bookkeeping {ec['bookkeeping_seconds']:.2f} s, "
          f"{ec['steps']} steps, max live {ec['max_live_sequences']}")
    return {
        "settings": {"prompts": len(prompts), "max_sequences": args.max_sequences,
                     "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "seed": args.seed,
                     "llama_n_ctx": n_ctx, "order": args.order, "warmup": args.warmup,
                     "prompt_tokens_min": min(lengths), "prompt_tokens_max": max(lengths),
                     "llama_sampling": "top_k=0 top_p=1.0 min_p=0.0 typical_p=1.0 repeat_penalty=1.0, seed per call"},
        "llama_cpp_python": lp,
        "eager_cpp": ec,
        "tokens_per_second_ratio": speedup,
        "target_ratio": 1.7,
        "meets_target": bool(speedup >= 1.7),
    }


def _reasons(d: dict[str, int]) -> str:
    return ", ".join(f"{k}:{v}" for k, v in sorted(d.items()))


def _s(x: Any) -> str:
    return "-" if x is None else f"{x:.3f}"


# ---------------------------------------------------------------------------------------------
# (b) engine generation steps vs bare llama_decode
# ---------------------------------------------------------------------------------------------


def part_b(args: argparse.Namespace, model: Any) -> dict[str, Any]:
    records = C.load_prompts(args.data, args.prompt_index + 1)
    prompt = records[args.prompt_index]["prompt"]
    ptoks = model.tokenize(prompt)
    print(f"\n(b) engine step vs bare llama_decode: prompt {args.prompt_index} ({len(ptoks)} tokens), "
          f"{args.steps} steps, threads={args.threads}, repeats={args.repeats}")
    # Untimed warm-up of both paths.
    _core.bench_bare_decode(model._model, ptoks, 1, 2, args.threads)
    rows, table_rows = [], []
    for n in args.ns:
        bare_times, eng = [], []
        for _ in range(args.repeats):
            bare_times.append(_core.bench_bare_decode(model._model, ptoks, n, args.steps, args.threads))
            res = eager_cpp.run(model, [prompt], method="parallel", max_sequences=n, max_new_tokens=args.steps,
                                ignore_eos=True, max_live_sequences=max(32, n), temperature=0.6, seed=args.seed)
            eng.append(res.stats)
        bare_s = statistics.median(bare_times)
        gen_times = [s.decode_seconds + s.row_kernel_seconds + s.bookkeeping_seconds for s in eng]
        k = sorted(range(len(eng)), key=lambda i: gen_times[i])[len(eng) // 2]  # the median run
        s = eng[k]
        gen_s = gen_times[k]
        bare_tokens = n * args.steps
        bare_tps = C.ratio(bare_tokens, bare_s)
        eng_tps = C.ratio(s.generated_tokens, gen_s)
        r = C.ratio(eng_tps, bare_tps)
        # Stricter view: time per llama_decode step. The engine's first token comes from the
        # prefill's logits, so it runs one decode fewer than it generates tokens.
        per_step = C.ratio(bare_s / args.steps, gen_s / s.steps) if s.steps else float("nan")
        row = {
            "n_live": n,
            "bare_seconds": bare_s,
            "bare_tokens": bare_tokens,
            "bare_tokens_per_second": bare_tps,
            "engine_generation_seconds": gen_s,
            "engine_decode_seconds": s.decode_seconds,
            "engine_row_kernel_seconds": s.row_kernel_seconds,
            "engine_bookkeeping_seconds": s.bookkeeping_seconds,
            "engine_prefill_seconds": s.prefill_seconds,
            "engine_steps": s.steps,
            "engine_generated_tokens": s.generated_tokens,
            "engine_tokens_per_second": eng_tps,
            "ratio_engine_over_bare": r,
            "ratio_per_decode_step": per_step,
            "step_overhead_share": s.step_overhead_share,
            "all_bare_seconds": bare_times,
            "all_engine_generation_seconds": gen_times,
        }
        rows.append(row)
        table_rows.append([n, bare_tps, eng_tps, r, per_step, 100.0 * s.step_overhead_share,
                           s.generated_tokens, s.steps])
        print(f"  n={n}: bare {bare_tps:.1f} tok/s, engine {eng_tps:.1f} tok/s", flush=True)
    print()
    print(C.table(["live seqs", "bare tok/s", "engine tok/s", "engine/bare", "per-step ratio", "overhead %",
                   "eng tokens", "eng steps"], table_rows))
    worst = min(row["ratio_engine_over_bare"] for row in rows)
    print(f"\n  lowest engine/bare ratio: {worst:.3f} (target >= 0.9: {C.verdict(worst, 0.9, True)})")
    worst_step = min(row["ratio_per_decode_step"] for row in rows)
    print(f"  lowest per-step ratio: {worst_step:.3f} (same target, stricter view: "
          f"{C.verdict(worst_step, 0.9, True)})")
    print("  engine/bare = (generated tokens / (decode + row kernel + bookkeeping s)) / (n*steps / bare s);")
    print("  per-step ratio = bare s per decode / engine generation s per decode (stricter: the engine's first")
    print("  token comes from the prefill logits, so it does steps-1 decodes).")
    return {
        "settings": {"prompt_index": args.prompt_index, "prompt_tokens": len(ptoks), "steps": args.steps,
                     "ns": args.ns, "repeats": args.repeats, "temperature": 0.6, "ignore_eos": True},
        "rows": rows,
        "min_ratio": worst,
        "min_ratio_per_decode_step": worst_step,
        "target_ratio": 0.9,
        "meets_target": bool(worst >= 0.9),
    }


# ---------------------------------------------------------------------------------------------
# (c) the CPU buffer guard's fallback: no extra buffer types
# ---------------------------------------------------------------------------------------------


def _engine_step_tps(model: Any, prompt: str, n: int, steps: int, seed: int) -> float:
    res = eager_cpp.run(model, [prompt], method="parallel", max_sequences=n, max_new_tokens=steps, ignore_eos=True,
                        max_live_sequences=max(32, n), temperature=0.6, seed=seed)
    s = res.stats
    return C.ratio(s.generated_tokens, s.decode_seconds + s.row_kernel_seconds + s.bookkeeping_seconds)


def part_c(args: argparse.Namespace, path: str, model: Any) -> dict[str, Any]:
    records = C.load_prompts(args.data, args.prompt_index + 1)
    prompt = records[args.prompt_index]["prompt"]
    ptoks = model.tokenize(prompt)
    fallback = eager_cpp.Model(path, n_threads=args.threads, cpu_buffers="none")
    loads = {"chosen": model, "none": fallback}
    print(f"\n(c) CPU buffer types: {model.cpu_buffers} (weights in "
          f"{', '.join(f'{n} {m:.1f} MiB' for n, m in model.weight_buffers)}) vs none (weights in "
          f"{', '.join(f'{n} {m:.1f} MiB' for n, m in fallback.weight_buffers)}); prompt {args.prompt_index} "
          f"({len(ptoks)} tokens), {args.steps} steps, repeats={args.repeats}, interleaved")
    for m in loads.values():  # untimed warm-up of both loads
        _core.bench_bare_decode(m._model, ptoks, 1, 2, args.threads)
    rows, table_rows = [], []
    for n in args.buffer_ns:
        bare: dict[str, list[float]] = {k: [] for k in loads}
        engine: dict[str, list[float]] = {k: [] for k in loads}
        for _ in range(args.repeats):
            for key, m in loads.items():
                bare[key].append(C.ratio(n * args.steps, _core.bench_bare_decode(m._model, ptoks, n, args.steps,
                                                                                  args.threads)))
                engine[key].append(_engine_step_tps(m, prompt, n, args.steps, args.seed))
        row = {"n_live": n}
        for key in loads:
            row[f"bare_tokens_per_second_{key}"] = statistics.median(bare[key])
            row[f"engine_tokens_per_second_{key}"] = statistics.median(engine[key])
        row["bare_ratio_none_over_chosen"] = C.ratio(row["bare_tokens_per_second_none"],
                                                     row["bare_tokens_per_second_chosen"])
        row["engine_ratio_none_over_chosen"] = C.ratio(row["engine_tokens_per_second_none"],
                                                       row["engine_tokens_per_second_chosen"])
        rows.append(row)
        table_rows.append([n, row["bare_tokens_per_second_chosen"], row["bare_tokens_per_second_none"],
                           row["bare_ratio_none_over_chosen"], row["engine_tokens_per_second_chosen"],
                           row["engine_tokens_per_second_none"], row["engine_ratio_none_over_chosen"]])
        print(f"  n={n}: bare {row['bare_tokens_per_second_chosen']:.1f} vs {row['bare_tokens_per_second_none']:.1f}"
              f" tok/s, engine {row['engine_tokens_per_second_chosen']:.1f} vs "
              f"{row['engine_tokens_per_second_none']:.1f} tok/s", flush=True)
    print()
    print(C.table(["live seqs", f"bare {model.cpu_buffers}", "bare none", "none/chosen",
                   f"engine {model.cpu_buffers}", "engine none", "none/chosen"], table_rows))
    worst = min(min(r["bare_ratio_none_over_chosen"], r["engine_ratio_none_over_chosen"]) for r in rows)
    print(f"\n  lowest none/{model.cpu_buffers} ratio: {worst:.3f} (the fallback costs "
          f"{100 * (1 - worst):.1f} % at worst; above 10 % it is worth recovering)")
    none_buffers = fallback.weight_buffers
    del fallback
    return {
        "settings": {"prompt_index": args.prompt_index, "prompt_tokens": len(ptoks), "steps": args.steps,
                     "ns": args.buffer_ns, "repeats": args.repeats, "temperature": 0.6, "ignore_eos": True},
        "chosen": model.cpu_buffers,
        "chosen_plan": {"keep": list(model.cpu_buffer_plan.keep), "dropped": list(model.cpu_buffer_plan.dropped)},
        "chosen_weight_buffers": model.weight_buffers,
        "none_weight_buffers": none_buffers,
        "rows": rows,
        "min_ratio_none_over_chosen": worst,
    }


# ---------------------------------------------------------------------------------------------
# (s) llama-server side by side
# ---------------------------------------------------------------------------------------------


def _eager_row(model: Any, prompts: list[str], args: argparse.Namespace, method: str, theta: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    res = eager_cpp.run(model, prompts, method=method, max_sequences=args.max_sequences, entropy_threshold=theta,
                        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                        record_entropies=False)
    wall = time.perf_counter() - t0
    s = res.stats
    return {"sequences": s.sequences, "generated_tokens": s.generated_tokens, "wall_seconds": wall,
            "tokens_per_second": C.ratio(s.generated_tokens, wall), **C.engine_split(s)}


def part_s(args: argparse.Namespace, path: str, model: Any) -> dict[str, Any]:
    import llama_server as LS

    if not LS.binary_path().exists():
        print(f"\n(s) building llama-server once under {LS.BUILD_ROOT} (about 10-20 minutes) ...", flush=True)
    binary = LS.build()
    records = C.load_prompts(args.data, args.prompts)
    prompts = [r["prompt"] for r in records]
    lengths = [len(model.tokenize(p)) for p in prompts]
    # The unified pool every slot shares: room for all slots at the longest prompt plus a full sample.
    n_ctx = (args.slots * (max(lengths) + args.max_new_tokens + 8) + 255) // 256 * 256
    print(f"\n(s) llama-server vs eager_cpp: {len(prompts)} GSM8K prompts x M={args.max_sequences}, max_new_tokens="
          f"{args.max_new_tokens}, T={args.temperature}, threads={args.threads}; server: {args.slots} slots, "
          f"unified KV of {n_ctx} cells, n_cmpl={args.max_sequences}, every request in flight at once", flush=True)
    log = Path(args.server_log) if args.server_log else None
    with LS.LlamaServer(path, slots=args.slots, threads=args.threads, n_ctx=n_ctx, binary=binary, log=log) as server:
        command = " ".join(server.command()[1:])
        server.complete(WARMUP_TEXT, n_cmpl=2, max_tokens=4, temperature=args.temperature, seed=1)
        print("  timing llama-server ...", flush=True)
        srv = server.complete_all(prompts, n_cmpl=args.max_sequences, max_tokens=args.max_new_tokens,
                                  temperature=args.temperature, seed=args.seed)
    srv.pop("completions")
    eager_cpp.run(model, [WARMUP_TEXT], method="parallel", max_sequences=2, max_new_tokens=4, seed=1)
    rows: dict[str, dict[str, Any]] = {}
    print("  timing eager_cpp Full Parallel ...", flush=True)
    rows["parallel"] = _eager_row(model, prompts, args, "parallel", 0.0)
    for theta in args.thetas:
        print(f"  timing eager_cpp EAGer-init θ={theta} ...", flush=True)
        rows[f"eager_init θ={theta}"] = _eager_row(model, prompts, args, "eager_init", theta)
    ptoks = model.tokenize(prompts[0])
    bare_n = min(32, args.slots)
    bare_s = _core.bench_bare_decode(model._model, ptoks, bare_n, args.max_new_tokens, args.threads)
    bare_tps = bare_n * args.max_new_tokens / bare_s

    fp = rows["parallel"]
    table = [["llama-server", srv["sequences"], srv["tokens"], srv["wall_s"], srv["tokens_per_s"], 1.0, 1.0]]
    for name, r in rows.items():
        table.append([f"eager_cpp {name}", r["sequences"], r["generated_tokens"], r["wall_seconds"],
                      r["tokens_per_second"], C.ratio(r["generated_tokens"], srv["tokens"]),
                      C.ratio(r["wall_seconds"], srv["wall_s"])])
    print()
    print(C.table(["engine", "samples", "gen tokens", "wall s", "tok/s", "tokens / server", "wall / server"], table))
    fp_vs_server = C.ratio(fp["tokens_per_second"], srv["tokens_per_s"])
    fp_vs_bare = C.ratio(fp["tokens_per_second"], bare_tps)
    print(f"\n  bare llama_decode, {bare_n} sequences x {args.max_new_tokens} steps: {bare_tps:.1f} tok/s")
    print(f"  Full Parallel tok/s vs llama-server: {fp_vs_server:.2f}x (target >= 1.0: "
          f"{C.verdict(fp_vs_server, 1.0, True)}); vs bare decode: {fp_vs_bare:.2f}x (target >= 0.95: "
          f"{C.verdict(fp_vs_bare, 0.95, True)})")
    out: dict[str, Any] = {
        "settings": {"prompts": len(prompts), "max_sequences": args.max_sequences, "max_new_tokens": args.max_new_tokens,
                     "temperature": args.temperature, "seed": args.seed, "slots": args.slots, "server_n_ctx": n_ctx,
                     "server_command": command, "thetas": args.thetas,
                     "prompt_tokens_min": min(lengths), "prompt_tokens_max": max(lengths)},
        "llama_server": srv, "eager_cpp": rows, "bare_decode_tokens_per_second": bare_tps,
        "full_parallel_vs_server_tokens_per_second": fp_vs_server, "full_parallel_vs_bare": fp_vs_bare,
    }
    for theta in args.thetas:
        r = rows[f"eager_init θ={theta}"]
        wall_ratio = C.ratio(r["wall_seconds"], srv["wall_s"])
        token_ratio_fp = C.ratio(r["generated_tokens"], fp["generated_tokens"])
        wall_ratio_fp = C.ratio(r["wall_seconds"], fp["wall_seconds"])
        out[f"eager_init_{theta}"] = {"wall_vs_server": wall_ratio, "tokens_vs_parallel": token_ratio_fp,
                                      "wall_vs_parallel": wall_ratio_fp}
        goal = f" (target <= 0.5: {C.verdict(wall_ratio, 0.5, False)})" if theta == 2.5 else ""
        print(f"  EAGer-init θ={theta}: wall {wall_ratio:.2f}x llama-server's{goal}; vs Full Parallel: "
              f"{token_ratio_fp:.2f}x the tokens in {wall_ratio_fp:.2f}x the wall")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.warn_if_busy()
    path = C.model_path(args.model)
    model = eager_cpp.Model(path, n_threads=args.threads, cpu_buffers=args.cpu_buffers)
    print(f"model: {path} ({model.description}), threads={args.threads}, CPU buffers: {model.cpu_buffers} "
          f"(kept {list(model.cpu_buffer_plan.keep)}, guarded out {list(model.cpu_buffer_plan.dropped)})")
    payload: dict[str, Any] = {"benchmark": "engine", "environment": C.environment(path, args.threads)}
    if args.part in ("a", "both", "default", "all"):
        payload["a_full_parallel_vs_llama_cpp_python"] = part_a(args, path, model)
    if args.part in ("b", "both", "default", "all"):
        payload["b_engine_vs_bare_decode"] = part_b(args, model)
    if args.part in ("c", "all"):
        payload["c_cpu_buffers_vs_none"] = part_c(args, path, model)
    if args.part in ("s", "default", "all"):
        payload["s_llama_server"] = part_s(args, path, model)
    C.write_json(args.out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
