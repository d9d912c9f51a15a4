"""The phase pipeline on a fake executor, without a model: the plan, the tries that spend it, the merge."""

from __future__ import annotations

import pytest

from eager_cpp.method.budget import plan_reallocation
from eager_cpp.method.phases import PhaseJob, PhaseOutput, ReallocationWarning, merge, reallocate_phases, run_phases
from eager_cpp.core.options import RunOptions
from eager_cpp.core.results import PromptResult, RunStats, Sequence
from eager_cpp.core.vocabulary import MAX_TRIES


def sequence(index: int, round_: int, text: str = "x", tokens: tuple[int, ...] = (1,)) -> Sequence:
    return Sequence(index=index, text=text, token_ids=list(tokens), own_tokens=list(tokens),
                    entropies=[0.0] * len(tokens), parent=None, branch_step=0, finish_reason="length", round=round_)


def phases_on(ex, prompts, indices, method, m, theta, answers, scorer, progress, **options):
    """`phases.run_phases` on fresh prompts with these options: (results, stats, outcome)."""
    opts = RunOptions.create(method=method, max_sequences=m, entropy_threshold=theta, **options)
    results = [PromptResult(index=i, prompt=p, sequences=[], prompt_tokens=0) for i, p in zip(indices, prompts)]
    stats = RunStats(method=method)
    outcome = run_phases(ex, opts, results, stats, answers, scorer, progress)
    return results, stats, outcome


class FakeExecutor:
    """Makes `produce(job)` sequences per job (at most its cap) and records every call.

    unavailable(job): how many of those the engine reported "unavailable" (dropped, streams used).
    fail(job list): raise it instead of running the jobs, when it returns an exception.
    """

    def __init__(self, produce, text=lambda job, k: "x", unavailable=lambda job: 0, fail=lambda jobs: None,
                 tokens=lambda index: (1,)) -> None:
        self.produce = produce
        self.text = text
        self.tokens = tokens
        self.unavailable = unavailable
        self.fail = fail
        self.calls: list[tuple[str, list[PhaseJob]]] = []

    def run_jobs(self, jobs, method, progress):
        self.calls.append((method, list(jobs)))
        error = self.fail(jobs)
        if error is not None:
            raise error
        prompts, dropped = [], []
        for job in jobs:
            n = min(job.max_sequences, self.produce(job))
            gone = min(n, self.unavailable(job))
            seqs = [sequence(job.index_base + k, job.round, self.text(job, k), self.tokens(job.index_base + k))
                    for k in range(n - gone)]
            prompts.append(PromptResult(index=job.index, prompt=job.prompt, sequences=seqs, prompt_tokens=3, steps=1))
            dropped.append(tuple(range(gone)))  # the job's first `gone` seeds (or sequences)
        stats = RunStats(method=method, steps=1, prompt_tokens=3 * len(jobs))
        return PhaseOutput(prompts=prompts, stats=stats, unavailable=dropped)


def capped_first(job: PhaseJob) -> int:
    """Phase (a): prompt 0 reaches the cap, the others make 1; tries: one sequence each."""
    if job.round == 0:
        return job.max_sequences if job.index == 0 else 1
    return 1


def test_tries_spend_exactly_the_plan():
    m, prompts = 4, ["p0", "p1", "p2", "p3"]
    ex = FakeExecutor(capped_first)
    results, stats, outcome = phases_on(ex, prompts, [0, 1, 2, 3], "eager_adapt", m, 2.0, None, None, None)
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
    results, stats, outcome = phases_on(ex, ["a", "b"], [0, 1], "eager_adapt", 4, 2.0, None, None, None)
    assert outcome.tries == 1 and outcome.produced == {0: 3} and stats.unspent_sequences == 0
    assert results[0].n_sequences == 7 and len(ex.calls) == 2


def test_every_lacking_prompt_of_a_try_is_batched_together():
    ex = FakeExecutor(lambda job: job.max_sequences if job.round == 0 and job.index < 2 else 1)
    phases_on(ex, ["a", "b", "c", "d", "e"], [0, 1, 2, 3, 4], "eager_adapt", 4, 2.0, None, None, None)
    # b = 20 - (4 + 4 + 1 + 1 + 1) = 9: prompt 0 gets 5, prompt 1 gets 4; each try holds both while they lack.
    assert [sorted(j.index for j in jobs) for _, jobs in ex.calls[1:5]] == [[0, 1]] * 4
    assert [j.index for j in ex.calls[5][1]] == [0]


def reference_thetas(theta0, tries, decaying):
    """The authors' retry loop (see test_budget): decaying prompts x0.8 per try, the others reset to θ0;
    x0.9 from the third try on."""
    theta, out = theta0, []
    for t in range(1, tries + 1):
        theta = theta * 0.8 if decaying else theta0
        if t >= 3:
            theta *= 0.9
        out.append(theta)
    return out


def thetas_of(ex, index):
    return [j.theta for _, jobs in ex.calls[1:] for j in jobs if j.index == index]


def test_theta_per_try_is_the_reference_rule_full_eager():
    # The fidelity issue's table, θ0 = 2.0, one sequence per try so that every prompt needs seven:
    # 0: unsolved, under the cap after EAGer-init (the decaying set);
    # 1: unsolved, saturated (n = M): θ0, θ0, then θ0 x 0.9, never x0.8;
    # 2: unsolved and under the cap after EAGer-init, solved by its first try: it stays in the set;
    # 3: solved in phase (a): gives budget, gets none.
    m = 8
    ex = FakeExecutor(lambda job: (m if job.index == 1 else 1) if job.round == 0 else 1,
                      text=lambda job, k: "yes" if job.index == 3 or (job.index == 2 and job.round == 1) else "no")
    results, stats, outcome = phases_on(ex, ["a", "b", "c", "d"], [0, 1, 2, 3], "eager", m, 2.0, ["yes"] * 4,
                                         lambda text, gold: text == gold, None)
    assert outcome.granted == {1: 7, 0: 7, 2: 7} and outcome.plan.decaying == (0, 2)
    assert any(s.correct for s in results[2].sequences if s.round == 1)  # solved after try 1
    for index, decaying in ((0, True), (1, False), (2, True)):
        got = thetas_of(ex, index)
        assert len(got) == 7
        assert got == pytest.approx(reference_thetas(2.0, 7, decaying), rel=1e-12)
    assert [round(x, 2) for x in thetas_of(ex, 0)[:6]] == [1.6, 1.28, 0.92, 0.66, 0.48, 0.34]
    assert [round(x, 2) for x in thetas_of(ex, 1)[:6]] == [2.0, 2.0, 1.8, 1.8, 1.8, 1.8]
    assert thetas_of(ex, 2) == thetas_of(ex, 0)
    assert stats.unspent_sequences == 0


def test_theta_per_try_is_the_reference_rule_adapt():
    ex = FakeExecutor(lambda job: 4 if job.round == 0 and job.index == 0 else 1)
    _, _, outcome = phases_on(ex, ["a", "b", "c"], [0, 1, 2], "eager_adapt", 4, 2.0, None, None, None)
    assert outcome.granted == {0: 6} and outcome.plan.decaying == ()
    assert [round(x, 2) for x in thetas_of(ex, 0)] == [2.0, 2.0, 1.8, 1.8, 1.8, 1.8]


def test_a_failed_try_keeps_what_was_made_and_reports_the_error():
    ex = FakeExecutor(capped_first, fail=lambda jobs: RuntimeError("engine broke") if jobs[0].round == 3 else None)
    with pytest.warns(ReallocationWarning, match="try 3 failed: RuntimeError: engine broke"):
        results, stats, outcome = phases_on(ex, ["p0", "p1", "p2", "p3"], [0, 1, 2, 3], "eager_adapt", 4, 2.0,
                                             None, None, None)
    # Phase (a) (7 sequences) and tries 1 and 2 (one each) survive; the rest of e0 = 9 is unspent.
    assert [p.n_sequences for p in results] == [6, 1, 1, 1]
    assert outcome.tries == 2 and outcome.produced == {0: 2} and outcome.error.startswith("reallocation try 3")
    assert stats.unspent_sequences == 7 == outcome.unspent
    assert stats.reallocation_error == outcome.error and stats.rounds == 3
    assert stats.reallocated_sequences == 2 and [s.round for s in results[0].sequences] == [0] * 4 + [1, 2]


def test_a_failed_first_try_keeps_phase_a():
    ex = FakeExecutor(capped_first, fail=lambda jobs: ValueError("bad seed") if jobs[0].round > 0 else None)
    with pytest.warns(ReallocationWarning):
        results, stats, outcome = phases_on(ex, ["p0", "p1"], [0, 1], "eager_adapt", 4, 2.0, None, None, None)
    assert [p.n_sequences for p in results] == [4, 1] and outcome.tries == 0
    assert stats.unspent_sequences == outcome.plan.budget == 3 and "ValueError: bad seed" in stats.reallocation_error


def test_a_scorer_failing_on_a_try_keeps_what_was_made():
    def scorer(text, gold):
        if text == "late":
            raise ValueError("cannot read this")
        return False

    ex = FakeExecutor(lambda job: 1, text=lambda job, k: "late" if job.round > 0 else "x")
    with pytest.warns(ReallocationWarning, match="scoring reallocation try 1 failed: ValueError"):
        results, stats, outcome = phases_on(ex, ["a", "b"], [0, 1], "eager", 2, 2.0, ["y", "y"], scorer, None)
    assert [p.n_sequences for p in results] == [2, 2] and outcome.produced == {0: 1, 1: 1}
    assert stats.unspent_sequences == 0 and outcome.tries == 1


def test_ctrl_c_in_a_try_is_not_swallowed():
    ex = FakeExecutor(capped_first, fail=lambda jobs: KeyboardInterrupt() if jobs[0].round > 0 else None)
    with pytest.raises(KeyboardInterrupt):
        phases_on(ex, ["p0", "p1"], [0, 1], "eager_adapt", 4, 2.0, None, None, None)


def test_unavailable_seeds_are_unspent_and_their_streams_are_never_reused():
    # Tree reallocation; every sequence is two tokens (1000 + its index, 5), so the tree has many points.
    # Every try fills its seeds, all but one reported unavailable: one kept per try.
    ex = FakeExecutor(lambda job: job.max_sequences if job.round > 0 or job.index == 0 else 1,
                      unavailable=lambda job: job.max_sequences - 1 if job.round > 0 else 0,
                      tokens=lambda index: (1000 + index, 5))
    results, stats, outcome = phases_on(ex, ["a", "b"], [0, 1], "eager_adapt", 4, 2.0, None, None, None,
                                         reallocation="tree")
    assert outcome.granted == {0: 3}
    tries = [j for _, jobs in ex.calls[1:] for j in jobs]
    # Streams: 4 in phase (a), then every stream a try used; result indices stay contiguous behind them.
    assert [(j.sequence_base, j.first_index, j.max_sequences) for j in tries] == [(4, 4, 3), (7, 5, 2), (9, 6, 1)]
    assert [s.index for s in results[0].sequences] == list(range(7))
    assert outcome.produced == {0: 3} and outcome.unavailable == 3 == stats.unavailable_seeds
    assert stats.unspent_sequences == 0
    # A point where a seed came back unavailable is never offered again.
    point = lambda seed: (seed.source, len(seed.prefix))
    for t, job in enumerate(tries):
        dropped = {point(seed) for seed in job.seeds[: job.max_sequences - 1]}  # the fake drops the first ones
        assert not dropped & {point(seed) for later in tries[t + 1:] for seed in later.seeds}


def test_plan_and_outcome_agree_with_the_pure_planner():
    ex = FakeExecutor(capped_first)
    results, _, outcome = phases_on(ex, ["a", "b", "c"], [5, 6, 7], "eager_adapt", 4, 2.0, None, None, None)
    init = [PromptResult(p.index, p.prompt, [s for s in p.sequences if s.round == 0], 3) for p in results]
    from eager_cpp.method.phases import summarize

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
    options = RunOptions.create(method="eager_adapt", max_sequences=1, entropy_threshold=2.0)
    outcome = reallocate_phases(ex, options, results, RunStats(method="eager_adapt"), None, None, None)
    assert outcome.plan.budget == 0 and outcome.tries == 0 and not ex.calls


def test_phase_a_in_chunks_calls_back_after_each_and_skips_prompts_done():
    """The CLI's checkpoint: phase (a) one engine run per chunk, the callback after each, with the chunk's
    prompts scored; prompts whose phase (a) is done (a resumed run) are not run again."""
    ex = FakeExecutor(lambda job: 1, text=lambda job, k: "yes")
    options = RunOptions.create(method="eager_init", max_sequences=2, entropy_threshold=2.0)
    done = PromptResult(1, "b", [sequence(0, 0)], 3)
    results = [PromptResult(i, p, [], 0) for i, p in ((0, "a"), (2, "c"), (3, "d"))]
    results.insert(1, done)
    seen = []
    outcome = run_phases(ex, options, results, RunStats(method="eager_init"), ["yes"] * 4, None, None,
                         pending=[0, 2, 3], chunk_size=2,
                         on_chunk=lambda chunk: seen.append([(p.index, p.sequences[0].correct) for p in chunk]))
    assert outcome is None
    assert [[j.index for j in jobs] for _, jobs in ex.calls] == [[0, 2], [3]]
    assert seen == [[(0, True), (2, True)], [(3, True)]]
    assert done.sequences == [sequence(0, 0)]  # untouched: its phase (a) was done


def test_an_executor_that_drops_a_chunk_is_an_error_not_a_skipped_chunk():
    """Phase (a)'s chunks pair with the executor's outputs in order; one output short would leave a chunk's
    prompts without phase (a), silently, were the pairing not counted."""

    class ShortChunks(FakeExecutor):
        def run_chunks(self, chunks, method, progress):
            for k, jobs in enumerate(chunks):
                if k < 2:  # the third chunk never comes back
                    yield self.run_jobs(jobs, method, progress)

    ex = ShortChunks(lambda job: 1)
    results = [PromptResult(index=i, prompt=f"p{i}", sequences=[], prompt_tokens=0) for i in range(6)]
    options = RunOptions.create(method="eager_init", max_sequences=2)
    with pytest.raises(RuntimeError, match="returned 2 of phase \\(a\\)'s 3 chunks"):
        run_phases(ex, options, results, RunStats(method="eager_init"), None, None, None, chunk_size=2)
    assert len(ex.calls) == 2


def test_a_chunked_run_tries_in_engine_runs_no_wider_than_a_phase_a_chunk():
    # Each engine run holds a row of logits over the vocabulary per sequence in a step: a try's run must not
    # hold more sequences than a phase (a) chunk (chunk_size x M), or the run's peak memory would grow with
    # the number of prompts (the odds of a chunk of large e_i). The same jobs run, only split differently.
    m, chunk, prompts = 4, 2, [f"p{i}" for i in range(9)]

    def produce(job):  # phase (a): prompts 0..5 reach M, so the budget goes to them; tries: 1 sequence each
        return job.max_sequences if job.round == 0 and job.index < 6 else 1

    def run(chunk_size):
        ex = FakeExecutor(produce)
        opts = RunOptions.create(method="eager_adapt", max_sequences=m, entropy_threshold=2.0)
        results = [PromptResult(index=i, prompt=p, sequences=[], prompt_tokens=0) for i, p in enumerate(prompts)]
        stats = RunStats(method="eager_adapt")
        outcome = run_phases(ex, opts, results, stats, None, None, None, chunk_size=chunk_size)
        return ex, results, stats, outcome

    whole_ex, whole, whole_stats, whole_outcome = run(None)
    ex, chunked, stats, outcome = run(chunk)
    widest = max(sum(j.max_sequences for j in jobs) for _, jobs in whole_ex.calls if jobs[0].round > 0)
    assert widest > chunk * m, "the setting must make an unchunked try wider than a phase (a) chunk"
    tries = [jobs for _, jobs in ex.calls if jobs[0].round > 0]
    for jobs in tries:
        assert sum(j.max_sequences for j in jobs) <= chunk * m or len(jobs) == 1, [j.max_sequences for j in jobs]
    assert outcome == whole_outcome and stats.sequences == whole_stats.sequences
    assert [[s.index for s in p.sequences] for p in chunked] == [[s.index for s in p.sequences] for p in whole]
