"""The label-free reallocation (method eager_label_free): its signals, its pure rule, its phases, and its
confidence-weighted vote (docs/method.md, "Label-free reallocation")."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pytest

import eager_cpp
from eager_cpp.method.budget import PromptSignals, doubt, plan_label_free
from eager_cpp.method.label_free import (NO_ANSWER, confidence_weights, departures, prompt_signals, trace_entropies,
                                  trace_uncertainty, vote_counts)
from eager_cpp.answers.metrics import compute_metrics, weighted_vote
from eager_cpp.core.options import RunOptions
from eager_cpp.method.phases import PhaseOutput, run_phases, signals_of
from eager_cpp.core.results import PromptResult, RunStats, Sequence
from eager_cpp.answers.scoring import default_scorer

FIRST_LINE = default_scorer("first_line")


def sig(index, sequences, share=1.0, trace=0.0, unexplored=0.0, theta=1.0):
    return PromptSignals(index=index, sequences=sequences, vote_share=share, trace_uncertainty=trace,
                         unexplored_entropy=unexplored, theta=theta)


def extras_of(plan):
    return {e.index: e.extra_sequences for e in plan.extras}


# --- the pure rule ------------------------------------------------------------------------------


def test_unanimous_confident_prompts_get_nothing_and_the_budget_stays_unused():
    # Every answer agrees and every trace is sure: nobody is doubtful, the saving is kept.
    plan = plan_label_free([sig(0, 1, trace=0.1), sig(1, 2, trace=0.2, unexplored=0.5), sig(2, 4)], 4)
    assert plan.budget == 12 - 7 and plan.extras == () and plan.selected == () and plan.unused == 5


def test_disagreement_gets_the_budget_in_proportion():
    # Prompt 0: unanimous and sure (nothing); 1: half its votes on the top answer (d = 0.5); 2: a quarter
    # off the top answer (d = 0.25). b = 4*3 - (4 + 2 + 3) = 3 ... too small to show the ratio, so M = 10.
    items = [sig(0, 4), sig(1, 2, share=0.5), sig(2, 3, share=0.75)]
    plan = plan_label_free(items, 10)
    assert plan.budget == 30 - 9 == 21
    assert plan.selected == (1, 2)  # most doubtful first; the unanimous, sure prompt is not selected
    assert extras_of(plan) == {1: 14, 2: 7}  # 0.5 : 0.25 = 2 : 1 (D'Hondt)
    assert plan.total_extra + plan.unused == plan.budget and plan.unused == 0


def test_unsure_traces_and_unexplored_points_count_even_when_the_votes_agree():
    items = [sig(0, 1, trace=0.3 + 0.6), sig(1, 1, unexplored=1.0 + 0.3), sig(2, 1, trace=0.29, unexplored=0.99)]
    plan = plan_label_free(items, 4)  # b = 9; doubts 0.6, 0.3, 0 (both under their floors)
    assert plan.selected == (0, 1) and extras_of(plan) == {0: 6, 1: 3}


def test_each_signal_alone_ignores_the_others():
    items = [sig(0, 2, share=0.5), sig(1, 1, trace=2.0), sig(2, 1, unexplored=3.0)]
    assert plan_label_free(items, 4, use=("votes",)).selected == (0,)
    assert plan_label_free(items, 4, use=("confidence",)).selected == (1,)
    assert plan_label_free(items, 4, use=("tree",)).selected == (2,)
    assert plan_label_free(items, 4).selected == (2, 1, 0)  # doubts 2.0, 1.7, 0.5


def test_a_prompt_gets_at_most_three_m_and_the_rest_is_reported_unused():
    items = [sig(0, 1, share=0.0)] + [sig(k, 1) for k in range(1, 10)]
    plan = plan_label_free(items, 4)  # b = 40 - 10 = 30, one doubtful prompt, cap 12
    assert extras_of(plan) == {0: 12} and plan.unused == 18


def test_the_cap_of_one_prompt_goes_on_to_the_next():
    items = [sig(0, 1, share=0.0), sig(1, 1, share=0.9)] + [sig(k, 1) for k in range(2, 8)]
    plan = plan_label_free(items, 2)  # b = 16 - 8 = 8: prompt 0 stops at 6, prompt 1 takes the rest
    assert extras_of(plan) == {0: 6, 1: 2} and plan.unused == 0


def test_extras_run_at_the_prompts_theta():
    plan = plan_label_free([sig(0, 1, share=0.5, theta=0.75), sig(1, 2, share=0.5, theta=1.5)], 4)
    assert {e.index: e.theta for e in plan.extras} == {0: 0.75, 1: 1.5}


@pytest.mark.parametrize("kwargs, match", [
    (dict(signals=[], max_sequences=4), "empty"),
    (dict(signals=[sig(0, 1)], max_sequences=0), "max_sequences"),
    (dict(signals=[sig(0, 5)], max_sequences=4), "outside"),
    (dict(signals=[sig(0, 1), sig(0, 2)], max_sequences=4), "duplicate"),
    (dict(signals=[sig(0, 1, share=1.5)], max_sequences=4), "vote_share"),
    (dict(signals=[sig(0, 1, trace=math.nan)], max_sequences=4), "trace_uncertainty"),
    (dict(signals=[sig(0, 1)], max_sequences=4, use=("gold",)), "subset"),
    (dict(signals=[sig(0, 1)], max_sequences=4, use=()), "subset"),
    (dict(signals=[sig(0, 1)], max_sequences=4, confident_below=-1.0), "confident_below"),
    (dict(signals=[sig(0, 1)], max_sequences=4, weights=(1.0, math.inf, 1.0)), "weights"),
])
def test_bad_input_is_a_clear_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plan_label_free(**kwargs)


def test_random_plans_spend_b_or_report_the_rest():
    rng = random.Random(7)
    for _ in range(2000):
        m, n = rng.randint(1, 10), rng.randint(1, 12)
        items = [sig(i, rng.randint(0, m), share=rng.choice([1.0, rng.random()]), trace=rng.uniform(0, 1),
                     unexplored=rng.uniform(0, 3)) for i in rng.sample(range(50), n)]
        plan = plan_label_free(items, m)
        doubts = {s.index: doubt(s) for s in items}
        given = extras_of(plan)
        assert plan.budget == m * n - sum(s.sequences for s in items)
        assert plan.total_extra + plan.unused == plan.budget and plan.unused >= 0
        assert all(doubts[i] > 0 and 0 < e <= 3 * m for i, e in given.items())
        if plan.unused:  # only when every doubtful prompt is full
            assert all(given.get(i, 0) == 3 * m for i in plan.selected)
        for i, e in given.items():  # D'Hondt: no prompt could take a sequence from another to be more fair
            for j in plan.selected:
                if given.get(j, 0) < 3 * m:
                    assert doubts[i] / e >= doubts[j] / (given.get(j, 0) + 1) - 1e-12


# --- the signals --------------------------------------------------------------------------------


def seq(index, text, entropies, parent=None, branch_step=0, tokens=None, round_=0):
    n = branch_step + len(entropies)
    token_ids = list(tokens) if tokens is not None else list(range(index * 100, index * 100 + n))
    return Sequence(index=index, text=text, token_ids=token_ids, own_tokens=token_ids[branch_step:],
                    entropies=list(entropies), parent=parent, branch_step=branch_step, finish_reason="stop",
                    round=round_)


def test_a_child_trace_inherits_its_parents_entropies():
    root = seq(0, "Paris", [0.1, 2.0, 0.3])
    child = seq(1, "Lyon", [0.5, 0.7], parent=0, branch_step=1, tokens=[0, 9, 10])
    grandchild = seq(2, "Nice", [0.9], parent=1, branch_step=2, tokens=[0, 9, 11])
    by_index = {s.index: s for s in (root, child, grandchild)}
    assert trace_entropies(child, by_index) == [0.1, 0.5, 0.7]
    assert trace_entropies(grandchild, by_index) == [0.1, 0.5, 0.9]


def test_trace_uncertainty_is_the_worst_window_mean():
    assert trace_uncertainty([0.0, 0.0, 3.0, 1.0, 0.0], window=2) == pytest.approx(2.0)
    assert trace_uncertainty([1.0, 2.0], window=16) == pytest.approx(1.5)  # shorter than a window: the mean
    assert trace_uncertainty([], window=4) == 0.0
    with pytest.raises(ValueError):
        trace_uncertainty([1.0], window=0)


def test_the_default_window_grows_with_the_trace():
    from eager_cpp.answers.metrics import confidence_window

    assert [confidence_window(n) for n in (0, 16, 135, 136, 4000, 10**6)] == [16, 16, 16, 17, 500, 2048]
    # A 4000-token trace, sure but for one 16-token stretch at 3.0 nats: a 16-token window judges it by that
    # stretch alone; the length-aware one (500 tokens) by the span around it.
    trace = [0.1] * 2000 + [3.0] * 16 + [0.1] * 1984
    assert trace_uncertainty(trace, window=16) == pytest.approx(3.0)
    assert trace_uncertainty(trace) == pytest.approx((16 * 3.0 + 484 * 0.1) / 500)
    assert trace_uncertainty(trace[:100]) == trace_uncertainty(trace[:100], window=16)  # short traces: as before


def test_the_confidence_window_is_an_option_of_the_label_free_plan():
    long_sure = seq(0, "Paris", [0.1] * 300 + [3.0] * 16 + [0.1] * 300)
    assert prompt_signals(0, [long_sure], FIRST_LINE.extract, window=16).trace_uncertainty == pytest.approx(3.0)
    assert prompt_signals(0, [long_sure], FIRST_LINE.extract).trace_uncertainty < 1.0
    results = [PromptResult(index=0, prompt="q", sequences=[long_sure], prompt_tokens=1)]
    by_option = signals_of(results, 1.0, FIRST_LINE, 1000, RunOptions.create(confidence_window=16).confidence_window)
    assert by_option[0].trace_uncertainty == pytest.approx(3.0)
    with pytest.raises(ValueError, match="confidence_window"):
        RunOptions.create(confidence_window=0)
    # A result recorded before the option replays with the window it ran with, 16 tokens.
    old = {k: v for k, v in dict(RunOptions.create().recorded(1), options_version=4).items()
           if k not in ("rules", "preset", "confidence_window")}
    assert RunOptions.from_recorded(old).confidence_window == 16


def test_no_answer_never_counts_as_agreement():
    seqs = [seq(0, "", [0.1]), seq(1, "", [0.1])]
    s = prompt_signals(0, seqs, FIRST_LINE.extract)
    assert s.vote_share == 0.0 and s.distinct_answers == 1
    assert vote_counts([None, "Paris", "paris"]) == {NO_ANSWER: 1.0, "paris": 2.0}


def test_signals_read_the_text_never_the_recorded_answer_or_verdict():
    seqs = [seq(0, "Paris\n", [0.2, 0.1]), seq(1, "Lyon\n", [1.5, 0.1]), seq(2, "Paris\n", [0.3, 0.2])]
    before = prompt_signals(3, seqs, FIRST_LINE.extract)
    for s in seqs:
        s.answer, s.correct = "Rome", True  # what a labelled run writes; it must change nothing
    assert prompt_signals(3, seqs, FIRST_LINE.extract) == before
    assert before.vote_share == pytest.approx(2 / 3) and before.distinct_answers == 2
    assert before.vote_entropy == pytest.approx(-(2 / 3) * math.log(2 / 3) - (1 / 3) * math.log(1 / 3))
    assert before.trace_uncertainty == pytest.approx((0.15 + 0.8 + 0.25) / 3)


def test_unexplored_entropy_is_the_highest_single_token_point():
    root = seq(0, "a", [0.4, 2.5, 0.2], tokens=[1, 2, 3])
    child = seq(1, "b", [2.5, 0.1], parent=0, branch_step=1, tokens=[1, 7, 8])  # the point at step 1 is explored
    s = prompt_signals(0, [root, child], FIRST_LINE.extract)
    # Single-token points: step 0 (0.4), the root's step 2 (0.2), the child's step 2 (0.1); the 2.5 one took two.
    assert s.unexplored_entropy == pytest.approx(0.4)


# --- the weighted vote --------------------------------------------------------------------------


def test_a_confident_minority_outvotes_an_unsure_majority():
    answers = ["Lyon", "Lyon", "Paris"]
    assert weighted_vote(answers, [0.2, 0.2, 0.9])[0] == "Paris"
    assert weighted_vote(answers, [0.5, 0.5, 0.9])[0] == "Lyon"
    assert weighted_vote([None, ""], [1.0, 1.0]) == (None, None)
    with pytest.raises(ValueError):
        weighted_vote(answers, [1.0])


def test_cons_weighted_is_reported_when_every_prompt_has_confidences():
    item = {"answers": ["Lyon", "Lyon", "Paris"], "correct": [False, False, True], "generated_tokens": 3,
            "sequences": 3}
    plain = compute_metrics([item])
    assert "cons_weighted@k" not in plain and plain["cons@k"] == 0.0
    weighted = compute_metrics([dict(item, confidences=[0.2, 0.2, 0.9])])
    assert weighted["cons_weighted@k"] == 1.0 and weighted["cons@k"] == 0.0
    assert weighted["per_prompt"][0]["weighted_answer"] == "Paris"
    with pytest.raises(ValueError, match="confidences"):
        compute_metrics([dict(item, confidences=[1.0])])


def test_confidence_weights_follow_the_worst_window_and_the_departures():
    seqs = [seq(0, "a", [0.0, 0.0]), seq(1, "b", [2.0, 2.0])]
    assert confidence_weights(seqs) == pytest.approx([1.0, math.exp(-2.0)])
    # A child took the model's second choice at its branch point, a grandchild did so twice.
    tree = [seq(0, "a", [0.0, 0.0, 0.0]), seq(1, "b", [0.0, 0.0], parent=0, branch_step=1),
            seq(2, "c", [0.0], parent=1, branch_step=2)]
    assert [departures(s, {t.index: t for t in tree}) for s in tree] == [0, 1, 2]
    assert confidence_weights(tree) == pytest.approx([1.0, 0.5, 0.25])


def test_the_weighted_vote_counts_a_trees_children_less_than_its_root():
    # Root says Paris, surely; its three children (each the second choice at a point, then unsure) say
    # Lyon: a plain vote follows the children, the weighted one the root (0.90 against 0.16 + 0.20 + 0.30).
    tree = [seq(0, "Paris", [0.1, 0.1, 0.1, 0.1])] + [
        seq(k, "Lyon", [1.5] * (4 - k), parent=0, branch_step=k) for k in (1, 2, 3)]
    answers = [s.text for s in tree]
    assert weighted_vote(answers, [1.0] * 4)[0] == "Lyon"
    assert weighted_vote(answers, confidence_weights(tree))[0] == "Paris"


# --- the phases, on a fake executor -------------------------------------------------------------


class AnsweringExecutor:
    """Phase (a): prompt 0 answers "Paris" twice with low entropy, prompt 1 "Rome"/"Milan" unsure, prompt 2
    "Lima" once; every extra answers "x". Records every call."""

    TEXTS = {0: ["Paris\n", "Paris\n"], 1: ["Rome\n", "Milan\n", "Rome\n"], 2: ["Lima\n"]}
    ENTROPY = {0: 0.05, 1: 1.2, 2: 0.1}

    def __init__(self):
        self.calls = []

    def run_jobs(self, jobs, method, progress):
        self.calls.append((method, list(jobs)))
        out = []
        for job in jobs:
            texts = self.TEXTS[job.index] if job.round == 0 else ["x\n"] * job.max_sequences
            seqs = [seq(job.sequence_base + k, t, [self.ENTROPY[job.index]] * 2, round_=job.round)
                    for k, t in enumerate(texts[: job.max_sequences])]
            for s in seqs:
                s.index = job.sequence_base + seqs.index(s)
                s.token_ids = s.own_tokens = [job.index, s.index]
            out.append(PromptResult(index=job.index, prompt=job.prompt, sequences=seqs, prompt_tokens=2, steps=1))
        return PhaseOutput(prompts=out, stats=RunStats(method=method))


def run_fake(answers, scorer=FIRST_LINE):
    ex = AnsweringExecutor()
    options = RunOptions.create(method="eager_label_free", max_sequences=4, entropy_threshold=1.0)
    results = [PromptResult(i, p, [], 0) for i, p in enumerate(["France", "Italy", "Peru"])]
    stats = RunStats(method="eager_label_free")
    outcome = run_phases(ex, options, results, stats, answers, scorer, None)
    return ex, results, stats, outcome


def test_the_plan_is_the_same_whatever_the_gold_answers():
    _, results, _, labelled = run_fake(["Paris", "Rome", "Lima"])
    for replaced in (["Lyon", "Milan", "Cusco"], ["?", "?", "?"], None):
        _, _, _, other = run_fake(replaced)
        assert other.plan == labelled.plan and other.produced == labelled.produced
    # b = 12 - 6 = 6, all to the prompt whose answers disagree and whose traces are unsure.
    assert labelled.plan.budget == 6 and labelled.granted == {1: 6}
    assert sum(1 for s in results[1].sequences if s.round > 0) == 6


def test_the_pipeline_plans_with_the_pure_rule_on_phase_a():
    ex, results, _, outcome = run_fake(None)
    init = [PromptResult(p.index, p.prompt, [s for s in p.sequences if s.round == 0], 2) for p in results]
    assert outcome.plan == plan_label_free(signals_of(init, 1.0, FIRST_LINE, 1000), 4)
    assert [j.theta for _, jobs in ex.calls[1:] for j in jobs] == [1.0]  # one try filled it, at the run's θ


# --- the real model -----------------------------------------------------------------------------


def test_real_run_plans_the_same_with_true_replaced_or_no_labels(model):
    from conftest import load_jsonl

    rows = load_jsonl("capitals_dev_100.jsonl", limit=6)
    prompts, gold = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    kw = dict(method="eager_label_free", max_sequences=4, entropy_threshold=1.0, max_new_tokens=16, stop="\n",
              seed=1, scorer=FIRST_LINE)
    labelled = eager_cpp.run(model, prompts, answers=gold, **kw)
    replaced = eager_cpp.run(model, prompts, answers=["Atlantis"] * len(prompts), **kw)
    unlabelled = eager_cpp.run(model, prompts, **kw)
    assert labelled.reallocation.plan == replaced.reallocation.plan == unlabelled.reallocation.plan
    assert [[s.token_ids for s in p.sequences] for p in labelled.prompts] == \
        [[s.token_ids for s in p.sequences] for p in unlabelled.prompts]
    m = labelled.metrics(ks=(4,))
    assert 0.0 <= m["cons_weighted@k"] <= 1.0
    assert labelled.settings["method"] == "eager_label_free"
    assert labelled.consensus(FIRST_LINE) == unlabelled.consensus(FIRST_LINE)
    assert labelled.consensus(FIRST_LINE) == [p["weighted_answer"] for p in m["per_prompt"]]


# --- the command line -----------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eager_cpp", *args], capture_output=True, text=True, timeout=600)


def test_cli_runs_and_evaluates_the_label_free_method(tmp_path):
    from conftest import load_jsonl

    rows = load_jsonl("capitals_dev_100.jsonl", limit=4)
    data = tmp_path / "capitals_small.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows))
    small = ["-M", "3", "--theta", "0.75", "--max-new-tokens", "6", "--stop", "\\n", "--quiet"]
    out = tmp_path / "lf.jsonl"
    proc = cli("run", str(data), "-o", str(out), "--method", "eager_label_free", "--label-free-signals", "votes,tree",
               *small)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "lf.jsonl.meta.json").read_text())
    assert meta["recorded"]["label_free_signals"] == ["votes", "tree"]
    assert sum(json.loads(line)["n_sequences"] for line in out.read_text().splitlines()) <= 12
    table = tmp_path / "table.json"
    proc = cli("eval", str(data), "--methods", "eager_label_free", "--reallocation", "fresh,tree", "--json", str(table),
               *small)
    assert proc.returncode == 0, proc.stderr
    assert [(r["method"], r["reallocation"]) for r in json.loads(table.read_text())["rows"]] == [
        ("eager_label_free", "fresh"), ("eager_label_free", "tree")]
    proc = cli("eval", str(data), "--methods", "eager_label_free", "--label-free-signals", "votes,gold", *small)
    assert proc.returncode == 2 and "--label-free-signals" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_cli_reads_answers_with_the_chosen_scorer_whether_or_not_the_input_has_labels(tmp_path):
    """The label-free plan reads phase (a)'s answers with the run's scorer (--scorer, else the dataset's style);
    labels only score. So the same prompts with and without answers give the same plan and samples. (Before, an
    unlabelled input was read by the "auto" extractor and --scorer was ignored: with --scorer boxed, which finds
    no answer in these texts, the labelled run got a sample more than the unlabelled one.)"""
    from conftest import load_jsonl

    rows = load_jsonl("capitals_dev_100.jsonl", limit=4)
    labelled, unlabelled = tmp_path / "labelled.jsonl", tmp_path / "unlabelled.jsonl"
    labelled.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows))
    unlabelled.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    small = ["--method", "eager_label_free", "-M", "3", "--theta", "0.75", "--max-new-tokens", "6", "--stop", "\\n",
             "--scorer", "boxed", "--quiet"]
    outs = []
    for data in (labelled, unlabelled):
        out = tmp_path / (data.stem + ".out.jsonl")
        proc = cli("run", str(data), "-o", str(out), *small)
        assert proc.returncode == 0, proc.stderr
        outs.append([[s["token_ids"] for s in json.loads(line)["sequences"]] for line in out.read_text().splitlines()])
    assert outs[0] == outs[1]  # every prompt's samples, those the plan added included
