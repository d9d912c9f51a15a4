"""Golden outputs of the engine, for refactors that must change no output.

    python benchmarks/engine_golden.py record before.json      # before the first edit
    python benchmarks/engine_golden.py record after.json       # after each stage
    python benchmarks/engine_golden.py compare before.json after.json

A refactor keeps the same decisions in the same batch order, so on the same machine its tokens,
entropies (as exact float bits), parents, branch steps, finish reasons, steps and token counts are
bit-identical. llama.cpp's kernels differ by CPU, so a golden file only holds on the machine that
recorded it: it is a development tool, not a test.

The cases cover every path of the engine: Full Parallel, EAGer-init with a fixed threshold and with
the p99 floor, greedy decoding, admission under a small live-sequence limit, prompt-prefix sharing on
and off (few-shot GSM8K), fresh and tree reallocation (branch seeds), seeds of several ranks at one
point and at different points, built by hand at the engine level, and the KV cache as a budget:
preemption with recompute, samples held back and prompts started staggered when lengths are known, one
prompt pausing its own sequences, "auto" growing the cache, and per-sequence streams, fixed and growing. The stats kept
include every KV count (cells, peak, grows, preemptions, recomputed tokens).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from pathlib import Path

import eager_cpp
from eager_cpp import _core

DATA = Path(__file__).resolve().parent.parent / "data"
VOLATILE = ("seconds", "tokens_per_second")  # timings differ run to run; everything else must not


def load(name: str, n: int) -> list[dict]:
    with open(DATA / name, encoding="utf-8") as f:
        return [json.loads(line) for line in f][:n]


def bits(x: float) -> str:
    return struct.pack("<f", x).hex()  # the exact float32 the engine produced


def api_case(model: eager_cpp.Model, prompts: list[str], **kw) -> dict:
    d = eager_cpp.run(model, prompts, **kw).to_dict()
    d["stats"] = {k: v for k, v in d["stats"].items() if not any(s in k for s in VOLATILE)}
    for p in d["prompts"]:
        for s in p["sequences"]:
            s["entropies"] = [bits(h) for h in s.get("entropies") or []]
            if s.get("branch_entropy") is not None:
                s["branch_entropy"] = bits(s["branch_entropy"])
    d.pop("settings", None)  # the recorded options; a refactor may add fields there
    return d


def core_case(model: eager_cpp.Model, prompts: list[str], seeds_of: list[list[tuple]], **cfg) -> dict:
    config = _core.EngineConfig()
    config.method = _core.Method.EAGER_INIT
    for k, v in cfg.items():
        setattr(config, k, v)
    jobs = [_core.PromptJob(model.tokenize(p), max(8, len(s)), 1.0, i, 0,
                            [_core.BranchSeed(list(pre), list(exc), rank) for pre, exc, rank in s])
            for i, (p, s) in enumerate(zip(prompts, seeds_of))]
    with model.exclusive():
        out = _core.generate(model._model, config, jobs, None)
    s = out.stats
    return {
        "stats": {k: getattr(s, k) for k in ("steps", "generated_tokens", "prompt_tokens", "shared_prompt_tokens",
                                             "reprocessed_tokens", "max_live_sequences")},
        "prompts": [{"steps": p.steps, "prompt_tokens": p.prompt_tokens, "sequences": [
            {"own": list(q.own_tokens), "entropies": [bits(h) for h in q.entropies], "parent": q.parent,
             "branch_step": q.branch_step, "branch_entropy": bits(q.branch_entropy), "text": q.text.hex(),
             "finish": q.finish_reason, "marker": q.marker_step} for q in p.sequences]} for p in out.prompts],
    }


def cases(model: eager_cpp.Model) -> dict[str, dict]:
    caps = load("capitals_dev_100.jsonl", 12)
    gsm = load("gsm8k_train_200.jsonl", 5)
    cq = [r["prompt"] for r in caps]
    ca = [r["answer"] for r in caps]
    gq = [r["prompt"] for r in gsm]
    short = dict(temperature=0.6, max_new_tokens=16, stop="\n", seed=3)
    out = {
        "parallel": api_case(model, cq[:6], method="parallel", max_sequences=4, **short),
        "eager_init_fixed": api_case(model, cq, method="eager_init", max_sequences=8, entropy_threshold=1.0, **short),
        "eager_init_p99": api_case(model, cq[:8], method="eager_init", max_sequences=6, entropy_threshold=0.5,
                                   threshold_mode="p99", **short),
        "greedy": api_case(model, cq[:6], method="eager_init", max_sequences=4, entropy_threshold=0.8,
                           temperature=0.0, max_new_tokens=12, stop="\n"),
        "admission_small": api_case(model, cq, method="eager_init", max_sequences=6, entropy_threshold=0.7,
                                    max_live_sequences=4, **short),
        "no_record": api_case(model, cq[:6], method="eager_init", max_sequences=6, entropy_threshold=1.0,
                              record_entropies=False, **short),
        "gsm_shared": api_case(model, gq, method="eager_init", max_sequences=4, entropy_threshold=1.5,
                               max_new_tokens=40, temperature=0.6, max_live_sequences=8, share_prompt_prefixes=True),
        "gsm_unshared": api_case(model, gq, method="eager_init", max_sequences=4, entropy_threshold=1.5,
                                 max_new_tokens=40, temperature=0.6, max_live_sequences=8,
                                 share_prompt_prefixes=False),
        "eager_tree": api_case(model, cq, method="eager", answers=ca, max_sequences=8, entropy_threshold=1.0,
                               reallocation="tree", **short),
        "adapt_fresh": api_case(model, cq, method="eager_adapt", max_sequences=6, entropy_threshold=0.7, **short),
        "filters": api_case(model, cq[:6], method="eager_init", max_sequences=6, entropy_threshold=1.0, top_k=8,
                            top_p=0.9, min_p=0.02, **short),
    }
    # The KV cache as a budget: reactive preemption and recompute (unknown lengths), samples held back and
    # prompts started staggered (known lengths), one prompt pausing its own sequences, "auto" growing the
    # cache, and per-sequence streams (ids compacted as sequences finish).
    runon = cq[10:12] + ["a a a a a a a a a a a a", "1 2 1 2 1 2 1 2 1 2 1 2", "x y z x y z x y z x y z",
                         "la la la la la la la la"]
    known = dict(max_sequences=4, max_new_tokens=100, ignore_eos=True, n_ctx=256, temperature=0.8, seed=4)
    out.update({
        "preempt_reactive": api_case(model, runon, method="eager_init", max_sequences=4, entropy_threshold=0.3,
                                     temperature=0.6, max_new_tokens=60, stop="\n", seed=1, n_ctx=256),
        "preempt_parallel_known": api_case(model, runon[:2], method="parallel", **known),
        "preempt_eager_staggered": api_case(model, runon[:2], method="eager_init", entropy_threshold=0.3, **known),
        "preempt_one_prompt": api_case(model, runon[:1], method="parallel", max_sequences=4, temperature=0.0,
                                       max_new_tokens=90, ignore_eos=True, n_ctx=256),
        "auto_grows": api_case(model, runon[:2], method="parallel", max_sequences=4, temperature=0.8,
                               max_new_tokens=200, ignore_eos=True, seed=2, max_live_sequences=8),
        "streams": api_case(model, cq[:6], method="eager_init", max_sequences=4, entropy_threshold=0.7,
                            kv_layout="per_sequence", **short),
        # Streams that start at 256 cells and grow (into the window cache's size, capped at the job's length).
        "streams_grow": api_case(model, runon[:2], method="eager_init", max_sequences=4, entropy_threshold=0.3,
                                 temperature=0.8, max_new_tokens=300, ignore_eos=True, seed=2, kv_layout="per_sequence"),
    })
    # Seeds by hand: the same point at ranks 1..3, a deeper point sharing a start, a point of its own.
    greedy = eager_cpp.run(model, [cq[0]], method="parallel", max_sequences=1, temperature=0.0, max_new_tokens=6)
    path = greedy.prompts[0].sequences[0].token_ids
    seeds = [((), (path[0],), 1), ((), (path[0],), 2), ((), (path[0],), 3),
             (tuple(path[:3]), (path[3],), 1), (tuple(path[:2]), (), 1), (tuple(path[:3]), (path[3],), 2)]
    out["seeds"] = core_case(model, [cq[0], cq[1]], [seeds, [((), (), 1)]], max_new_tokens=10,
                             stop=["\n"], seed=5, n_threads=2, share_prompt_prefixes=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("out")
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    args = ap.parse_args()
    if args.cmd == "record":
        t0 = time.time()
        model = eager_cpp.Model(eager_cpp.default_model_path(), n_threads=2)
        got = cases(model)
        Path(args.out).write_text(json.dumps(got, sort_keys=True))
        n_tok = sum(len(s.get("own_tokens", s.get("own", []))) for c in got.values() for p in c["prompts"]
                    for s in p["sequences"])
        print(f"recorded {len(got)} cases, {n_tok} generated tokens, in {time.time() - t0:.0f} s -> {args.out}")
        return 0
    a = json.loads(Path(args.a).read_text())
    b = json.loads(Path(args.b).read_text())
    bad = 0
    for name in sorted(set(b) - set(a)):
        # A case added after the older recording has nothing to be compared with: named, not counted.
        print(f"{name:18s} new case, not in {args.a}: not compared")
    for name in sorted(a):
        # A figure the engine reports that the older recording did not have is no change of output: it is
        # named, not compared. Every figure both have must be equal.
        new_keys = sorted(set(b.get(name, {}).get("stats", {})) - set(a.get(name, {}).get("stats", {})))
        if new_keys:
            b[name] = dict(b[name], stats={k: v for k, v in b[name]["stats"].items() if k not in new_keys})
            print(f"{name:18s} new figures, not compared: {', '.join(new_keys)}")
        same = a.get(name) == b.get(name)
        bad += not same
        n = sum(len(s.get("own_tokens", s.get("own", []))) for p in a.get(name, {}).get("prompts", [])
                for s in p["sequences"])
        print(f"{name:18s} {'identical' if same else 'DIFFERENT'}  ({n} tokens)")
    print(f"{len(a) - bad} of {len(a)} cases bit-identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
