#!/usr/bin/env python
"""What a decode step costs as sequences grow, for each KV cache layout llama.cpp offers.

Issue: with the unified KV cache every token attends over the span of all cells in use, so a step of
n sequences of length L costs O(n * n * L) in attention, and Full Parallel slows down as generations
grow. Gemma 3 attends over a 512-token sliding window in most layers, but a full-size window cache
(`swa_full`, what the engine asked for) lets those layers span every cell too.

This bench drives bare `llama_decode` through llama-cpp-python's C API (no engine code in the loop):
n sequences are filled to L tokens each (distinct tokens, so no cell is shared: the layout a long
Full Parallel run reaches), then a few decode steps of one token per sequence are timed. The fill
grows in place (256 -> 1024 -> 2048 -> 4096), so each layout prefills its sequences once.

Layouts, all four in one run:
  unified + full window cache   every layer spans all cells of all sequences (the engine before)
  unified + small window cache  window layers span at most n * 512 + a micro-batch of cells
  per-sequence streams + full   each sequence attends over its own stream only (kv_unified=false)
  per-sequence streams + small

    python benchmarks/bench_kv_layout.py --sequences 16 --lengths 256,1024,2048,4096 --threads 2
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from pathlib import Path

import numpy as np

import _common as C
import eager_cpp

LAYOUTS = {  # name: (kv_unified, swa_full)
    "unified+full_window": (True, True),
    "unified+small_window": (True, False),
    "streams+full_window": (False, True),
    "streams+small_window": (False, False),
}


def make_context(llama_cpp, model_ptr, *, n_ctx: int, n_seq: int, threads: int, unified: bool, swa_full: bool):
    p = llama_cpp.llama_context_default_params()
    p.n_ctx = n_ctx
    p.n_batch = 512
    p.n_ubatch = 512
    p.n_seq_max = n_seq
    p.n_threads = threads
    p.n_threads_batch = threads
    p.kv_unified = unified
    p.swa_full = swa_full
    p.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model_ptr, p)
    if not ctx:
        raise RuntimeError(f"llama.cpp could not create a context (n_ctx {n_ctx}, unified {unified}, swa_full {swa_full})")
    return ctx


class Batch:
    def __init__(self, llama_cpp, capacity: int) -> None:
        self.llama_cpp = llama_cpp
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.capacity = capacity

    def fill(self, rows: list[tuple[int, int, int, bool]]) -> None:
        b = self.batch
        b.n_tokens = len(rows)
        for i, (token, pos, seq, logits) in enumerate(rows):
            b.token[i] = token
            b.pos[i] = pos
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = seq
            b.logits[i] = logits

    def decode(self, ctx) -> None:
        rc = self.llama_cpp.llama_decode(ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")

    def free(self) -> None:
        self.llama_cpp.llama_batch_free(self.batch)


def grow(llama_cpp, ctx, batch: Batch, tokens: np.ndarray, start: int, stop: int) -> None:
    """Prefill positions [start, stop) of every sequence, interleaved as generation lays them out."""
    n_seq = tokens.shape[0]
    per_ubatch = max(1, batch.capacity // n_seq)
    for lo in range(start, stop, per_ubatch):
        hi = min(stop, lo + per_ubatch)
        batch.fill([(int(tokens[s, p]), p, s, False) for p in range(lo, hi) for s in range(n_seq)])
        batch.decode(ctx)


def time_steps(llama_cpp, ctx, batch: Batch, tokens: np.ndarray, at: int, steps: int) -> list[float]:
    """Seconds of each of `steps` decode steps of one token per sequence, positions at, at + 1, ..."""
    n_seq = tokens.shape[0]
    out = []
    for k in range(steps):
        batch.fill([(int(tokens[s, at + k]), at + k, s, True) for s in range(n_seq)])
        t = time.perf_counter()
        batch.decode(ctx)
        out.append(time.perf_counter() - t)
    return out


def run_layout(llama_cpp, model_ptr, name: str, args, tokens: np.ndarray) -> list[dict]:
    unified, swa_full = LAYOUTS[name]
    n_seq = args.sequences
    per_seq = max(args.lengths) + args.steps * len(args.lengths) + 256
    ctx = make_context(llama_cpp, model_ptr, n_ctx=per_seq * n_seq, n_seq=n_seq, threads=args.threads,
                       unified=unified, swa_full=swa_full)
    batch = Batch(llama_cpp, 512)
    rows, filled = [], 0
    try:
        for length in args.lengths:
            t = time.perf_counter()
            grow(llama_cpp, ctx, batch, tokens, filled, length)
            fill_s = time.perf_counter() - t
            times = time_steps(llama_cpp, ctx, batch, tokens, length, args.steps)
            filled = length + args.steps
            step_s = statistics.median(times)
            rows.append({"layout": name, "kv_unified": unified, "swa_full": swa_full, "length": length,
                         "cells_in_use": n_seq * length, "step_seconds": step_s, "all_step_seconds": times,
                         "tokens_per_second": n_seq / step_s, "fill_seconds": fill_s})
            print(f"  {name:22s} L={length:5d}: {1000 * step_s:7.1f} ms/step, {n_seq / step_s:6.1f} tok/s "
                  f"(fill {fill_s:.0f} s)", flush=True)
    finally:
        batch.free()
        llama_cpp.llama_free(ctx)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None)
    p.add_argument("--sequences", type=int, default=16)
    p.add_argument("--lengths", type=lambda s: [int(x) for x in s.split(",")], default=[256, 1024, 2048, 4096])
    p.add_argument("--steps", type=int, default=5, help="timed decode steps at each length (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--layouts", default=",".join(LAYOUTS), help="comma-separated subset of " + ", ".join(LAYOUTS))
    p.add_argument("--out", type=Path, default=C.RESULTS_DIR / "bench_kv_layout.json")
    args = p.parse_args()
    args.lengths = sorted(args.lengths)
    import llama_cpp

    model_path = args.model or eager_cpp.default_model_path()
    # The reference loader applies eager_cpp's CPU buffer guard; its model is reused for every context.
    ref = eager_cpp.llama_cpp_reference(model_path, n_ctx=256, n_threads=args.threads, verbose=False)
    model_ptr = ref._model.model
    vocab = llama_cpp.llama_model_get_vocab(model_ptr)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    rng = np.random.default_rng(0)
    # Ordinary token ids (not control tokens), different for every sequence: no cell is shared.
    tokens = rng.integers(1000, min(n_vocab, 60000), size=(args.sequences, max(args.lengths) + args.steps * len(args.lengths)))
    print(f"{args.sequences} sequences, lengths {args.lengths}, {args.steps} timed steps each, "
          f"{args.threads} threads, n_swa {llama_cpp.llama_model_n_swa(model_ptr)}\n", flush=True)
    rows = []
    for name in args.layouts.split(","):
        rows += run_layout(llama_cpp, model_ptr, name, args, tokens)
    base = {r["layout"]: r["tokens_per_second"] for r in rows if r["length"] == args.lengths[0]}
    table = [[r["layout"], r["length"], r["cells_in_use"], 1000 * r["step_seconds"], r["tokens_per_second"],
              C.ratio(r["tokens_per_second"], base[r["layout"]])] for r in rows]
    print()
    print(C.table(["layout", "tokens/seq", "cells", "ms/step", "tok/s", f"tok/s vs L={args.lengths[0]}"], table))
    C.write_json(args.out, {"environment": C.environment(model_path, args.threads), "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                            "rows": rows})


if __name__ == "__main__":
    main()
