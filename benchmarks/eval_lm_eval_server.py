#!/usr/bin/env python
"""Issue 39: the same lm-eval task through lm-eval's own `gguf` backend against llama-server, and through eager_cpp.

The shipped ``eager_capitals`` task (held-out capitals, 3-shot, k = 8 copies of each request) on the first
--limit documents, with lm-eval's ``simple_evaluate`` each time, in this order:

1. ``--model gguf`` against llama-server built from the same llama.cpp (benchmarks/llama_server.py; build it
   first). lm-eval 0.4.13's gguf backend sends the copies one request at a time and always asks for
   temperature 0 (its ``self.temperature``; it ignores the task's sampling settings), so its 8 copies are 8
   greedy answers: maj@8 there is greedy accuracy.
2. eager_cpp Full Parallel greedy (``gen_kwargs`` do_sample false): the server's setting, all copies in one
   prompt with M = 8. Its accuracy must match (1) up to llama.cpp's batch noise.
3. eager_cpp Full Parallel at the task's temperature (0.6) and 4. EAGer-init (θ --theta) at it: what the
   method changes, tokens and wall against (1) and (3).

Tokens: eager_cpp's #T (its engine's generated tokens, a shared prefix once); for the server, which lm-eval does
not report, the model's tokenizer on each returned answer with the leading space lm-eval's gguf backend strips
put back (every copy is a request of its own there, so every copy counts). Wall is simple_evaluate's.

    python benchmarks/llama_server.py build          # once
    python benchmarks/eval_lm_eval_server.py [--limit 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from _common import DATA_DIR, add_common_args, environment, model_path, ratio, table, write_json

import eager_cpp
import eager_cpp.lm_eval as backend
from eager_cpp.lm_eval.model import EagerCppLM

TASK = "eager_capitals"


def evaluate(model: Any, args: argparse.Namespace, **kw: Any) -> dict[str, Any]:
    """simple_evaluate on the task; lm-eval's maj@8 and first, the wall, the returned strings."""
    from lm_eval import simple_evaluate

    config = backend.task_config(TASK, repeats=args.k, data_dir=DATA_DIR)
    start = time.perf_counter()
    out = simple_evaluate(model=model, tasks=[config], limit=args.limit, log_samples=True,
                          task_manager=backend.task_manager(), **kw)
    wall = time.perf_counter() - start
    results = out["results"][TASK]
    samples = [s for s in out["samples"][TASK] if s["filter"] == "first"]
    texts = [text for s in samples for resp in s["resps"] for text in resp]
    row = {"maj@8": results.get("exact_match,maj@8"), "first": results.get("exact_match,first"),
           "wall_seconds": round(wall, 2), "docs": len(samples), "texts": texts}
    if isinstance(model, EagerCppLM):  # the engine's own count: #T
        row["tokens"] = sum(len(s.own_tokens) for _, prompt in model.generations for s in prompt.sequences)
        row["sequences_per_doc"] = sum(p.n_sequences for _, p in model.generations) / max(1, len(model.generations))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, "eval_lm_eval_server")
    ap.add_argument("--limit", type=int, default=32, help="documents of the task (default 32)")
    ap.add_argument("--k", type=int, default=8, help="copies per request, M (default 8)")
    ap.add_argument("--theta", type=float, default=1.0, help="EAGer-init's θ (default 1.0)")
    args = ap.parse_args()
    model = model_path(args.model)
    import llama_server as LS

    if not LS.binary_path().exists():
        sys.exit("llama-server is not built: python benchmarks/llama_server.py build")
    tokenizer = eager_cpp.Model(model, n_threads=1)
    rows = {}
    with LS.LlamaServer(model, slots=8, threads=args.threads, n_ctx=8192) as server:
        rows["llama-server (gguf backend, greedy)"] = evaluate(
            "gguf", args, model_args=f"base_url=http://127.0.0.1:{server.port}")
    common = {"model_path": model, "n_threads": args.threads, "seed": 0}
    rows["eager_cpp Full Parallel, greedy"] = evaluate(EagerCppLM(method="parallel", **common), args,
                                                       gen_kwargs="do_sample=False,temperature=0")
    rows["eager_cpp Full Parallel, T 0.6"] = evaluate(EagerCppLM(method="parallel", **common), args)
    rows[f"eager_cpp EAGer-init θ {args.theta}, T 0.6"] = evaluate(
        EagerCppLM(method="eager_init", entropy_threshold=args.theta, **common), args)
    server_row = rows["llama-server (gguf backend, greedy)"]
    for row in rows.values():
        texts = row.pop("texts")
        if "tokens" not in row:  # the server's answers, stripped by lm-eval's gguf backend
            row["tokens"] = sum(len(tokenizer.tokenize(" " + t, add_special=False)) if t else 0 for t in texts)
        row["wall_over_server"] = ratio(row["wall_seconds"], server_row["wall_seconds"])
    fp = rows["eager_cpp Full Parallel, T 0.6"]
    for row in rows.values():
        row["tokens_over_full_parallel"] = ratio(row["tokens"], fp["tokens"])
        row["wall_over_full_parallel"] = ratio(row["wall_seconds"], fp["wall_seconds"])
    print(table(["run", "maj@8", "first", "tokens", "wall s", "wall / server", "tokens / FP", "wall / FP"],
                [[name, r["maj@8"], r["first"], r["tokens"], r["wall_seconds"], r["wall_over_server"],
                  r["tokens_over_full_parallel"], r["wall_over_full_parallel"]] for name, r in rows.items()], digits=3))
    write_json(args.out, {"task": TASK, "limit": args.limit, "k": args.k, "theta": args.theta, "runs": rows,
                          "environment": environment(model, args.threads)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
