#!/usr/bin/env python
"""eager_cpp's rules against the reference code's (rules="reference"), side by side on the same data.

For each dataset and M, EAGer-init once under each rule set (same seed), then from copies of that phase (a)
EAGer-adapt and, on the labelled capitals, full EAGer (eager_cpp.reallocate; the result's recorded rules
decide the matching, the unsolved set and the retry loop). Per run: the share of prompts whose phase (a)
reached M, b (the saved budget), |S| (the recipients), #S (mean sequences per prompt), #T, the tries, what
was left unspent, and Pass@k and Cons@k under each matching on the same samples (eager_cpp's `answers_match`
and majority vote; the reference's `is_correct` and `compute_cons_at_max`, eager_cpp.answers.reference).

Data: the capitals dev set (100 prompts, 16 tokens, stop at a newline, θ 1.0) and the first 16 few-shot
GSM8K prompts (128 tokens, stop at a new question, θ 2.0; the default model solves none, so only
EAGer-adapt runs there: every prompt would be "unsolved" for full EAGer). T 0.6, fixed θ, seed 0.

    python benchmarks/eval_reference.py            # M = 8 and 16: about 20 minutes on 2 cores
Writes benchmarks/results/eval_reference.json.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import _common as C

import eager_cpp  # noqa: E402
from eager_cpp.answers.metrics import majority_vote  # noqa: E402
from eager_cpp.answers.reference import reference_consensus, reference_correct  # noqa: E402
from eager_cpp.answers.scoring import answers_match, scorer_for_dataset  # noqa: E402

DATASETS = {
    "capitals": dict(file="capitals_dev_100.jsonl", limit=100, max_new_tokens=16, stop=["\n"], theta=1.0,
                     methods=("eager_adapt", "eager")),
    "gsm8k": dict(file="gsm8k_train_200.jsonl", limit=16, max_new_tokens=128, stop=["\n\n\n", "Question:"],
                  theta=2.0, methods=("eager_adapt",)),
}
RULES = ("eager_cpp", "reference")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="path of a .gguf model (default: the default model)")
    p.add_argument("--Ms", default="8,16", help="comma-separated M values (default: 8,16)")
    p.add_argument("--datasets", default="capitals,gsm8k", help="comma-separated: capitals, gsm8k")
    p.add_argument("--threads", type=C.positive, default=2)
    p.add_argument("--out", default=str(C.default_out("eval_reference")))
    args = p.parse_args(argv)
    args.Ms = C.csv_values(p, args.Ms, int, "Ms", 1, 256)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if not args.datasets or any(d not in DATASETS for d in args.datasets):
        p.error(f"--datasets takes names among {', '.join(DATASETS)}")
    return args


def matching_figures(result: Any) -> dict[str, float]:
    """Pass@k and Cons@k on the result's samples under both matchings (answers read once, by the scorer)."""
    n = len(result.prompts)
    ours_pass = ours_cons = ref_pass = ref_cons = 0
    for p in result.prompts:
        answers = [s.answer for s in p.sequences]
        mine = [answers_match(a, p.gold_answer) for a in answers]
        ours_pass += any(mine)
        _, key = majority_vote(answers, mine)
        ours_cons += bool(key and key[1])
        ref_pass += any(reference_correct(a, p.gold_answer) for a in answers)
        ref_cons += reference_consensus(answers, p.gold_answer)
    return {"pass@k_eager_cpp": ours_pass / n, "pass@k_reference": ref_pass / n,
            "cons@k_eager_cpp": ours_cons / n, "cons@k_reference": ref_cons / n}


def row_of(dataset: str, m: int, rules: str, method: str, result: Any, reached: float, wall: float) -> dict:
    plan = result.reallocation.plan if result.reallocation is not None else None
    return dict(dataset=dataset, M=m, rules=rules, method=method, reached_M=reached,
                budget=plan.budget if plan else 0, recipients=len(plan.selected) if plan else 0,
                mean_sequences=sum(p.n_sequences for p in result.prompts) / len(result.prompts),
                max_sequences_of_a_prompt=max(p.n_sequences for p in result.prompts),
                tokens=result.stats.generated_tokens, tries=result.stats.reallocation_tries,
                unspent=result.stats.unspent_sequences, wall_seconds=wall, **matching_figures(result))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    path = C.model_path(args.model)
    model = eager_cpp.Model(path, n_threads=args.threads)
    rows: list[dict] = []
    for name in args.datasets:
        spec = DATASETS[name]
        data = C.load_prompts(C.DATA_DIR / spec["file"], spec["limit"])
        prompts, answers = [r["prompt"] for r in data], [str(r["answer"]) for r in data]
        scorer = scorer_for_dataset(spec["file"])
        for m in args.Ms:
            for rules in RULES:
                started = time.perf_counter()
                init = eager_cpp.run(model, prompts, method="eager_init", max_sequences=m,
                                     entropy_threshold=spec["theta"], temperature=0.6,
                                     max_new_tokens=spec["max_new_tokens"], stop=spec["stop"], seed=0,
                                     answers=answers, scorer=scorer, rules=rules)
                init_wall = time.perf_counter() - started
                reached = sum(p.n_sequences == m for p in init.prompts) / len(init.prompts)
                rows.append(row_of(name, m, rules, "eager_init", init, reached, init_wall))
                for method in spec["methods"]:
                    started = time.perf_counter()
                    result = eager_cpp.reallocate(model, copy.deepcopy(init), method=method, answers=answers,
                                                  scorer=scorer)
                    rows.append(row_of(name, m, rules, method, result, reached,
                                       init_wall + time.perf_counter() - started))
                print(C.table(["dataset", "M", "rules", "method", "reach M", "b", "|S|", "#S", "max nᵢ", "#T",
                               "tries", "unspent", "Pass ours", "Pass ref", "Cons ours", "Cons ref"],
                              [[r["dataset"], r["M"], r["rules"], r["method"], r["reached_M"], r["budget"],
                                r["recipients"], r["mean_sequences"], r["max_sequences_of_a_prompt"], r["tokens"],
                                r["tries"], r["unspent"], r["pass@k_eager_cpp"], r["pass@k_reference"],
                                r["cons@k_eager_cpp"], r["cons@k_reference"]] for r in rows[-1 - len(spec["methods"]):]]),
                      flush=True)
    C.write_json(args.out, {"environment": C.environment(path, args.threads), "datasets": DATASETS, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
