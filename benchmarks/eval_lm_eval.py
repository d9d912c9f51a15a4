#!/usr/bin/env python
"""Issue 39: lm-eval's own metrics on eager_cpp's samples against eager_cpp's metrics on the same samples.

Runs the shipped lm-eval tasks through ``lm_eval.simple_evaluate`` with eager_cpp as the model (Full Parallel and
EAGer-init, θ = 2.0 on GSM8K and 1.0 on capitals), k = M = 8 samples per document (the task's ``repeats``),
offline on the repository's data:

- ``eager_gsm8k``: the first 16 GSM8K prompts (4-shot), max_gen_toks 128, stop at "Question:" / "\\n\\n";
- ``eager_capitals``: the first 32 held-out capitals (3-shot), max_gen_toks 16 (the default model gets more than
  half of them, where GSM8K's answers are almost all wrong: the pairs there are mostly zeros).

For each, per lm-eval filter: lm-eval's exact_match beside eager_cpp's metric on the k strings lm-eval scored
(``eager_cpp.lm_eval.agreement``: maj@8 ~ Cons@k, first ~ the first sample, mean@8 ~ Pass Rate; eager_cpp's
Pass@k on them too), every document where they differ with its cause, and for EAGer-init eager_cpp's Cons@k and
Pass@k on the n <= 8 distinct sequences it made (the copies cycle through them: eager_cpp.lm_eval.requests).

    python benchmarks/eval_lm_eval.py [--gsm8k-limit 16] [--capitals-limit 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import DATA_DIR, default_out

import eager_cpp.lm_eval as backend
from eager_cpp.answers.metrics import run_metrics
from eager_cpp.answers.scoring import default_scorer, score_prompts
from eager_cpp.lm_eval.agreement import compare_samples
from eager_cpp.lm_eval.model import EagerCppLM

TASKS = {  # task -> (eager_cpp's scorer for its answers, generation settings changed from the task's)
    "eager_gsm8k": ("gsm8k", {"max_gen_toks": 128}),
    "eager_capitals": ("first_line", {}),
}


def distinct_metrics(lm: EagerCppLM, golds: dict[Any, str], lm_maj: dict[Any, float], scorer: Any) -> dict[str, Any]:
    """eager_cpp's metrics on the sequences each prompt really has (EAGer-init: n <= M, no copies repeated), and
    the documents whose Cons@k there differs from lm-eval's maj@k on the k copies."""
    prompts = [prompt for _, prompt in lm.generations]
    docs = [group.document[1] for group, _ in lm.generations]
    score_prompts(prompts, [golds[d] for d in docs], scorer)
    m = run_metrics(prompts, ks=())
    out = {k: m[k] for k in ("pass@k", "cons@k", "pass_rate", "mean_sequences", "tokens")}
    k = lm.generations[0][0].copies
    out["documents_n_not_dividing_k"] = sum(1 for p in prompts if k % p.n_sequences)
    out["documents_cons_differs_from_lm_eval_maj"] = [
        d for d, row in zip(docs, m["per_prompt"]) if float(row["cons"]) != lm_maj[d]]
    return out


def run_one(task: str, method: str, args: argparse.Namespace) -> dict[str, Any]:
    style, changes = TASKS[task]
    limit = args.gsm8k_limit if task == "eager_gsm8k" else args.capitals_limit
    config = backend.task_config(task, repeats=args.k, data_dir=DATA_DIR)
    config["generation_kwargs"] = dict(config["generation_kwargs"], **changes)
    options = {"method": method, "n_threads": args.threads, "seed": args.seed}
    if method != "parallel":
        options["entropy_threshold"] = args.theta if task == "eager_gsm8k" else args.capitals_theta
    if args.model:
        options["model_path"] = args.model
    lm = EagerCppLM(**options)
    from lm_eval import simple_evaluate

    start = time.perf_counter()
    out = simple_evaluate(model=lm, tasks=[config], limit=limit, log_samples=True,
                          task_manager=backend.task_manager())
    wall = time.perf_counter() - start
    samples = out["samples"][task]
    golds = {s["doc_id"]: str(s["target"]) for s in samples}
    lm_maj = {s["doc_id"]: float(s["exact_match"]) for s in samples if s["filter"].startswith("maj")}
    scorer = default_scorer(style)
    report = compare_samples(samples, scorer)
    return {"task": task, "method": method, "k": args.k, "n_docs": report["n_docs"], "wall_seconds": round(wall, 1),
            "lm_eval_results": {k: v for k, v in out["results"][task].items() if k.startswith("exact_match,")},
            "filters": report["filters"], "eager_cpp_pass@k_same_samples": report["eager_cpp_pass@k"],
            "disagreements": report["disagreements"], "distinct_sequences": distinct_metrics(lm, golds, lm_maj, scorer)}


def print_row(row: dict[str, Any]) -> None:
    d = row["distinct_sequences"]
    print(f"\n{row['task']} {row['method']}: {row['n_docs']} documents, k = {row['k']}, {row['wall_seconds']} s, "
          f"{d['mean_sequences']:.2f} distinct sequences per document, {d['tokens']} tokens")
    print(f"  {'lm-eval filter':<16}{'lm-eval exact_match':>20}   {'eager_cpp, same samples':<26}")
    for f in row["filters"]:
        ours = f"{f['eager_cpp']:.4f} ({f['eager_cpp_metric']})" if "eager_cpp" in f else "-"
        print(f"  {f['filter']:<16}{f['lm_eval']:>20.4f}   {ours:<26}")
    print(f"  eager_cpp Pass@k on the same samples: {row['eager_cpp_pass@k_same_samples']:.4f}; on the distinct "
          f"sequences: Pass@k {d['pass@k']:.4f}, Cons@k {d['cons@k']:.4f} ({d['documents_n_not_dividing_k']} "
          f"documents with n not dividing k; Cons@k differs from maj@k on documents "
          f"{d['documents_cons_differs_from_lm_eval_maj']})")
    for x in row["disagreements"]:
        print(f"  differs: document {x['doc_id']} {x['filter']}: lm-eval {x['lm_eval']} eager_cpp {x['eager_cpp']} "
              f"({x['cause']}; gold {x['gold']!r}, lm-eval {x['lm_eval_answer']!r}, "
              f"eager_cpp {x['eager_cpp_answers']!r})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a .gguf model (default: eager_cpp.default_model_path())")
    p.add_argument("--gsm8k-limit", type=int, default=16)
    p.add_argument("--capitals-limit", type=int, default=32)
    p.add_argument("-k", type=int, default=8, help="samples per document: the task's repeats, eager_cpp's M")
    p.add_argument("--theta", type=float, default=2.0, help="EAGer-init's entropy threshold θ on GSM8K")
    p.add_argument("--capitals-theta", type=float, default=1.0, help="θ on capitals (short answers branch less)")
    p.add_argument("--methods", default="parallel,eager_init")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=default_out("eval_lm_eval"))
    args = p.parse_args()
    backend.register()
    rows = []
    for task in TASKS:
        for method in args.methods.split(","):
            rows.append(run_one(task, method, args))
            print_row(rows[-1])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
