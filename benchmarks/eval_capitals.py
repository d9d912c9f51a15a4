#!/usr/bin/env python
"""Issue "reallocation": Full Parallel, EAGer-init, EAGer-adapt and EAGer on the capitals set.

Default model, M = 8, T = 0.6, max_new_tokens = 16, stop at a newline, θ ∈ {0.5, 0.75, 1.0, 1.5, 2.0}.
Prints one table (Pass@k, Cons@k, Pass Rate, #T, #S, wall time) and writes it as JSON.

    python benchmarks/eval_capitals.py [--limit 100] [--out benchmarks/results/eval_capitals.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import eager_cpp
from eager_cpp.evaluation.evaluate import format_table, sweep
from eager_cpp.answers.scoring import scorer_for_dataset

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "capitals_dev_100.jsonl"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--thetas", default="0.5,0.75,1.0,1.5,2.0")
    p.add_argument("-M", "--max-sequences", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "eval_capitals.json")
    args = p.parse_args()
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()][: args.limit]
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    model = eager_cpp.Model(eager_cpp.default_model_path())
    thetas = [float(t) for t in args.thetas.split(",")]
    print(f"capitals: {len(prompts)} prompts, M={args.max_sequences}, T={args.temperature}, "
          f"max_new_tokens={args.max_new_tokens}, stop='\\n', θ={thetas}", flush=True)
    table = sweep(model, prompts, answers, ["parallel", "eager_init", "eager_adapt", "eager"], thetas,
                  [args.max_sequences], scorer_for_dataset(str(args.data)),
                  on_row=lambda r: print("  done:", r["method"], r["theta"], flush=True),
                  temperature=args.temperature, max_new_tokens=args.max_new_tokens, stop="\n", seed=args.seed)
    print(format_table(table))
    fp = table[0]
    print(f"\nFull Parallel Pass@k {fp['pass@k']:.3f}. Reallocation: prompts given budget / solved only by it:")
    for r in table[1:]:
        if r["method"] in ("eager_adapt", "eager"):
            print(f"  {r['method']:<11} θ={r['theta']}: {r['reallocated']} sequences to {r['prompts_given_budget']} "
                  f"prompts; {r['solved_by_reallocation']} prompts solved only by them")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": vars(args) | {"data": str(args.data), "out": str(args.out)},
                                    "rows": table}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
