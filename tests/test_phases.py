"""The phase pipeline on a fake executor, without a model: the plan, the tries that spend it, the merge."""

from __future__ import annotations

import pytest

from eager_cpp.budget import plan_reallocation
from eager_cpp.phases import MAX_TRIES, PhaseJob, PhaseOutput, merge, reallocate_phases, run_phases
from eager_cpp.results import PromptResult, RunStats, Sequence


def sequence(index: int, round_: int, text: str = "x") -> Sequence:
    return Sequence(index=index, text=text, token_ids=[1], own_tokens=[1], entropies=[0.0], parent=None,
                    branch_step=0, finish_reason="length", round=round_)


class FakeExecutor:
    """Makes `produce(job)` sequences per job (at most its cap) and records every call."""

    def __init__(self, produce, text=lambda job, k: "x") -> None:
        self.produce = produce
        self.text = text
        self.calls: list[tuple[str, list[PhaseJob]]] = []

    def run_jobs(self, jobs, method, progress):
        self.calls.append((method, list(jobs)))
        prompts = []
        for job in jobs:
            n = min(job.max_sequences, self.produce(job))
            seqs = [sequence(job.sequence_base + k, job.round, self.text(job, k)) for k in range(n)]
            prompts.append(PromptResult(index=job.index, prompt=job.prompt, sequences=seqs, prompt_tokens=3, steps=1))
        stats = RunStats(method=method, steps=1, prompt_tokens=3 * len(jobs))
        return PhaseOutput(prompts=prompts, stats=stats)


def capped_first(job: PhaseJob) -> int:
    """Phase (a): prompt 0 reaches the cap, the others make 1; tries: one sequence each."""
    if job.round == 0:
        return job.max_sequences if job.index == 0 else 1
    return 1


def test_tries_spend_exactly_the_plan():
    m, prompts = 4, ["p0", "p1", "p2", "p3"]
    ex = FakeExecutor(capped_first)
    results, stats, outcome = run_phases(ex, prompts, [0, 1, 2, 3], "eager_adapt", m, 2.0, None, None, None)
    # b = 16 - (4 + 1 + 1 + 1) = 9, all to prompt 0 (capped), cap 3M = 12: e0 = 9.
    assert outcome.plan.budget == 9 and outcome.granted == {0: 9}
    # One sequence per try: 8 tries make 8 of the 9, and the 9th is reported unspent.
    assert outcome.tries == MAX_TRIES and outcome.produced == {0: MAX_TRIES}
    assert stats.unspent_sequences == 1 == outcome.unspent
    assert sum(p.n_sequences for p in results) == m * len(prompts) - stats.unspent_sequences
    rounds = [s.round for s in results[0].sequences]
    assert rounds == [0] * 4 + list(range(1, MAX_TRIES + 1))  # round = the try number
    assert [s.index for s in results[0].sequences] == list(range(12))  # indices (and streams) continue
    # Each try asks for exactly what is still lacking, continuing the prompt's sequence numbering.
    tries = [jobs for method, jobs in ex.calls[1:]]
    assert all(method == "eager_init" for method, _ in ex.calls[1:])
    assert [(j.max_sequences, j.sequence_base, j.round) for [j] in tries] == [(9 - t, 4 + t, t + 1) for t in range(8)]
    assert stats.rounds == MAX_TRIES + 1 and stats.reallocated_sequences == MAX_TRIES


def test_a_try_that_fills_the_cap_ends_the_loop():
    ex = FakeExecutor(lambda job: job.max_sequences if job.round == 0 and job.index == 0 else
                      (1 if job.round == 0 else 100))
    results, stats, outcome = run_phases(ex, ["a", "b"], [0, 1], "eager_adapt", 4, 2.0, None, None, None)
    assert outcome.tries == 1 and outcome.produced == {0: 3} and stats.unspent_sequences == 0
    assert results[0].n_sequences == 7 and len(ex.calls) == 2


def test_every_lacking_prompt_of_a_try_is_batched_together():
    ex = FakeExecutor(lambda job: job.max_sequences if job.round == 0 and job.index < 2 else 1)
    run_phases(ex, ["a", "b", "c", "d", "e"], [0, 1, 2, 3, 4], "eager_adapt", 4, 2.0, None, None, None)
    # b = 20 - (4 + 4 + 1 + 1 + 1) = 9: prompt 0 gets 5, prompt 1 gets 4; each try holds both while they lack.
    assert [sorted(j.index for j in jobs) for _, jobs in ex.calls[1:5]] == [[0, 1]] * 4
    assert [j.index for j in ex.calls[5][1]] == [0]


def test_theta_per_try_follows_the_retry_rule():
    # Full EAGer, labels: prompt 1 stays unsolved and under its cap, so each try lowers θ by 0.8,
    # and from the third try on by 0.9 more.
    ex = FakeExecutor(lambda job: 1 if job.round == 0 or job.index == 1 else job.max_sequences,
                      text=lambda job, k: "no")
    results, stats, outcome = run_phases(ex, ["a", "b"], [0, 1], "eager", 4, 2.0, ["yes", "yes"],
                                         lambda text, gold: text == gold, None)
    assert outcome.granted == {0: 3, 1: 3}
    thetas = [j.theta for _, jobs in ex.calls[1:] for j in jobs if j.index == 1]
    expected, theta = [], 2.0
    for t in range(len(thetas)):
        theta *= 0.8  # the plan's first θ (tries = 0), then retry_theta after each try
        if t >= 2:
            theta *= 0.9
        expected.append(theta)
    assert thetas == pytest.approx(expected)
    assert outcome.produced[1] == 3 and outcome.produced[0] == 3 and stats.unspent_sequences == 0


def test_plan_and_outcome_agree_with_the_pure_planner():
    ex = FakeExecutor(capped_first)
    results, _, outcome = run_phases(ex, ["a", "b", "c"], [5, 6, 7], "eager_adapt", 4, 2.0, None, None, None)
    init = [PromptResult(p.index, p.prompt, [s for s in p.sequences if s.round == 0], 3) for p in results]
    from eager_cpp.phases import summarize

    assert outcome.plan == plan_reallocation(summarize(init, 2.0), 4, "eager_adapt")


def test_merge_refuses_a_missing_or_doubled_prompt():
    results = [PromptResult(0, "a", [], 0), PromptResult(1, "b", [], 0)]
    jobs = [PhaseJob(0, "a", 2, 1.0), PhaseJob(1, "b", 2, 1.0)]
    doubled = PhaseOutput(prompts=[PromptResult(0, "a", [sequence(0, 0)], 3)] * 2, stats=RunStats(method="x"))
    with pytest.raises(RuntimeError, match="do not match"):
        merge(results, jobs, doubled)
    with pytest.raises(RuntimeError, match="2 jobs but 1"):
        merge(results, jobs, PhaseOutput(prompts=doubled.prompts[:1], stats=RunStats(method="x")))
    over = PhaseOutput(prompts=[PromptResult(0, "a", [sequence(k, 0) for k in range(3)], 3),
                                PromptResult(1, "b", [], 3)], stats=RunStats(method="x"))
    with pytest.raises(RuntimeError, match="capped at 2"):
        merge(results, jobs, over)


def test_reallocate_phases_without_budget_runs_nothing():
    results = [PromptResult(0, "a", [sequence(0, 0)], 3)]
    ex = FakeExecutor(lambda job: 1)
    outcome = reallocate_phases(ex, results, RunStats(method="eager_adapt"), "eager_adapt", 1, 2.0, None, None,
                                None)
    assert outcome.plan.budget == 0 and outcome.tries == 0 and not ex.calls
