#!/usr/bin/env python
"""Tree reallocation vs fresh reallocation (issue: continue the trees where the model was unsure).

On each dataset, with one loaded model and the same seed for every run:
  Full Parallel at M, full EAGer with fresh reallocation and with tree reallocation at each θ, and
  Full Parallel at 2M. Per run: Pass@k, Cons@k, #T (generated tokens), reprocessed tokens (prefixes
  of continued trees prefilled again), sequences, wall; and what the extras did: how many prompts got
  them, how many of those they solved, and how many extras brought an answer the prompt's phase (a)
  had not produced (new answers), the measure of exploration.

Defaults (the issue's): capitals dev set (100 prompts, 16 tokens, stop at a newline), θ ∈ {0.75, 1.0};
GSM8K, first 50 prompts (96 tokens, stop at a blank line), θ ∈ {2.0, 2.5}; M = 8, T = 0.6.

    python benchmarks/eval_tree.py                       # both datasets, about 40 minutes on 2 cores
    python benchmarks/eval_tree.py --datasets capitals   # a few minutes
Writes benchmarks/results/eval_tree.json (a dataset's figures replace its earlier ones; the others are
kept) and a Pass@k-vs-#T plot beside it (eval_tree.png).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import _common as C

import eager_cpp  # noqa: E402
from eager_cpp.answers.scoring import scorer_for_dataset  # noqa: E402

DATASETS = {
    "capitals": dict(file="capitals_dev_100.jsonl", limit=100, thetas="0.75,1.0", max_new_tokens=16, stop="\n"),
    "gsm8k": dict(file="gsm8k_train_200.jsonl", limit=50, thetas="2.0,2.5", max_new_tokens=96, stop="\n\n"),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="path of a .gguf model (default: the default model)")
    p.add_argument("--datasets", default="capitals,gsm8k", help="comma-separated: capitals, gsm8k")
    p.add_argument("-M", "--max-sequences", type=C.positive, default=8)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--capitals-thetas", default=DATASETS["capitals"]["thetas"])
    p.add_argument("--gsm8k-thetas", default=DATASETS["gsm8k"]["thetas"])
    p.add_argument("--capitals-limit", type=C.positive, default=DATASETS["capitals"]["limit"])
    p.add_argument("--gsm8k-limit", type=C.positive, default=DATASETS["gsm8k"]["limit"])
    p.add_argument("--gsm8k-max-new-tokens", type=C.positive, default=DATASETS["gsm8k"]["max_new_tokens"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--out", type=Path, default=C.default_out("eval_tree"))
    p.add_argument("--fresh", action="store_true",
                   help="drop the other datasets' figures already in --out (default: keep them, so the datasets "
                        "can run one at a time into one file and one plot)")
    args = p.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    for d in args.datasets:
        if d not in DATASETS:
            p.error(f"unknown dataset {d!r}; expected capitals or gsm8k")
    args.thetas = {"capitals": C.csv_values(p, args.capitals_thetas, float, "capitals-thetas", 0.0),
                   "gsm8k": C.csv_values(p, args.gsm8k_thetas, float, "gsm8k-thetas", 0.0)}
    return args


def extras_report(result: Any) -> dict[str, Any]:
    """What the reallocated sequences did, per prompt that got any."""
    given = solved = extras = new_answers = 0
    for p in result.prompts:
        first = [s for s in p.sequences if s.round == 0]
        later = [s for s in p.sequences if s.round > 0]
        if not later:
            continue
        given += 1
        extras += len(later)
        seen = {s.answer for s in first}
        for s in later:
            if s.answer not in seen:
                new_answers += 1
                seen.add(s.answer)
        if any(s.correct for s in later) and not any(s.correct for s in first):
            solved += 1
    return {"prompts_given_extras": given, "prompts_solved_by_extras": solved, "extras": extras,
            "new_answers": new_answers, "new_answer_share": C.ratio(new_answers, extras) if extras else 0.0}


def run_one(model: Any, prompts: list[str], answers: list[str], scorer: Any, label: str, method: str,
            m: int, theta: float, reallocation: str, spec: dict, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    r = eager_cpp.run(model, prompts, method=method, max_sequences=m, entropy_threshold=theta,
                      temperature=args.temperature, max_new_tokens=spec["max_new_tokens"], stop=spec["stop"],
                      seed=args.seed, answers=answers, scorer=scorer, reallocation=reallocation)
    wall = time.perf_counter() - t0
    metrics = r.metrics(ks=(m,))
    row = {"run": label, "method": method, "reallocation": reallocation if method == "eager" else "-",
           "M": m, "theta": theta if method != "parallel" else None,
           "pass@k": metrics["pass@k"], "cons@k": metrics["cons@k"], "pass_rate": metrics["pass_rate"],
           "tokens": r.stats.generated_tokens, "reprocessed_tokens": r.stats.reprocessed_tokens,
           "sequences": r.stats.sequences, "unspent": r.stats.unspent_sequences, "wall_seconds": wall,
           **extras_report(r)}
    print(f"    {label:<24} Pass@k {row['pass@k']:.3f}  Cons@k {row['cons@k']:.3f}  #T {row['tokens']:>7}  "
          f"reproc {row['reprocessed_tokens']:>6}  #S {row['sequences']:>5}  wall {wall:6.1f} s", flush=True)
    return row


def run_dataset(model: Any, name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = dict(DATASETS[name])
    if name == "gsm8k":
        spec["max_new_tokens"] = args.gsm8k_max_new_tokens
    limit = args.capitals_limit if name == "capitals" else args.gsm8k_limit
    path = C.DATA_DIR / spec["file"]
    records = C.load_prompts(path, limit)
    prompts, answers = [r["prompt"] for r in records], [str(r["answer"]) for r in records]
    scorer = scorer_for_dataset(str(path))
    m = args.max_sequences
    print(f"\n{name}: {len(prompts)} prompts, M={m}, T={args.temperature}, max_new_tokens={spec['max_new_tokens']}, "
          f"stop={spec['stop']!r}, θ={args.thetas[name]}, seed={args.seed}", flush=True)
    rows = [run_one(model, prompts, answers, scorer, f"Full Parallel M={m}", "parallel", m, 0.0, "fresh", spec, args)]
    for theta in args.thetas[name]:
        for mode in ("fresh", "tree"):
            rows.append(run_one(model, prompts, answers, scorer, f"EAGer {mode} θ={theta}", "eager", m, theta, mode,
                                spec, args))
    rows.append(run_one(model, prompts, answers, scorer, f"Full Parallel M={2 * m}", "parallel", 2 * m, 0.0, "fresh",
                        spec, args))
    print()
    print(C.table(["run", "Pass@k", "Cons@k", "#T", "reprocessed", "#S", "wall s", "got extras", "solved by them",
                   "new answers / extras"],
                  [[r["run"], r["pass@k"], r["cons@k"], r["tokens"], r["reprocessed_tokens"], r["sequences"],
                    r["wall_seconds"], r["prompts_given_extras"], r["prompts_solved_by_extras"],
                    f"{r['new_answers']}/{r['extras']}"] for r in rows], digits=3))
    gain = []
    for theta in args.thetas[name]:
        fresh = next(r for r in rows if r["reallocation"] == "fresh" and r["theta"] == theta)
        tree = next(r for r in rows if r["reallocation"] == "tree" and r["theta"] == theta)
        d = tree["pass@k"] - fresh["pass@k"]
        gain.append(d)
        print(f"  θ={theta}: tree - fresh Pass@k {100 * d:+.1f} points at {C.ratio(tree['tokens'], fresh['tokens']):.2f}x "
              f"the #T (+{tree['reprocessed_tokens']} reprocessed)")
    return {"settings": {"prompts": len(prompts), "max_sequences": m, "temperature": args.temperature, "seed": args.seed,
                         "max_new_tokens": spec["max_new_tokens"], "stop": spec["stop"], "thetas": args.thetas[name],
                         "data": spec["file"]},
            "rows": rows, "tree_minus_fresh_pass_at_k": gain}


def plot(payload: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  (no plot: matplotlib is not installed)")
        return
    names = [n for n in DATASETS if n in payload["datasets"]]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.2), squeeze=False)
    styles = {"parallel": ("#555555", "s"), "fresh": ("#d62728", "o"), "tree": ("#2ca02c", "^")}
    for ax, name in zip(axes[0], names):
        rows = payload["datasets"][name]["rows"]
        for key, (color, marker) in styles.items():
            chosen = [r for r in rows if (r["method"] == "parallel") == (key == "parallel")
                      and (key == "parallel" or r["reallocation"] == key)]
            chosen.sort(key=lambda r: r["tokens"])
            label = {"parallel": "Full Parallel (M, 2M)", "fresh": "EAGer, fresh reallocation",
                     "tree": "EAGer, tree reallocation"}[key]
            ax.plot([r["tokens"] for r in chosen], [r["pass@k"] for r in chosen], color=color, marker=marker,
                    label=label, lw=1)
            for r in chosen:
                tag = f"M={r['M']}" if key == "parallel" else f"θ={r['theta']}"
                ax.annotate(tag, (r["tokens"], r["pass@k"]), fontsize=7, xytext=(4, -10), textcoords="offset points")
        ax.set_title(f"{name}: Pass@k vs generated tokens")
        ax.set_xlabel("#T (generated tokens)")
        ax.set_ylabel("Pass@k")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    C.warn_if_busy()
    path = C.model_path(args.model)
    model = eager_cpp.Model(path, n_threads=args.threads)
    payload: dict[str, Any] = {"benchmark": "eval_tree", "environment": C.environment(path, model.n_threads or 0),
                               "datasets": {}}
    earlier = json.loads(args.out.read_text()) if args.out.exists() and not args.fresh else {}
    for name, figures in earlier.get("datasets", {}).items():
        if name not in args.datasets:  # a dataset run separately before keeps its figures and its environment
            payload["datasets"][name] = dict(figures, environment=figures.get("environment", earlier.get("environment")))
    for name in args.datasets:
        payload["datasets"][name] = dict(run_dataset(model, name, args), environment=payload["environment"])
        C.write_json(args.out, payload)
    plot(payload, args.out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
