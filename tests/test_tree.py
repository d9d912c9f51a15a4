"""Tree reallocation: the branch-point choice (pure) and continued trees on the real model."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

import eager_cpp
from eager_cpp import _core
from eager_cpp.engine.local import engine_config, to_prompt_result
from eager_cpp.method.phases import PhaseJob, Seed, tree_seeds
from eager_cpp.core.results import PromptResult, Sequence
from eager_cpp.answers.scoring import default_scorer
from eager_cpp.method.tree import (MAX_RANKED_TOKENS, BranchChoice, branch_points, branching_closes_at,
                            choose_branch_points, last_branch_step, ranked_limit, room_margin)
from conftest import load_jsonl, reference_logits

FIRST_LINE = default_scorer("first_line")


def seq(index, token_ids, entropies, parent=None, branch_step=0, round=0, marker_step=None):
    """A result Sequence as the engine reports one: entropies for its own tokens only."""
    own = token_ids[branch_step:]
    assert len(entropies) == len(own)
    return Sequence(index=index, text="", token_ids=list(token_ids), own_tokens=list(own), entropies=list(entropies),
                    parent=parent, branch_step=branch_step, finish_reason="length", round=round,
                    branch_entropy=entropies[0] if parent is not None else None, marker_step=marker_step)


# A phase-(a) tree: root 0 took 10,11,12,13; child 1 branched at step 1 (took 21 where 0 took 11).
TREE = [
    seq(0, [10, 11, 12, 13], [0.2, 1.5, 0.9, 0.1]),
    seq(1, [10, 21, 22, 23], [1.5, 0.4, 2.0], parent=0, branch_step=1),
]


# --- the pure choice -------------------------------------------------------------------------------

def test_points_are_tree_nodes_ranked_by_entropy_with_the_tokens_taken_there():
    points = branch_points(TREE)
    # The child's first own step is the same node as the root's step 1: one point, both tokens taken.
    assert [(p.sequence, p.step) for p in points] == [(1, 3), (0, 1), (0, 2), (1, 2), (0, 0), (0, 3)]
    by_node = {(p.sequence, p.step): p for p in points}
    assert by_node[(0, 1)].taken == (11, 21)
    assert by_node[(0, 1)].entropy == 1.5
    assert by_node[(1, 3)].taken == (23,) and by_node[(1, 3)].entropy == 2.0
    assert by_node[(0, 0)].taken == (10,)


def test_roots_that_sampled_the_same_start_share_their_nodes():
    roots = [seq(0, [5, 6, 7], [1.0, 1.1, 1.2]), seq(1, [5, 6, 8], [0.9, 0.8, 0.7]), seq(2, [9], [3.0])]
    points = branch_points(roots)
    steps = {(p.sequence, p.step): p.taken for p in points}
    # Steps 0 and 1 of root 1 are root 0's nodes (same prefix): recorded once, with the first entropy.
    assert steps == {(0, 0): (5, 9), (0, 1): (6,), (0, 2): (7, 8)}


def test_each_point_once_per_rank_rank_one_everywhere_first():
    points = branch_points(TREE)
    chosen = choose_branch_points(points, 8)
    pairs = [(c.point.sequence, c.point.step, c.rank) for c in chosen]
    assert len(set(pairs)) == len(pairs) == 8
    assert [r for *_, r in pairs] == [1] * 6 + [2, 2]
    assert pairs[:2] == [(1, 3, 1), (0, 1, 1)]  # highest entropy first
    assert pairs[6:] == [(1, 3, 2), (0, 1, 2)]
    assert choose_branch_points(points, 0) == []
    with pytest.raises(ValueError):
        choose_branch_points(points, -1)


def test_ranks_stop_where_the_engine_cannot_rank():
    points = branch_points([seq(0, [1], [1.0])])  # one point, one token taken
    chosen = choose_branch_points(points, 100, max_ranked=4)
    assert [c.rank for c in chosen] == [1, 2, 3]  # rank + 1 taken token <= 4
    assert choose_branch_points([], 3) == []


def test_a_point_offers_only_what_the_engine_and_top_k_allow():
    assert MAX_RANKED_TOKENS == int(_core.MAX_ENTROPY_TOP_K)  # the planner and the engine agree
    assert ranked_limit(0) == MAX_RANKED_TOKENS and ranked_limit(5) == 5 and ranked_limit(1000) == MAX_RANKED_TOKENS
    points = branch_points([seq(0, [1, 2], [1.0, 2.0]), seq(1, [1, 3], [0.5], parent=0, branch_step=1),
                            seq(2, [1, 4], [0.5], parent=0, branch_step=1)])
    # Step 1 has taken 3 tokens (2, 3, 4), step 0 one (1).
    with_top_k = [(c.point.step, c.rank) for c in choose_branch_points(points, 100, ranked_limit(4))]
    assert with_top_k == [(1, 1), (0, 1), (0, 2), (0, 3)]  # rank + taken <= top_k = 4
    # top_k = 3: the step-1 point has all of its top 3 taken and offers nothing.
    assert [(c.point.step, c.rank) for c in choose_branch_points(points, 100, ranked_limit(3))] == [(0, 1), (0, 2)]
    # Without a filter the engine's reach bounds it: 63 ranks at step 0, 61 at step 1.
    assert len(choose_branch_points(points, 1000)) == (64 - 1) + (64 - 3)
    prompt = PromptResult(index=0, prompt="p", sequences=[seq(0, [1, 2], [1.0, 2.0]),
                                                          seq(1, [1, 3], [0.5], parent=0, branch_step=1)],
                          prompt_tokens=1)
    assert max(s.rank + len(s.exclude) for s in tree_seeds(prompt, 50, 1000, top_k=5)) == 5
    assert len(tree_seeds(prompt, 50, 1000, top_k=5)) == (5 - 1) + (5 - 2)


def test_points_without_room_for_an_answer_are_skipped():
    assert [room_margin(n) for n in (1, 6, 16, 17, 512)] == [2, 2, 2, 2, 64]
    assert last_branch_step(10) == 8 and last_branch_step(512) == 448 and last_branch_step(1) == -1
    root = seq(0, list(range(100, 110)), [1.0] * 10)  # ten tokens, a point at every step 0..9
    prompt = PromptResult(index=0, prompt="p", sequences=[root], prompt_tokens=1)
    steps = {len(s.prefix) for s in tree_seeds(prompt, 100, 1000, max_new_tokens=10)}
    assert steps == set(range(9))  # step 9 would leave the forced token alone: no room for an answer
    assert {len(s.prefix) for s in tree_seeds(prompt, 100, 1000)} == set(range(10))  # unbounded: every step
    assert tree_seeds(prompt, 100, 1000, max_new_tokens=1) == ()
    # A closed point (a seed came back unavailable there) offers nothing more.
    assert {len(s.prefix) for s in tree_seeds(prompt, 100, 1000, closed={(0, 3), (0, 5)})} == set(range(10)) - {3, 5}


def core_sequence(own, finish="length", parent=-1, branch_step=0):
    """One sequence as the engine returns it (the fields to_prompt_result reads)."""
    return SimpleNamespace(own_tokens=list(own), text=b"", entropies=[0.5] * len(own), parent=parent,
                           branch_step=branch_step, finish_reason=finish, branch_entropy=0.5, marker_step=-1)


def test_unavailable_seeds_are_dropped_and_the_rest_renumbered():
    seeds = (Seed(source=0, prefix=(10,), exclude=(11,), rank=1), Seed(source=0, prefix=(10,), exclude=(11,), rank=2),
             Seed(source=1, prefix=(10, 21), exclude=(22,), rank=1))
    job = PhaseJob(index=4, prompt="p", max_sequences=4, theta=1.0, sequence_base=9, round=2, seeds=seeds,
                   first_index=5)
    core = SimpleNamespace(prompt_tokens=3, steps=2, sequences=[
        core_sequence([31, 32]), core_sequence([], finish="unavailable"), core_sequence([41], finish="eos"),
        core_sequence([51], parent=0, branch_step=2)])
    result, dropped = to_prompt_result(job, core)
    assert dropped == (1,)
    # Indices from first_index, contiguous; the child of engine sequence 0 points at its new index.
    assert [(s.index, s.parent, s.token_ids, s.finish_reason) for s in result.sequences] == [
        (5, 0, [10, 31, 32], "length"), (6, 1, [10, 21, 41], "eos"), (7, 5, [10, 31, 51], "length")]
    orphan = SimpleNamespace(prompt_tokens=3, steps=2, sequences=[
        core_sequence([], finish="unavailable"), core_sequence([1]), core_sequence([1], finish="length"),
        core_sequence([7], parent=0, branch_step=1)])
    with pytest.raises(RuntimeError, match="did not start"):
        to_prompt_result(job, orphan)
    not_a_seed = SimpleNamespace(prompt_tokens=3, steps=2, sequences=[core_sequence([1])] * 3 + [
        core_sequence([], finish="unavailable")])
    with pytest.raises(RuntimeError, match="not an untouched seed"):
        to_prompt_result(job, not_a_seed)


def test_no_branch_window_excludes_steps_after_branching_closed():
    # Window 2: with no branch, the count after step j is j + 1, so branching closes after step 1.
    assert branching_closes_at([seq(0, [1, 2, 3, 4, 5], [1.0] * 5)], 2) == 1
    # The child born at step 1 resets the count: 1 after step 2, 2 after step 3 -> closes after step 3.
    tree = [seq(0, [1, 2, 3, 4, 5, 6], [1.0] * 6), seq(1, [1, 9, 3, 4, 5, 6], [1.0] * 5, parent=0, branch_step=1)]
    assert branching_closes_at(tree, 2) == 3
    assert branching_closes_at(tree, 1000) is None
    assert {p.step for p in branch_points(tree, no_branch_window=2)} == {0, 1, 2, 3}
    # Extras (round > 0) did not run under phase (a)'s window: they do not move it.
    extra = seq(2, [1, 2, 3, 4, 5, 6, 7], [1.0] * 3, parent=0, branch_step=4, round=1)
    assert branching_closes_at(tree + [extra], 2) == 3
    with pytest.raises(ValueError):
        branching_closes_at(tree, 0)


def test_steps_after_the_end_of_thinking_marker_are_excluded():
    tree = [seq(0, [1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0], marker_step=1)]  # token 1 completed the marker
    assert [p.step for p in branch_points(tree)] == [1, 0]
    assert branch_points([seq(0, [1, 2], [float("nan"), 1.0])])[0].step == 1  # unrecorded entropy: no point


def test_seeds_carry_the_prefix_and_the_tokens_taken():
    prompt = PromptResult(index=3, prompt="p", sequences=list(TREE), prompt_tokens=4)
    seeds = tree_seeds(prompt, 3, 1000)
    assert seeds[0] == Seed(source=1, prefix=(10, 21, 22), exclude=(23,), rank=1)
    assert seeds[1] == Seed(source=0, prefix=(10,), exclude=(11, 21), rank=1)
    job = PhaseJob(index=3, prompt="p", max_sequences=3, theta=1.0, sequence_base=2, round=1, seeds=seeds)
    assert PhaseJob.from_dict(job.to_dict()) == job  # what Ray actors receive


def test_nth_not_excluded_on_a_row():
    row = np.array([0.1, 3.0, 2.0, 2.0, -1.0, 5.0], dtype=np.float32)
    assert _core.nth_not_excluded(row, [], 1) == 5
    assert _core.nth_not_excluded(row, [5, 1], 1) == 2  # tie 2.0: the lower id first
    assert _core.nth_not_excluded(row, [5, 1], 2) == 3
    assert _core.nth_not_excluded(row, [5], 5) == 4
    assert _core.nth_not_excluded(row, [5], 6) == -1  # the row has no 6th
    with pytest.raises(ValueError):
        _core.nth_not_excluded(row, [], 0)


# --- on the real model ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def capitals():
    rows = load_jsonl("capitals_dev_100.jsonl", limit=10)
    return [r["prompt"] for r in rows], [r["answer"] for r in rows]


def common(**kw):
    base = dict(max_sequences=4, entropy_threshold=0.75, temperature=0.6, max_new_tokens=10, stop="\n", seed=7,
                reallocation="tree")
    base.update(kw)
    return base


def test_tree_extras_continue_their_source_with_the_best_untaken_token(model, reference, capitals):
    prompts, _ = capitals
    r = eager_cpp.run(model, prompts, method="eager_adapt", **common())
    outcome = r.reallocation
    assert outcome.granted and outcome.produced == outcome.granted  # one try spends a tree's extras
    assert r.stats.reallocation_tries == 1
    extras = checked = exact = 0
    expected_reprocessed = 0
    for prompt, p in zip(prompts, r.prompts):
        first = [s for s in p.sequences if s.round == 0]
        later = [s for s in p.sequences if s.round > 0]
        assert len(later) == outcome.produced.get(p.index, 0)
        assert p.n_sequences <= 4 + outcome.granted.get(p.index, 0)  # never past the plan
        points = {(pt.sequence, pt.step): pt for pt in branch_points(first)}
        prefixes = set()
        prompt_tokens = model.tokenize(prompt)
        for s in later:
            extras += 1
            source = p.sequences[s.parent]
            assert source.round == 0
            # Its tokens before the branch are its source's; from there on they are its own.
            assert s.token_ids[: s.branch_step] == source.token_ids[: s.branch_step]
            assert s.token_ids[s.branch_step:] == s.own_tokens and s.own_tokens
            point = points[(s.parent, s.branch_step)]
            assert s.own_tokens[0] not in point.taken  # never a token the tree already took there
            prefixes.add(tuple(s.token_ids[: s.branch_step]))
            # Under teacher forcing its first token is the best one not taken there (the reference's
            # top candidates outside `taken`), within the batch noise the branch tests allow.
            row = reference_logits(reference, prompt_tokens + s.token_ids[: s.branch_step + 1])[-2]
            order = [t for t in np.argsort(-row, kind="stable").tolist() if t not in point.taken]
            rank = sum(1 for o in later if (o.parent, o.branch_step) == (s.parent, s.branch_step) and o.index <= s.index)
            checked += 1
            if order[rank - 1] == s.own_tokens[0]:
                exact += 1
            else:
                assert s.own_tokens[0] in order[: rank + 4]
                assert abs(row[s.own_tokens[0]] - row[order[rank - 1]]) < 1.0
            assert math.isclose(s.branch_entropy, point.entropy, abs_tol=0.3)
        # Prefixes are reprocessed once per distinct prefix at most (shared starts are forked).
        expected_reprocessed += sum(len(x) for x in prefixes)
    assert extras > 0 and exact >= 0.75 * checked
    assert 0 < r.stats.reprocessed_tokens <= expected_reprocessed
    assert r.stats.generated_tokens == sum(len(s.own_tokens) for p in r.prompts for s in p.sequences)


def test_tree_reallocation_is_reproducible_and_spends_full_eager_budget(model, capitals):
    prompts, answers = capitals
    a = eager_cpp.run(model, prompts, method="eager", answers=answers, scorer=FIRST_LINE, **common())
    b = eager_cpp.run(model, prompts, method="eager", answers=answers, scorer=FIRST_LINE, **common())
    sig = lambda r: [[(s.parent, s.branch_step, s.token_ids) for s in p.sequences] for p in r.prompts]
    assert sig(a) == sig(b)
    assert a.settings["reallocation"] == "tree"
    init = [PromptResult(p.index, p.prompt, [s for s in p.sequences if s.round == 0], p.prompt_tokens,
                         gold_answer=p.gold_answer) for p in a.prompts]
    plan = eager_cpp.plan_reallocation(eager_cpp.summarize(init, 0.75), 4, "eager")
    extras = {e.index: e.extra_sequences for e in plan.extras}
    assert extras, "this setting leaves prompts unsolved"
    for p in a.prompts:
        later = [s for s in p.sequences if s.round > 0]
        if any(s.correct for s in p.sequences if s.round == 0):
            assert not later
        # One try, each planned extra a seed: every unsolved prompt gets its eᵢ (no filter: no seed unavailable).
        assert len(later) == extras.get(p.index, 0) and all(s.round == 1 for s in later)
        assert [s.index for s in p.sequences] == list(range(p.n_sequences))
    assert a.stats.unspent_sequences == plan.unused and a.stats.unavailable_seeds == 0
    assert a.stats.sequences == sum(len(p.sequences) for p in init) + sum(extras.values())


def test_seeds_that_share_a_point_take_successive_ranks(model):
    """Engine level: three seeds at one point and one deeper, the prompt prefilled once."""
    tokens = model.tokenize("Country: Peru\nCapital:")
    cfg = engine_config(eager_cpp.RunOptions.create(max_new_tokens=6, temperature=0.0), model)
    cfg.method = _core.Method.EAGER_INIT
    probe = model.generate(cfg, [_core.PromptJob(tokens, 1, 1e9, 0)])
    greedy = list(probe.prompts[0].sequences[0].own_tokens)
    seeds = [_core.BranchSeed([], [greedy[0]], 1), _core.BranchSeed([], [greedy[0]], 2),
             _core.BranchSeed(greedy[:2], [greedy[2]], 1), _core.BranchSeed([], [greedy[0]], 3)]
    out = model.generate(cfg, [_core.PromptJob(tokens, 4, 1e9, 0, 1, seeds)])
    firsts = [s.own_tokens[0] for s in out.prompts[0].sequences]
    assert len(set(firsts[:2] + firsts[3:])) == 3 and greedy[0] not in firsts[:2] + firsts[3:]
    assert firsts[2] != greedy[2]
    assert [s.branch_step for s in out.prompts[0].sequences] == [0, 0, 2, 0]
    assert out.stats.reprocessed_tokens == 2 and out.stats.prompt_tokens == len(tokens)
    assert out.stats.generated_tokens == sum(len(s.own_tokens) for s in out.prompts[0].sequences)
    # A seed continues from its prefix: its text starts with the prefix's.
    prefix_text = model.detokenize(greedy[:2])
    assert out.prompts[0].sequences[2].text.decode().startswith(prefix_text)


def test_every_rank_at_a_point_is_the_engines_own_next_token(model):
    """Exact, without cross-implementation noise: seeds of ranks 1..12 at one point take the tokens that a
    rank-1 seed takes there once the lower ranks' tokens are excluded too (the engine's own ordering of the
    same row), so a bug in any rank >= 2 fails here."""
    tokens = model.tokenize("Country: Peru\nCapital:")
    cfg = engine_config(eager_cpp.RunOptions.create(max_new_tokens=2, temperature=0.0), model)
    cfg.method = _core.Method.EAGER_INIT
    greedy = model.generate(cfg, [_core.PromptJob(tokens, 1, 1e9, 0)]).prompts[0].sequences[0].own_tokens[0]
    ranks = 12
    seeds = [_core.BranchSeed([], [greedy], r) for r in range(1, ranks + 1)]
    out = model.generate(cfg, [_core.PromptJob(tokens, ranks, 1e9, 0, 1, seeds)])
    firsts = [s.own_tokens[0] for s in out.prompts[0].sequences]
    assert len(set(firsts)) == ranks and greedy not in firsts
    for r in range(2, ranks + 1):
        alone = [_core.BranchSeed([], [greedy] + firsts[: r - 1], 1)]
        one = model.generate(cfg, [_core.PromptJob(tokens, 1, 1e9, 0, 1, alone)])
        assert one.prompts[0].sequences[0].own_tokens[0] == firsts[r - 1], f"rank {r}"


Q = "Country: Peru\nCapital:"


def test_full_eager_spends_a_large_budget_at_few_points(model):
    """Defect 3 of the fidelity issue (engine side): one unsolved prompt whose root stops after a couple of
    tokens gets M - 1 = 63 seeds at its two or three points, ranks past the first seed's top 20. The run
    must complete (no failed try) and spend the whole plan. Needs the engine's fix (ranks beyond 20)."""
    r = eager_cpp.run(model, [Q], method="eager", reallocation="tree", answers=["zzz"], max_sequences=64,
                      max_new_tokens=8, stop="\n", entropy_threshold=100.0, seed=3)
    assert r.prompts[0].sequences[0].round == 0 and sum(s.round == 0 for s in r.prompts[0].sequences) == 1
    assert r.stats.reallocation_error == "", r.stats.reallocation_error
    later = [s for s in r.prompts[0].sequences if s.round > 0]
    assert max(rank_of(r.prompts[0], s) for s in later) > 20
    assert len(later) == r.reallocation.granted[0] == 63 and r.stats.unspent_sequences == 0


def rank_of(prompt, s):
    """The rank an extra took at its point: 1 + the extras of the same try at the same point before it."""
    return 1 + sum(1 for o in prompt.sequences[: s.index]
                   if o.round == s.round and (o.parent, o.branch_step) == (s.parent, s.branch_step))


def test_tree_extras_take_only_tokens_top_k_allows(model):
    """Issue 23: with top_k = 5 a point offers at most its 5 most likely tokens, the taken ones included;
    what no point can offer is unspent (it used to give one point 8 distinct first tokens)."""
    r = eager_cpp.run(model, [Q], method="eager", reallocation="tree", answers=["zzz"], max_sequences=16,
                      max_new_tokens=8, stop="\n", entropy_threshold=100.0, top_k=5, seed=3)
    p = r.prompts[0]
    later = [s for s in p.sequences if s.round > 0]
    assert later and r.stats.reallocation_error == ""
    # Every node of the final tree (extras' own steps are points of the next try) holds at most 5 tokens,
    # and some node is full: the limit decided.
    taken = [len(pt.taken) for pt in branch_points(p.sequences)]
    assert max(taken) == 5
    assert r.stats.unspent_sequences == 15 - len(later)


def test_seeds_past_what_top_p_allows_are_unavailable_and_unspent(model):
    """The engine contract: a seed whose rank-th untaken token is outside what the run's filters allow comes
    back "unavailable"; eager_cpp drops it, counts it unspent and keeps indices contiguous. top_p = 0.5
    leaves a handful of tokens at each point of this greedy-sure prompt. Needs the engine's filter rule."""
    r = eager_cpp.run(model, [Q], method="eager", reallocation="tree", answers=["zzz"], max_sequences=16,
                      max_new_tokens=8, stop="\n", entropy_threshold=100.0, top_p=0.5, seed=3)
    p = r.prompts[0]
    assert r.stats.reallocation_error == "", r.stats.reallocation_error
    later = [s for s in p.sequences if s.round > 0]
    assert r.stats.unavailable_seeds > 0 and r.reallocation.unavailable == r.stats.unavailable_seeds
    assert [s.index for s in p.sequences] == list(range(p.n_sequences))
    assert all(s.own_tokens and s.finish_reason != "unavailable" for s in later)
    assert r.stats.unspent_sequences == 15 - len(later)


def test_bad_seeds_are_clear_errors(model):
    tokens = model.tokenize("Country: Peru\nCapital:")
    cfg = engine_config(eager_cpp.RunOptions.create(max_new_tokens=4), model)
    cfg.method = _core.Method.EAGER_INIT
    cases = [
        ([_core.BranchSeed([1, 2, 3, 4], [], 1)], 1, "no room"),
        ([_core.BranchSeed([], [], 0)], 1, "rank"),
        ([_core.BranchSeed([10**9], [], 1)], 1, "vocabulary"),
        ([_core.BranchSeed([], [], 1)] * 2, 1, "exceed max_sequences"),
    ]
    for seeds, m, message in cases:
        with pytest.raises(ValueError, match=message):
            model.generate(cfg, [_core.PromptJob(tokens, m, 1.0, 0, 0, seeds)])
    cfg.method = _core.Method.PARALLEL
    with pytest.raises(ValueError, match="EAGer-init"):
        model.generate(cfg, [_core.PromptJob(tokens, 1, 1.0, 0, 0, [_core.BranchSeed([], [], 1)])])


def test_tree_option_is_checked():
    with pytest.raises(ValueError, match="reallocation"):
        eager_cpp.RunOptions.create(reallocation="forest")
    with pytest.raises(ValueError, match="record_entropies"):
        eager_cpp.RunOptions.create(method="eager_adapt", reallocation="tree", record_entropies=False)
