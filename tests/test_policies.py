"""The engine's branch policy and admission, fed synthetic rows and prompts: no model is loaded.

`eager_cpp._core.policies` binds the same C++ objects the engine asks per row and per admission.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from eager_cpp import _core
from eager_cpp.core.results import Sequence
from eager_cpp.method.tree import branching_closes_at

P = _core.policies
EAGER, PARALLEL = _core.Method.EAGER_INIT, _core.Method.PARALLEL
FIXED, P99 = _core.ThresholdMode.FIXED, _core.ThresholdMode.P99


def policy(mode=FIXED, window=1000, method=EAGER):
    return P.BranchPolicy(method, mode, window)


def test_may_branch_needs_eager_init_an_open_prompt_no_marker_and_room_under_the_cap():
    st = P.BranchState()
    assert policy().may_branch(st, False, 3, 8)
    assert not policy(method=PARALLEL).may_branch(st, False, 3, 8)
    assert not policy().may_branch(st, True, 3, 8)  # past the end-of-thinking marker
    assert not policy().may_branch(st, False, 8, 8)  # at the cap
    st.open = False
    assert not policy().may_branch(st, False, 3, 8)


def test_a_row_branches_above_theta_with_a_distinct_second_token():
    st = P.BranchState()
    assert policy().branches(1.51, 7, 9, 1.5, st)
    assert not policy().branches(1.5, 7, 9, 1.5, st)  # strictly above
    assert not policy().branches(2.9, 7, 7, 1.5, st)  # no second token to give the child
    assert not policy().branches(2.9, 7, -1, 1.5, st)


def test_p99_floor_uses_only_earlier_steps_entropies():
    pol = policy(P99)
    st = P.BranchState()
    for h in range(100):  # one step's entropies: they join the history when the step ends
        pol.observe(st, float(h))
    assert pol.branches(50.0, 1, 2, 1.0, st)  # same step: the floor is still empty
    pol.end_step(st, 1, 8)
    floor = float(np.percentile(np.arange(100, dtype=np.float32), 99))
    assert pol.branches(floor + 0.01, 1, 2, 1.0, st)
    assert not pol.branches(floor - 0.01, 1, 2, 1.0, st)  # above θ, under the floor
    assert not pol.branches(50.0, 1, 2, 1.0, st)
    assert not policy(FIXED).branches(0.5, 1, 2, 1.0, st)
    assert policy(FIXED).branches(50.0, 1, 2, 1.0, st)  # the fixed mode ignores the history


def test_p99_ignores_nan_entropies():
    pol = policy(P99)
    st = P.BranchState()
    pol.observe(st, float("nan"))
    pol.observe(st, 3.0)
    pol.end_step(st, 1, 8)
    assert st.history == [3.0]


def test_percentile_99_matches_numpy():
    rng = random.Random(7)
    for n in (1, 2, 5, 100, 101, 1000):
        values = [rng.uniform(0, 3) for _ in range(n)]
        want = np.percentile(np.array(values, dtype=np.float64), 99)
        assert P.percentile_99(values) == pytest.approx(want, rel=1e-6, abs=1e-6)
    assert P.percentile_99([]) == float("-inf")


def test_window_closes_after_steps_without_a_branch_and_a_branch_resets_it():
    pol = policy(window=3)
    st = P.BranchState()
    assert not pol.end_step(st, 1, 8)
    pol.mark_branch(st)
    assert not pol.end_step(st, 2, 8)
    assert st.steps_without_branch == 0
    assert not pol.end_step(st, 2, 8)
    assert not pol.end_step(st, 2, 8)
    assert pol.end_step(st, 2, 8)  # the third quiet step closes it
    assert not st.open


def test_cap_closes_branching_at_the_end_of_the_step():
    pol = policy()
    st = P.BranchState()
    assert pol.end_step(st, 8, 8)
    st = P.BranchState()
    assert pol.close_if_capped(st, 4, 4)
    assert not pol.close_if_capped(P.BranchState(), 3, 4)


def root(tokens: int, births: list[int]) -> list[Sequence]:
    seqs = [Sequence(index=0, text="", token_ids=[1] * tokens, own_tokens=[1] * tokens, entropies=[0.0] * tokens,
                     parent=None, branch_step=0, finish_reason="length")]
    for k, b in enumerate(births, start=1):
        seqs.append(Sequence(index=k, text="", token_ids=[1] * tokens, own_tokens=[1] * (tokens - b),
                             entropies=[0.0] * (tokens - b), parent=0, branch_step=b, finish_reason="length"))
    return seqs


def closes_by_policy(tokens: int, births: list[int], window: int):
    """The step at which the engine's policy closes a prompt whose children are born at `births`."""
    pol = policy(window=window)
    st = P.BranchState()
    for step in range(tokens):
        if step in births:
            pol.mark_branch(st)
        if pol.end_step(st, 1, 10_000):
            return step
    return None


def test_tree_branching_closes_at_agrees_with_the_engine_policy():
    rng = random.Random(3)
    for _ in range(300):
        tokens = rng.randint(1, 40)
        window = rng.randint(1, 12)
        births = sorted(rng.sample(range(tokens), rng.randint(0, min(tokens, 5))))
        assert branching_closes_at(root(tokens, births), window) == closes_by_policy(tokens, births, window), \
            (tokens, window, births)


def job(m: int, n_tokens: int = 10) -> _core.PromptJob:
    return _core.PromptJob(list(range(1, n_tokens + 1)), m, 2.0, 0)


def test_admission_reserves_ids_not_cells():
    adm = P.Admission(EAGER, 32, 100, 16, 10**9)
    assert adm.may_admit(job(8), [], 0, 0)
    adm.admitted(job(8))
    adm.admitted(job(8))
    assert not adm.may_admit(job(1), [], 0, 0)  # the 16 ids are reserved
    adm.released(job(8))
    assert adm.may_admit(job(8), [], 0, 0)


def test_admission_projects_cells_from_the_lengths_of_finished_sequences():
    adm = P.Admission(PARALLEL, 64, 1000, 256, 10_000)
    running = P.PromptLoad(4, 4, 4, False, 40)  # 4 sequences 10 tokens in
    assert adm.expected_length() == 1000.0  # nothing finished: the budget is the length
    assert adm.expected_growth([running], -1.0) == 4 * 1000 - 40
    assert not adm.may_admit(job(4), [running], 4, 2000)  # 2000 + 3960 + 10 + 4 x 1000 > 0.99 x 10000
    for _ in range(4):
        adm.sequence_finished(20)
    assert adm.expected_length() == 20.0
    assert adm.expected_growth([running], -1.0) == 4 * 20 - 40
    assert adm.may_admit(job(4), [running], 4, 2000)  # 2000 + 40 + 10 + 4 x 20
    assert not adm.may_admit(job(4), [running], 4, 9_900)  # the cells held leave no room
    assert adm.may_admit(job(4), [], 0, 10**9)  # nothing live: the first prompt always starts


def test_admission_counts_expected_growth_until_counts_are_final():
    adm = P.Admission(EAGER, 16, 10, 256, 10**9)
    open_prompt = P.PromptLoad(8, 1, 1, True)  # may grow to its cap of 8
    assert adm.growth_estimate() == -1.0
    assert adm.expected_live([open_prompt], -1.0) == 8.0
    assert adm.may_admit(job(8), [open_prompt], 1, 0)  # 8 + 8 <= 16
    assert not adm.may_admit(job(8), [open_prompt, open_prompt], 2, 0)  # 24 > 16
    adm.count_final(2)
    adm.count_final(4)
    assert adm.growth_estimate() == 3.0
    assert adm.expected_live([open_prompt], 3.0) == 3.0
    assert adm.may_admit(job(8), [open_prompt] * 4, 4, 0)  # 4 x 3 + 3 <= 16
    closed = P.PromptLoad(8, 2, 2, False)  # closed for branching: only its live sequences count
    assert adm.expected_live([closed], 3.0) == 2.0
    assert adm.expected_live([P.PromptLoad(8, 2, 2, True)], 3.0) == 3.0  # open: it may grow to the estimate
    finished_some = P.PromptLoad(8, 5, 1, True)  # 4 of its 5 finished: expected 3 - 4 < live
    assert adm.expected_live([finished_some], 3.0) == 1.0


def test_full_parallel_admission_counts_every_sample():
    adm = P.Admission(PARALLEL, 16, 10, 256, 10**9)
    adm.count_final(1)  # a growth estimate does not apply: Full Parallel starts all M at once
    load = P.PromptLoad(8, 8, 8, False)
    assert adm.may_admit(job(8), [load], 8, 0)
    assert not adm.may_admit(job(8), [load, load], 16, 0)
    assert adm.may_admit(job(3), [], 0, 0)  # nothing live: the first prompt always starts


# The KV scheduler over synthetic prompts (`KvHarness`: the sequence table and the scheduler stepped as the
# engine steps them; the cache only records what it is asked). Prompt i's sequences end with EOS after
# lengths[i] tokens, unless EOS is ignored (lengths known), then at max_new_tokens.
UNIFIED, STREAMS = _core.KvLayout.UNIFIED, _core.KvLayout.PER_SEQUENCE
S = P.SequenceStatus


def kv_harness(prompts, lengths=None, m=4, max_new_tokens=100, known=False, cells=4096, ceiling=None,
               layout=UNIFIED, method=PARALLEL, n_ids=256):
    cfg = _core.EngineConfig()
    cfg.method = method
    cfg.max_new_tokens = max_new_tokens
    cfg.ignore_eos = known
    cfg.kv_layout = layout
    lengths = lengths or [max_new_tokens] * len(prompts)
    return P.KvHarness(cfg, list(prompts), list(lengths), m, cells, ceiling or cells, n_ids)


def own_lengths(h):
    return [[n for n, _, _ in p] for p in h.results()]


def prompt_states(h):
    """Per prompt in flight: the statuses of its sequences."""
    states = {}
    for prompt, _, _, status, _, _ in h.sequences():
        states.setdefault(prompt, set()).add(status)
    return states


def test_a_budget_that_fits_runs_without_holding_back_pausing_or_growing():
    h = kv_harness([30, 30], m=4, max_new_tokens=50, cells=1024)
    assert h.schedule() == [0, 1]  # both trees fit beside each other
    h.run()
    assert h.preemptions == 0 and h.grows == 0 and h.recomputed_tokens == 0
    assert not any(op[0] in ("grow", "recompute", "copy_prefix") for op in h.ops)
    assert own_lengths(h) == [[50] * 4] * 2
    # Cells counted once however many sequences share them: two prompts, eight sequences of 49 own cells
    # at the last step (the 50th token is never fed).
    assert h.peak_cells == 2 * 30 + 8 * 49
    assert [h.prompt_status(i) for i in (0, 1)] == [P.PromptStatus.DONE] * 2


def test_known_lengths_hold_back_samples_that_have_not_started_instead_of_recomputing():
    # Four samples of 100 tokens beside a 30-token prompt need 430 cells; 256 hold two running at a time.
    h = kv_harness([30], m=4, known=True, cells=256)
    h.schedule()
    h.step()
    held = [s for s in h.sequences() if s[3] == S.HELD_BACK]
    assert held and all(s[5] == 1 for s in held)  # only samples that have not started wait
    h.run()
    assert own_lengths(h) == [[100] * 4]
    assert h.preemptions > 0 and h.recomputed_tokens == 0  # they started later, copying the prompt's cells
    assert h.peak_cells <= 256


def running_and_paused(h):
    states = prompt_states(h)
    running = [p for p, st in states.items() if S.RUNNING in st]
    paused = [p for p, st in states.items() if st <= {S.PAUSED, S.HELD_BACK}]
    return running, paused


def test_a_full_cache_pauses_the_latest_admitted_prompt_and_resumes_in_admission_order():
    # Two short prompts teach admission a length of 5 tokens; then three prompts whose sequences run on
    # to 200 are admitted together and outgrow 512 cells: the latest admitted gives way first, and paused
    # prompts come back in the order they were admitted.
    h = kv_harness([30] * 5, lengths=[5, 5, 200, 200, 200], m=2, max_new_tokens=200, cells=512)
    resumed, was_paused, steps = [], set(), 0
    while h.prompt_status(4) != P.PromptStatus.DONE:
        h.schedule()
        running, paused = running_and_paused(h)
        resumed += sorted(p for p in was_paused if p not in paused)
        if h.running:
            h.step()
            steps += 1
        running, paused = running_and_paused(h)
        # Every prompt that waits paused was admitted after every prompt that runs.
        assert not running or not paused or max(running) < min(paused), (running, paused)
        was_paused = set(paused)
        assert steps < 5000
    assert h.preemptions >= 2 and h.recomputed_tokens > 0
    assert len(resumed) >= 2 and resumed == sorted(resumed)
    assert own_lengths(h) == [[5, 5], [5, 5]] + [[200, 200]] * 3
    assert h.peak_cells <= 512


def test_the_cache_grows_by_doubling_up_to_its_ceiling_then_preempts():
    # One prompt of eight samples of 200 tokens needs 1,630 cells; "auto" starts at 256 with a ceiling of 1,024.
    h = kv_harness([30], m=8, max_new_tokens=200, cells=256, ceiling=1024)
    h.run()
    assert [op for op in h.ops if op[0] == "grow"] == [("grow", 512), ("grow", 1024)]
    assert h.capacity == 1024 and h.grows == 2
    assert h.preemptions > 0 and h.peak_cells <= 1024  # the only prompt pauses its own youngest samples
    assert own_lengths(h) == [[200] * 8]


def test_a_decode_that_finds_no_cell_preempts_once_more_and_the_prompt_resumes():
    h = kv_harness([30, 30], m=2, max_new_tokens=20, cells=512)
    assert h.schedule() == [0, 1]
    h.step(failed_decodes=1)  # llama.cpp found no slot where the count saw room
    assert h.preemptions == 1
    assert running_and_paused(h) == ([0], [1])
    h.schedule()  # room enough: the paused prompt is recomputed and runs again
    assert running_and_paused(h) == ([0, 1], [])
    assert [op[:2] for op in h.ops if op[0] == "recompute"] == [("recompute", 2), ("recompute", 3)]
    h.run()
    assert own_lengths(h) == [[20, 20], [20, 20]]


def test_streams_never_hold_back_or_pause_where_the_unified_cache_would():
    # Eight samples of a 1-token prompt, 255 tokens each (known lengths): each fills a 256-cell stream. On
    # streams every sequence has a stream of its own; the same cells as one unified pool count the prompt
    # once and still fill past the budget's margin, so there samples wait.
    job = dict(m=8, max_new_tokens=255, known=True, cells=8 * 256, n_ids=8)
    streams = kv_harness([1], layout=STREAMS, **job)
    streams.schedule()
    for _ in range(300):
        if streams.prompt_status(0) == P.PromptStatus.DONE:
            break
        assert all(s[3] == S.RUNNING for s in streams.sequences())
        streams.schedule()
        streams.step()
    assert streams.preemptions == 0 and own_lengths(streams) == [[255] * 8]
    unified = kv_harness([1], layout=UNIFIED, **job)
    unified.run()
    assert unified.preemptions > 0 and own_lengths(unified) == [[255] * 8]


def test_streams_grow_only_after_a_decode_found_one_full_and_then_double_together():
    # llama.cpp copies a fork's (or a moved id's) whole stream at the next decode; the state a growing cache is
    # copied out of would miss that copy. So streams never grow before a decode, however long a sequence is
    # (the scheduler's count of cells says nothing about one stream), only after a decode that found a stream
    # full, which applied the queued copies first: then all streams double, up to the longest sequence's length.
    h = kv_harness([10], m=4, max_new_tokens=600, cells=4 * 256, ceiling=4 * 768, layout=STREAMS, method=EAGER,
                   n_ids=4)
    h.schedule()
    h.branch(0)  # a fork queued beside the step that follows
    for _ in range(300):  # past 256 cells a sequence
        h.step()
    assert not any(op[0] == "grow" for op in h.ops) and h.grows == 0
    h.step(failed_decodes=1)
    assert [op for op in h.ops if op[0] == "grow"] == [("grow", 4 * 512)]
    h.step(failed_decodes=1)  # to the ceiling: the budget's streams hold the longest sequence
    assert [op for op in h.ops if op[0] == "grow"] == [("grow", 4 * 512), ("grow", 4 * 768)]
    with pytest.raises(RuntimeError, match="per-sequence KV streams .* could not grow"):
        h.step(failed_decodes=1)


def stream_harness(prompts, m, max_new_tokens, first, whole, streams, budget_streams, method=PARALLEL):
    """Per-sequence streams that start at `first` cells and may grow to `whole`, with a budget (a byte a cell) that
    holds `budget_streams` whole streams."""
    cfg = _core.EngineConfig()
    cfg.method = method
    cfg.max_new_tokens = max_new_tokens
    cfg.ignore_eos = True
    cfg.kv_layout = STREAMS
    return P.KvHarness(cfg, list(prompts), [max_new_tokens] * len(prompts), m, streams * first, streams * whole,
                       streams, stream_budget_cells=budget_streams * whole, whole_stream_cells=whole)


def step_checking_ids(h, branch_at=None):
    """schedule() and step() to the end, checking that every running sequence has a stream of its own; `branch_at`:
    {step: slot} branches asked for before that step. Returns the statuses and ids of the waiting sequences seen."""
    steps, waiting = 0, set()
    while True:
        h.schedule()
        if h.running == 0:
            return waiting
        if branch_at and steps in branch_at:
            h.branch(branch_at[steps])
            waiting |= {(status, sid) for _, _, sid, status, _, _ in h.sequences() if status != S.RUNNING}
        h.step()
        steps += 1
        ids = [sid for _, _, sid, status, _, _ in h.sequences() if status == S.RUNNING]
        assert len(set(ids)) == len(ids) and all(0 <= i < h.streams for i in ids), (ids, h.streams)


def test_streams_that_outgrow_their_budget_become_fewer_longer_streams_and_the_latest_prompt_waits():
    # Two prompts x M 4, 400 tokens: 8 streams of 256 cells fit the budget, 8 of 512 do not, 4 do. When a
    # decode finds the streams full, the latest admitted prompt's sequences are paused, youngest first, until
    # the rest fit (their streams freed, their ids given back), and the 4 running sequences move into a
    # context of 4 streams of 512 cells; the paused prompt is recomputed once ids free, its first sample from
    # nothing, its siblings from that sample's prompt.
    h = stream_harness([20, 20], m=4, max_new_tokens=400, first=256, whole=512, streams=8, budget_streams=4)
    step_checking_ids(h)
    assert [op for op in h.ops if op[0] in ("grow", "reshape_streams")] == [("reshape_streams", 4, 4 * 512, 4)]
    assert (h.streams, h.capacity) == (4, 4 * 512)
    assert h.preemptions == 4 and h.recomputed_tokens == 256 + 3 * 236  # paused at n_past 256 (20 prompt tokens)
    assert own_lengths(h) == [[400] * 4, [400] * 4]


def test_the_sequences_that_keep_running_move_into_the_lowest_streams():
    # Two EAGer prompts (roots in ids 0 and 1), the first branches (its child in id 2). When 512-cell streams
    # fit only two, the latest prompt gives way, and its id 1 lies between the survivors: the child moves from
    # id 2 into stream 1 of the new context, since a context of 2 streams has no id 2.
    h = stream_harness([10, 10], m=2, max_new_tokens=400, first=256, whole=512, streams=4, budget_streams=2,
                       method=EAGER)
    step_checking_ids(h, branch_at={0: 0})
    assert [op for op in h.ops if op[0] == "reshape_streams"] == [("reshape_streams", 2, 2 * 512, 2)]
    assert h.preemptions == 1 and own_lengths(h)[1] == [400]


def test_a_branch_born_when_every_stream_runs_waits_for_an_id_and_copies_its_parent():
    # One EAGer prompt alone: past 256 cells its 3 sequences cannot all have 512-cell streams (the budget holds
    # 2), so its youngest waits; then a branch finds no free id: the child is born held back, with no cells, and
    # starts when a sequence ends, from its parent's cells (a prefix copy), never denied.
    h = stream_harness([10], m=4, max_new_tokens=400, first=256, whole=512, streams=4, budget_streams=2, method=EAGER)
    waiting = step_checking_ids(h, branch_at={0: 0, 1: 0, 260: 0})
    assert [op for op in h.ops if op[0] == "reshape_streams"] == [("reshape_streams", 2, 2 * 512, 2)]
    assert (S.HELD_BACK, -1) in waiting  # the child born after the reshape: no id, no cells
    assert [len(p) for p in h.results()] == [4] and h.results()[0][3][2] == 0  # its parent: the root
    assert all(reason == "length" for _, reason, _ in h.results()[0])


def test_a_growth_the_memory_cannot_hold_lowers_the_ceiling_and_the_run_goes_on_preempting():
    # The budget allows 1,024 cells but the memory holds 512: the failed doubling keeps the 512-cell cache,
    # which becomes the ceiling, and the only prompt's youngest samples wait instead of the run ending.
    h = kv_harness([30], m=8, max_new_tokens=200, cells=256, ceiling=1024)
    h.limit_memory(512)
    h.run()
    assert [op for op in h.ops if op[0] == "grow"] == [("grow", 512), ("grow", 1024)]
    assert h.capacity == 512 and h.grows == 1 and h.peak_cells <= 512
    assert "could not grow the KV cache from 512 to 1024 cells" in h.ceiling_lowered
    assert h.preemptions > 0 and own_lengths(h) == [[200] * 8]
