"""Per-prompt and aggregate metrics: Pass@k, Cons@k, Pass Rate, #T, #S, unbiased pass@k.

Per prompt, k is the number of sequences that prompt got (it differs between prompts under
EAGer), so ``pass@k`` and ``cons@k`` here are the paper's metrics, not the fixed-k estimator.
The fixed-k estimator of Chen et al. (2021) is reported separately as ``pass@{k}_unbiased``.

Input per prompt (a mapping):
    answers: list[str | None]   extracted answer of each sequence (None: nothing extracted)
    correct: list[bool]         whether each sequence was scored correct
    generated_tokens: int       #T of the prompt (shared prefixes counted once)
    sequences: int              #S of the prompt; must equal len(answers) == len(correct)
    confidences: list[float]    optional: a vote weight per sequence (``confidence_weights``);
                                when every prompt has them, ``cons_weighted@k`` is reported too

``run_metrics`` and ``consensus`` are these over a run's prompts (``results.PromptResult``, read by
attribute: this module imports no result type, so the results module can call it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from .scoring import answer_extractor, normalize_answer

__all__ = ["DEFAULT_WINDOW", "DEPARTURE_FACTOR", "MAX_WINDOW", "PromptScore", "compute_metrics", "confidence_weights",
           "confidence_window", "consensus",
           "departures", "majority_vote", "pass_at_k_unbiased", "run_metrics", "score_prompt", "trace_entropies",
           "trace_uncertainty", "weighted_vote"]

DEFAULT_WINDOW = 16  # tokens per confidence window on short traces (capitals answers are <= 16)
MAX_WINDOW = 2048  # DeepConf's group size, the window of the longest traces
DEPARTURE_FACTOR = 0.5  # vote weight kept per departure from the model's first choice (0.25-0.5 tied on capitals dev)

DEFAULT_KS: tuple[int, ...] = (1, 4, 8)


def pass_at_k_unbiased(n: int, c: int, k: int) -> float | None:
    """Unbiased pass@k estimator of Chen et al. (2021): 1 - C(n-c, k) / C(n, k).

    n: samples drawn, c: correct among them, k: budget being estimated.
    Uses the stable product form 1 - prod_{i=n-c+1}^{n} (1 - k/i), which avoids huge binomials.
    With fewer samples than k (n < k) there is no unbiased estimate: None. (Counting the prompt's
    observed pass instead would mix in another estimator, coverage with n samples, and differently
    across methods: EAGer-init leaves easy prompts with few sequences.) Raises ValueError for n < 0,
    k < 1 or c outside [0, n].
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0 <= c <= n:
        raise ValueError(f"c must be in [0, n={n}], got {c}")
    if n < k:
        return None
    if n - c < k:
        # Every k-subset contains a correct sample.
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def majority_vote(answers: Sequence[str | None], correct: Sequence[bool] | None = None) -> tuple[Any, Any]:
    """Majority answer of one prompt as (first raw answer of the group, group key).

    Votes are grouped by normalised answer, or by (normalised answer, correctness) when
    ``correct`` is given. None or empty-after-normalisation answers do not vote. Ties go to the
    group whose answer appeared first among the sequences (dicts keep insertion order and only a
    strictly larger count replaces the leader). (None, None) when nobody voted.
    """
    counts: dict[Any, int] = {}
    first_raw: dict[Any, str] = {}
    for k, ans in enumerate(answers):
        if ans is None:
            continue
        norm = normalize_answer(ans)
        if not norm:
            continue
        key: Any = norm if correct is None else (norm, bool(correct[k]))
        if key not in counts:
            counts[key] = 0
            first_raw[key] = ans
        counts[key] += 1
    best_key: Any = None
    best = 0
    for key, cnt in counts.items():
        if cnt > best:
            best_key, best = key, cnt
    if best_key is None:
        return None, None
    return first_raw[best_key], best_key


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float],
                  correct: Sequence[bool] | None = None) -> tuple[Any, Any]:
    """The confidence-weighted majority as (first raw answer of the group, group key); (None, None) if nobody voted.

    As ``majority_vote``: None or empty answers do not vote, groups are normalised answers, or
    (normalised answer, verdict) when ``correct`` is given; ties go to the group that appeared first.
    """
    if len(weights) != len(answers):
        raise ValueError(f"{len(answers)} answers but {len(weights)} weights")
    totals: dict[Any, float] = {}
    first_raw: dict[Any, str] = {}
    for k, ans in enumerate(answers):
        norm = normalize_answer(ans) if ans is not None else ""
        if not norm:
            continue
        key: Any = norm if correct is None else (norm, bool(correct[k]))
        if key not in totals:
            totals[key] = 0.0
            first_raw[key] = ans  # type: ignore[assignment]
        totals[key] += float(weights[k])
    best_key: Any = None
    best = -1.0
    for key, total in totals.items():
        if total > best:
            best_key, best = key, total
    if best_key is None:
        return None, None
    return first_raw[best_key], best_key


@dataclass(frozen=True)
class PromptScore:
    """Metrics of one prompt (``passed`` is reported as ``"pass"`` by ``to_dict``)."""

    passed: bool
    cons: bool
    pass_rate: float
    majority_answer: str | None
    n_sequences: int
    n_correct: int
    tokens: int
    unbiased: dict[int, float] = field(default_factory=dict)
    cons_weighted: bool | None = None  # the confidence-weighted vote is correct (None: no weights given)
    weighted_answer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the keys used in ``compute_metrics()["per_prompt"]``."""
        d: dict[str, Any] = {
            "pass": self.passed,
            "cons": self.cons,
            "pass_rate": self.pass_rate,
            "majority_answer": self.majority_answer,
            "n_sequences": self.n_sequences,
            "n_correct": self.n_correct,
            "tokens": self.tokens,
        }
        for k, v in self.unbiased.items():
            d[f"pass@{k}_unbiased"] = v
        if self.cons_weighted is not None:
            d["cons_weighted"] = self.cons_weighted
            d["weighted_answer"] = self.weighted_answer
        return d


def score_prompt(item: Mapping[str, Any], ks: Iterable[int] = DEFAULT_KS, index: int = 0) -> PromptScore:
    """Score one prompt given as the mapping described in the module docstring.

    ``index`` only serves error messages. Raises ValueError on inconsistent input rather than
    silently truncating.
    """
    try:
        answers = list(item["answers"])
        correct = [bool(x) for x in item["correct"]]
        tokens = int(item["generated_tokens"])
        n_seq = int(item["sequences"])
    except KeyError as e:
        raise ValueError(f"prompt {index}: missing key {e.args[0]!r}") from None
    if len(answers) != len(correct):
        raise ValueError(
            f"prompt {index}: {len(answers)} answers but {len(correct)} correctness flags"
        )
    if n_seq != len(correct):
        raise ValueError(f"prompt {index}: sequences={n_seq} but {len(correct)} sequences scored")
    if tokens < 0:
        raise ValueError(f"prompt {index}: generated_tokens must be >= 0, got {tokens}")

    n_correct = sum(correct)
    # Votes group by (normalised answer, the scorer's verdict): the scorer and the vote then never
    # disagree about a group. With an extractor that matches the scorer (the default scorers) the
    # verdict is the same across a normalised answer and the groups are the answers' own.
    majority_raw, majority_key = majority_vote(answers, correct)
    cons = majority_key is not None and majority_key[1]
    estimates = {k: pass_at_k_unbiased(n_seq, n_correct, k) for k in ks}
    unbiased = {k: v for k, v in estimates.items() if v is not None}  # absent where n < k
    cons_weighted: bool | None = None
    weighted_raw = None
    if item.get("confidences") is not None:
        weights = [float(w) for w in item["confidences"]]
        if len(weights) != n_seq:
            raise ValueError(f"prompt {index}: {len(weights)} confidences for {n_seq} sequences")
        weighted_raw, weighted_key = weighted_vote(answers, weights, correct)
        cons_weighted = weighted_key is not None and weighted_key[1]
    return PromptScore(
        passed=n_correct > 0,
        cons=cons,
        pass_rate=n_correct / n_seq if n_seq else 0.0,
        majority_answer=majority_raw,
        n_sequences=n_seq,
        n_correct=n_correct,
        tokens=tokens,
        unbiased=unbiased,
        cons_weighted=cons_weighted,
        weighted_answer=weighted_raw,
    )


def compute_metrics(
    per_prompt: Sequence[Mapping[str, Any]], ks: Iterable[int] = DEFAULT_KS
) -> dict[str, Any]:
    """Aggregate metrics over prompts.

    Returns ``pass@k``, ``cons@k``, ``cons_weighted@k`` (when every prompt has confidences), ``pass_rate``
    (means over prompts), ``tokens`` (total #T),
    ``mean_tokens_per_prompt``, ``mean_sequences`` (#S), ``n_prompts``, ``pass@{k}_unbiased``
    for each k in ``ks`` (mean over prompts) and ``per_prompt`` (list of ``PromptScore.to_dict()``).
    ``pass@{k}_unbiased`` is absent, overall and for a prompt, where a prompt has fewer sequences than k
    (no unbiased estimate; a mean over the other prompts would leave out the easy ones EAGer-init closes
    early). With no prompts every mean is 0.0 (not NaN, so the result stays JSON-serialisable).
    """
    ks = tuple(ks)
    for k in ks:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"every k in ks must be an int >= 1, got {k!r}")
    scores = [score_prompt(item, ks, i) for i, item in enumerate(per_prompt)]
    n = len(scores)

    def mean(values: Iterable[float]) -> float:
        return sum(values) / n if n else 0.0

    total_tokens = sum(s.tokens for s in scores)
    out: dict[str, Any] = {
        "pass@k": mean(float(s.passed) for s in scores),
        "cons@k": mean(float(s.cons) for s in scores),
        "pass_rate": mean(s.pass_rate for s in scores),
        "tokens": total_tokens,
        "mean_tokens_per_prompt": total_tokens / n if n else 0.0,
        "mean_sequences": mean(s.n_sequences for s in scores),
        "n_prompts": n,
    }
    if scores and all(s.cons_weighted is not None for s in scores):
        out["cons_weighted@k"] = mean(float(bool(s.cons_weighted)) for s in scores)
    for k in ks:
        if all(k in s.unbiased for s in scores):
            out[f"pass@{k}_unbiased"] = mean(s.unbiased[k] for s in scores)
    out["per_prompt"] = [s.to_dict() for s in scores]
    return out


# ----------------------------------------------------------------------------- trace confidence (label_free too)


def trace_entropies(sequence: Any, by_index: dict[int, Any]) -> list[float]:
    """Entropy of each of the sequence's tokens (``token_ids``), inherited prefix included.

    Steps before ``branch_step`` belong to the parent's trace (recursively); a step no ancestor recorded
    (record_entropies=False, or a parent missing from ``by_index``) is left out.
    """
    own = [float(h) for h in sequence.entropies]
    parent = by_index.get(sequence.parent) if sequence.parent is not None else None
    if sequence.branch_step <= 0 or parent is None or parent.index == sequence.index:
        return own
    inherited = trace_entropies(parent, by_index)
    # The parent's trace starts at its own step 0 too (token_ids are whole traces), so its first
    # branch_step entries are the child's prefix, as far as the parent recorded them.
    return inherited[: sequence.branch_step] + own


def confidence_window(length: int) -> int:
    """The length-aware window for a trace of `length` tokens: 16 up to 135 tokens, then an eighth of the
    trace, at most 2048. A fixed 16 would judge a thousand-token trace by its one worst 16-token stretch."""
    return max(DEFAULT_WINDOW, min(MAX_WINDOW, length // 8))


def trace_uncertainty(entropies: Sequence[float], window: Optional[int] = None) -> float:
    """Highest mean entropy over any ``window`` consecutive tokens (all of them when fewer); 0.0 with none.

    window None: ``confidence_window`` of the trace's length."""
    values = [h for h in entropies if math.isfinite(h)]
    if window is None:
        window = confidence_window(len(values))
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not values:
        return 0.0
    if len(values) <= window:
        return sum(values) / len(values)
    total = sum(values[:window])
    worst = total
    for k in range(window, len(values)):
        total += values[k] - values[k - window]
        worst = max(worst, total)
    return worst / window


def departures(sequence: Any, by_index: dict[int, Any]) -> int:
    """How many times the trace left the model's first choice at a branch point: its ancestors in the tree.

    A child starts with a token other than the most likely one at its branch point (the second in
    EAGer-init, the rank-th untaken one in tree reallocation) while its parent continues with the most
    likely, so each step up the parent chain is one such departure; a root (or a fresh extra) has none.
    """
    count, seen, current = 0, {sequence.index}, sequence
    while current.parent is not None and current.parent in by_index and current.parent not in seen:
        current = by_index[current.parent]
        seen.add(current.index)
        count += 1
    return count


def confidence_weights(sequences: Sequence[Any], window: Optional[int] = None,
                       departure_factor: float = DEPARTURE_FACTOR) -> list[float]:
    """Per sequence (same order), its vote weight: exp(-trace_uncertainty) x departure_factor ** departures.

    1.0 for a root trace with no doubt. The entropy part is DeepConf's trace confidence; the departure
    part is what a tree adds: a child is the continuation the model ranked lower at an unsure point, and
    a tree holds one such child per branch however unlikely it was, so an unweighted vote over-counts them.
    """
    by_index = {s.index: s for s in sequences}
    return [math.exp(-trace_uncertainty(trace_entropies(s, by_index), window))
            * departure_factor ** departures(s, by_index) for s in sequences]



# ----------------------------------------------------------------------------- over a run's prompts


def run_metrics(prompts: Sequence[Any], ks: Iterable[int] = DEFAULT_KS) -> dict[str, Any]:
    """``compute_metrics`` over scored ``PromptResult``s (``RunResult.metrics``: docs/method.md, "Metrics")."""
    if any(p.gold_answer is None for p in prompts):
        raise ValueError("metrics need gold answers: pass answers= to run() or call result.score(answers)")
    per_prompt = [
        {
            "answers": [s.answer for s in p.sequences],
            "correct": [bool(s.correct) for s in p.sequences],
            "generated_tokens": p.generated_tokens,
            "sequences": p.n_sequences,
            "confidences": confidence_weights(p.sequences),
        }
        for p in prompts
    ]
    return compute_metrics(per_prompt, ks=ks)


def consensus(prompts: Sequence[Any], scorer: Optional[Callable[[str, str], bool]] = None) -> list[Optional[str]]:
    """Per prompt, the confidence-weighted majority answer, with no labels (``RunResult.consensus``).

    Answers come from ``scorer.extract`` when the scorer has one, else the "auto" extractor; each
    sequence votes with weight exp(-its highest window-mean entropy). None for a prompt with no answer.
    """
    extract = answer_extractor(scorer)
    return [weighted_vote([extract(s.text) for s in p.sequences], confidence_weights(p.sequences))[0]
            for p in prompts]
