"""lm-eval's per-document metrics beside eager_cpp's on the very same samples (docs/lm-eval.md's table).

Input: ``simple_evaluate(..., log_samples=True)["samples"][task]``: one entry per (document, filter), each with
the k strings the backend returned (``resps``), the gold (``target``), the filter's name and its ``exact_match``.
eager_cpp's side reads those k strings with one of its scorers (the dataset's: ``scorer_for_dataset``) and
computes, per document, as ``answers.metrics`` does:

- Cons@k: the majority of the extracted answers (grouped by normalised answer and verdict, ties to the first
  seen) is right. lm-eval's counterpart: a ``majority_vote`` filter's exact_match (filters named "maj...").
- the first sample is right: a ``take_first`` filter's exact_match (filters named "first...").
- Pass Rate: the share of the k samples that are right: exact_match of a list (no majority, no take_first,
  filters named "mean..."), which lm-eval averages over the list. Not Pass@k.
- Pass@k: one of the k samples is right; lm-eval's built-in filters have no counterpart (it is mean > 0).

Where the two differ on a document, ``disagreements`` lists it with its cause (``CAUSES``): lm-eval's
``majority_vote`` counts the samples its regex finds no answer in as votes for "[invalid]", where eager_cpp's
vote leaves answerless samples out ("invalid votes"); or the extraction or matching differs: lm-eval's regex and
exact string match (case ignored where the task says so) against eager_cpp's extractor and normalised, numeric
matching ("matching").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

from ..answers.metrics import compute_metrics
from ..answers.scoring import answer_extractor

__all__ = ["CAUSES", "ROLES", "compare_samples", "eager_metrics"]

# lm-eval filter name prefix -> the eager_cpp metric it computes on the same samples
ROLES = {"maj": "cons@k", "first": "first", "mean": "pass_rate"}


CAUSES = ("invalid votes", "matching")


def _cause(role: str, answers: Sequence[Optional[str]]) -> str:
    return CAUSES[0] if role == "cons@k" and any(a is None for a in answers) else CAUSES[1]


def _role(filter_name: str) -> Optional[str]:
    return next((metric for prefix, metric in ROLES.items() if filter_name.startswith(prefix)), None)


def eager_metrics(texts: Sequence[str], gold: str, scorer: Callable[[str, str], bool]) -> dict[str, Any]:
    """eager_cpp's metrics of one document's k samples: cons@k, pass@k, pass_rate, first, and the majority."""
    extract = answer_extractor(scorer)
    answers = [extract(t) for t in texts]
    correct = [bool(scorer(t, gold)) for t in texts]
    m = compute_metrics([{"answers": answers, "correct": correct, "generated_tokens": 0, "sequences": len(texts)}],
                        ks=())
    return {"cons@k": m["cons@k"], "pass@k": m["pass@k"], "pass_rate": m["pass_rate"],
            "first": float(correct[0]) if correct else 0.0, "majority": m["per_prompt"][0]["majority_answer"],
            "answers": answers}


def compare_samples(samples: Sequence[dict[str, Any]], scorer: Callable[[str, str], bool],
                    metric: str = "exact_match") -> dict[str, Any]:
    """Per filter: lm-eval's mean of `metric` and eager_cpp's counterpart on the same samples, and the documents
    where they differ (module docstring)."""
    docs: dict[Any, dict[str, Any]] = {}
    lm: dict[str, list[float]] = {}
    for s in samples:
        texts = list(s["resps"][0])
        doc = docs.setdefault(s["doc_id"], {"texts": texts, "gold": str(s["target"]), "lm_eval": {}, "filtered": {}})
        if doc["texts"] != texts:
            raise ValueError(f"document {s['doc_id']}: the filters saw different samples")
        doc["lm_eval"][s["filter"]] = float(s[metric])
        doc["filtered"][s["filter"]] = s["filtered_resps"]
        lm.setdefault(s["filter"], []).append(float(s[metric]))
    ours = {doc_id: eager_metrics(d["texts"], d["gold"], scorer) for doc_id, d in docs.items()}
    rows, disagreements = [], []
    for name, values in lm.items():
        role = _role(name)
        row = {"filter": name, "lm_eval": sum(values) / len(values), "eager_cpp_metric": role}
        if role is not None:
            row["eager_cpp"] = sum(ours[d][role] for d in docs) / len(docs)
            for doc_id, d in docs.items():
                if abs(d["lm_eval"][name] - ours[doc_id][role]) > 1e-9:
                    answers = ours[doc_id]["answers"]
                    disagreements.append({"doc_id": doc_id, "filter": name, "lm_eval": d["lm_eval"][name],
                                          "eager_cpp": ours[doc_id][role], "cause": _cause(role, answers),
                                          "gold": d["gold"], "lm_eval_answer": d["filtered"][name],
                                          "eager_cpp_answers": answers})
        rows.append(row)
    passed = sum(ours[d]["pass@k"] for d in docs) / len(docs) if docs else 0.0
    return {"n_docs": len(docs), "filters": rows, "eager_cpp_pass@k": passed, "disagreements": disagreements}
