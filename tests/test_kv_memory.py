"""The KV cache as a memory budget: preemption by recompute when it fills, clear errors when it cannot hold a
prompt, positions bounded by the model's context (docs/long-generations.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import eager_cpp

from conftest import assert_greedy_choices, load_jsonl, tree_shape

# Capitals prompts of ~30 tokens. 256 cells (the smallest cache llama.cpp makes) hold a few prompts' trees:
# admission projects the lengths it has seen, so the sequences that run on past them fill the cache.
SMALL = 256


def prompts() -> list[str]:
    """Two capitals prompts whose answers end at the newline within a few tokens, then four that run on
    without one: admission learns the short length from the first and admits the others together, so their
    sequences outgrow the cache and it must preempt."""
    capitals = [r["prompt"] for r in load_jsonl("capitals_dev_100.jsonl", 40)[10:12]]
    return capitals + ["a a a a a a a a a a a a", "1 2 1 2 1 2 1 2 1 2 1 2", "x y z x y z x y z x y z",
                       "la la la la la la la la"]


def test_a_full_cache_preempts_prompts_and_recomputes_them_as_the_model_would(model, reference):
    kw = dict(method="eager_init", max_sequences=4, entropy_threshold=0.3, temperature=0.0, max_new_tokens=60,
              stop="\n", seed=1)
    tight = eager_cpp.run(model, prompts(), n_ctx=SMALL, **kw)
    free = eager_cpp.run(model, prompts(), **kw)
    assert free.stats.preemptions == 0 and tight.stats.preemptions > 0 and tight.stats.recomputed_tokens > 0
    assert tight.stats.kv_cells == SMALL >= tight.stats.peak_kv_cells
    assert free.stats.peak_kv_cells > SMALL  # the job did need more than the budget
    assert sum(p.n_sequences for p in tight.prompts) > len(tight.prompts)  # trees, not lone roots
    for p in tight.prompts:  # parents and branch steps intact: a child starts with its parent's prefix
        by = {s.index: s for s in p.sequences}
        for s in p.sequences:
            if s.parent is not None:
                assert s.token_ids[: s.branch_step] == by[s.parent].token_ids[: s.branch_step]
    assert_greedy_choices(model, reference, tight)
    # Beside the noise of other batch shapes, the preempted run is the unconstrained one.
    same = sum(a == b for a, b in zip(tree_shape(tight), tree_shape(free)))
    assert same >= len(free.prompts) - 2, (same, len(free.prompts))


def test_sampling_under_preemption_keeps_every_sample_and_reruns_identically(model):
    kw = dict(method="parallel", max_sequences=4, temperature=1.0, max_new_tokens=60, stop="\n", seed=0,
              n_ctx=SMALL)
    a = eager_cpp.run(model, prompts(), **kw)
    b = eager_cpp.run(model, prompts(), **kw)
    assert a.stats.preemptions > 0
    assert all(p.n_sequences == 4 for p in a.prompts)
    assert all(s.finish_reason in ("stop", "length") and len(s.token_ids) <= 60 for p in a.prompts for s in p.sequences)
    assert a.stats.generated_tokens == sum(len(s.own_tokens) for p in a.prompts for s in p.sequences)
    assert a.stats.sequences == 4 * len(a.prompts)
    assert tree_shape(a) == tree_shape(b)


@pytest.mark.parametrize("method", ["parallel", "eager_init"])
def test_a_resumed_sequence_draws_where_its_random_stream_stood(model, method):
    """Every row's uniform draw (the row trace) at each (prompt, sequence, position) is the one the same run without
    preemption draws there: pausing and recomputing never moves a sequence's random stream. (The token a draw
    picks can still differ where the recomputed cells give logits that differ by llama.cpp's kernel noise:
    docs/long-generations.md, "Preemption by recompute".)"""
    from eager_cpp import _core
    from eager_cpp.engine.local import engine_config

    def trace(**memory: object) -> dict:
        # A blank line ends a sample: with a newline, on an AVX-512 CPU without AMX every EAGer sequence ended before
        # the cache filled, and nothing was preempted.
        options = eager_cpp.RunOptions.create(method=method, max_sequences=4, entropy_threshold=1.0, temperature=1.0,
                                              max_new_tokens=60, stop="\n\n", seed=0, **memory)
        cfg = engine_config(options, model)
        cfg.trace_rows = True
        jobs = [_core.PromptJob(model.tokenize(p), 4, 1.0, i) for i, p in enumerate(prompts())]
        out = model.generate(cfg, jobs)
        return out.stats.preemptions, {(r.prompt, r.sequence, r.position): r.draw for r in out.stats.row_trace}

    preempted, tight = trace(n_ctx=SMALL)
    unpaused, roomy = trace(kv_memory="64MiB")
    assert preempted > 0 and unpaused == 0
    common = [key for key in tight if key in roomy]
    assert len(common) >= 0.5 * len(tight) and len({k[:2] for k in common}) >= 12
    assert [tight[k] for k in common] == [roomy[k] for k in common]


def test_one_prompt_larger_than_the_cache_pauses_its_own_sequences(model, reference):
    # One prompt whose 4 greedy samples outgrow the cache: its youngest sequences wait for the others. The
    # samples are the same greedy text, so a resumed one copies all its cells from a running twin and
    # recomputes nothing; all four are still the model's greedy choices.
    r = eager_cpp.run(model, prompts()[:1], method="parallel", max_sequences=4, temperature=0.0, max_new_tokens=90,
                      ignore_eos=True, n_ctx=SMALL)
    assert r.stats.preemptions > 0 and r.stats.recomputed_tokens == 0
    assert [len(s.token_ids) for s in r.prompts[0].sequences] == [90] * 4
    assert_greedy_choices(model, reference, r)


def test_known_lengths_stagger_the_samples_instead_of_recomputing_them(model, reference):
    # Nothing but the cap ends a sequence (ignore_eos, no stop): every length is known. 256 cells hold a
    # prompt and two of its samples at 100 tokens, so samples that have not started wait (costing nothing)
    # and start as the projected peak leaves room; the second prompt starts while the first still runs, one
    # sample at a time. Nothing is recomputed; the greedy samples are the model's choices, and sampled runs
    # keep every sample and rerun identically. (Against an unconstrained run, sampled tokens part by
    # llama.cpp's noise for other batch shapes, so that comparison is greedy.)
    kw = dict(method="parallel", max_sequences=4, max_new_tokens=100, ignore_eos=True, n_ctx=SMALL)
    greedy = eager_cpp.run(model, prompts()[:2], temperature=0.0, **kw)
    assert greedy.stats.preemptions > 0 and greedy.stats.recomputed_tokens == 0
    assert greedy.stats.peak_kv_cells <= SMALL
    assert [len(s.token_ids) for p in greedy.prompts for s in p.sequences] == [100] * 8
    # The prompts overlapped: steps of both beyond each prompt's first (its sampling from the prompt's logits,
    # not an engine step). Here the second starts about 30 steps before the first ends.
    assert sum(p.steps for p in greedy.prompts) - greedy.stats.steps >= 10 + len(greedy.prompts)
    assert_greedy_choices(model, reference, greedy)
    sampled = [eager_cpp.run(model, prompts()[:2], temperature=0.8, seed=4, **kw) for _ in range(2)]
    assert sampled[0].stats.preemptions > 0 and sampled[0].stats.recomputed_tokens == 0
    assert [len(s.token_ids) for p in sampled[0].prompts for s in p.sequences] == [100] * 8
    assert tree_shape(sampled[0]) == tree_shape(sampled[1])


def test_an_eager_prompt_starts_staggered_beside_trees_that_stopped_branching(model, reference):
    # EAGer-init with known lengths: a tree's children are born by branching, and those that do not fit are
    # held back until the projected peak leaves room (costing nothing). Once every tree in flight has closed
    # for branching (here: reached its cap of 4), its growth is known, so the next prompt starts beside its
    # tail with its root alone instead of waiting for the whole tree to finish. A child held back until after
    # its parent finished copies the prompt from a sibling and recomputes the few tokens it inherited: a few
    # tokens here, never a sequence's depth.
    kw = dict(method="eager_init", max_sequences=4, entropy_threshold=0.3, max_new_tokens=100, ignore_eos=True,
              n_ctx=SMALL)
    greedy = eager_cpp.run(model, prompts()[:2], temperature=0.0, **kw)
    assert [p.n_sequences for p in greedy.prompts] == [4, 4]  # trees that reached their cap
    assert greedy.stats.preemptions > 0 and greedy.stats.recomputed_tokens <= 10
    assert greedy.stats.peak_kv_cells <= SMALL
    assert [len(s.token_ids) for p in greedy.prompts for s in p.sequences] == [100] * 8
    assert sum(p.steps for p in greedy.prompts) - greedy.stats.steps >= 10 + len(greedy.prompts)
    for p in greedy.prompts:  # parents and branch steps intact
        by = {s.index: s for s in p.sequences}
        for s in p.sequences:
            if s.parent is not None:
                assert s.token_ids[: s.branch_step] == by[s.parent].token_ids[: s.branch_step]
    assert_greedy_choices(model, reference, greedy)
    sampled = [eager_cpp.run(model, prompts()[:2], temperature=0.8, seed=4, **kw) for _ in range(2)]
    assert sampled[0].stats.preemptions > 0 and sampled[0].stats.recomputed_tokens <= 10
    assert all(len(s.token_ids) == 100 for p in sampled[0].prompts for s in p.sequences)
    assert tree_shape(sampled[0]) == tree_shape(sampled[1])


TRACE_SCRIPT = r"""
import json, sys
import eager_cpp
from eager_cpp import _core
from eager_cpp.engine.local import engine_config
spec = json.loads(sys.argv[1])
model = eager_cpp.Model(eager_cpp.default_model_path(), n_threads=2)
opts = eager_cpp.RunOptions.create(method=spec["method"], max_sequences=spec["m"], max_new_tokens=spec["n"],
                                   temperature=spec["t"], seed=0, ignore_eos=True, n_ctx=spec["n_ctx"],
                                   share_prompt_prefixes=False, stop=spec["stop"])
cfg = engine_config(opts, model)
cfg.method = getattr(_core.Method, spec["method"].upper())
cfg.trace_steps = True
jobs = [_core.PromptJob(model.tokenize(p), spec["m"], spec["theta"], i) for i, p in enumerate(spec["prompts"])]
out = model.generate(cfg, jobs)
print(json.dumps({"preemptions": out.stats.preemptions, "recomputed": out.stats.recomputed_tokens,
                  "lengths": [len(q.own_tokens) for p in out.prompts for q in p.sequences],
                  "steps": [[t.kv_held, t.kv_used] for t in out.stats.step_trace]}))
"""


@pytest.mark.parametrize("case", ["eager_init_trees", "parallel_past_the_sliding_window"])
def test_the_engine_counts_the_cells_llama_cpp_holds_through_preemption(case):
    # What the budget rests on: before every step, the cells the engine counts are the cells llama.cpp's KV
    # cache holds (its debug log), through pauses and recomputes. Trees share prefixes; a resumed sequence
    # copies the longest prefix a running relative has intact and recomputes the rest. Past Gemma 3's
    # 512-token window a relative may have dropped the window a copy needs, so the whole sequence, prompt
    # included, is recomputed into cells of its own: counted as a shared prompt, that run could not find
    # the cells for it ("no KV slot"). A stop string the text never holds keeps the lengths unknown, so the
    # samples start together and the full cache preempts them deep into their lengths.
    if case == "eager_init_trees":
        spec = dict(method="eager_init", m=4, n=90, t=1.0, theta=0.5, n_ctx=SMALL, prompts=prompts()[:4])
    else:
        spec = dict(method="parallel", m=4, n=500, t=0.8, theta=1.0, n_ctx=1280,
                    prompts=[load_jsonl("gsm8k_train_200.jsonl", 1)[0]["prompt"]])
    spec["stop"] = ["<never in this text>"]
    env = dict(os.environ, LLAMA_KV_CACHE_DEBUG="1")
    proc = subprocess.run([sys.executable, "-c", TRACE_SCRIPT, json.dumps(spec)], capture_output=True, text=True,
                          timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["preemptions"] > 0 and got["recomputed"] > 0
    assert all(n > 0 for n in got["lengths"]) and len(got["lengths"]) >= spec["m"] * len(spec["prompts"])
    if spec["method"] == "parallel":
        assert got["lengths"] == [spec["n"]] * spec["m"]
    steps = got["steps"]
    assert len(steps) > 100 and all(used > 0 for _, used in steps)
    wrong = [(i, held, used) for i, (held, used) in enumerate(steps) if held != used]
    assert not wrong, f"{len(wrong)} of {len(steps)} steps counted other than llama.cpp held: {wrong[:5]}"


def test_a_budget_too_small_for_one_prompt_is_a_clear_error(model):
    long_prompt = load_jsonl("gsm8k_train_200.jsonl", 1)[0]["prompt"]  # ~480 tokens
    with pytest.raises(ValueError, match=r"kv_memory=5242880 bytes \(256 KV cells.*too small for prompt 0.*needs at least"):
        eager_cpp.run(model, [long_prompt], max_new_tokens=4, kv_memory="5MiB")
    with pytest.raises(ValueError, match=r"n_ctx=256 is too small for prompt 0"):
        eager_cpp.run(model, [long_prompt], max_new_tokens=4, n_ctx=256)


def test_a_budget_one_sequence_could_outgrow_is_refused_before_generating(model):
    # A lone sequence that fills the cache cannot be paused for itself: refused up front, not mid-run.
    short, shorter = "Country: Peru\nCapital:", "2+2="
    n, k = len(model.tokenize(short)), 256 - len(model.tokenize(shorter))  # the shorter prompt fits exactly
    assert 256 < n + k <= 512
    with pytest.raises(ValueError, match=rf"n_ctx=256 is too small for prompt 1: one of its sequences may grow to "
                                         rf"{n + k} cells \(its {n} prompt tokens and max_new_tokens={k}\).*"
                                         rf"at least 512 cells \({int(512 * model.kv_bytes_per_cell)} bytes\)"):  # whole 256-cell blocks
        eager_cpp.run(model, [shorter, short], max_new_tokens=k, n_ctx=256, stop="\n")
    r = eager_cpp.run(model, [shorter], max_new_tokens=k, n_ctx=256, stop="\n")
    assert r.stats.kv_cells == 256


@pytest.mark.parametrize("bad", ["lots", "-5", 0, -1, True, "12 parsecs"])
def test_kv_memory_must_be_a_size(model, bad):
    with pytest.raises((ValueError, TypeError), match="kv_memory"):
        eager_cpp.run(model, ["2+2="], max_new_tokens=2, kv_memory=bad)


def test_kv_memory_below_the_smallest_cache_is_refused_not_exceeded(model):
    # 255 cells of 18 KiB: llama.cpp's smallest cache (256 cells) would take more than the budget.
    with pytest.raises(ValueError, match=r"kv_memory=4700160 bytes buys 255 KV cells of 18432 bytes; llama.cpp's "
                                         r"smallest cache is 256 cells \(4718592 bytes\)"):
        eager_cpp.run(model, ["2+2="], max_new_tokens=2, kv_memory=255 * 18432)
    assert eager_cpp.run(model, ["2+2="], max_new_tokens=2, kv_memory=256 * 18432).stats.kv_cells == 256


def test_kv_memory_sizes_the_cache_and_auto_does_not_grow_with_the_budget(model):
    per_cell = eager_cpp.run(model, ["2+2="], max_new_tokens=2, kv_memory="64MiB").stats.kv_cells
    assert per_cell == (64 << 20) // 18432 // 256 * 256  # Gemma 3 270M: 18 KiB a cell (18 layers, 1 KV head of 256)
    kw = dict(method="parallel", max_sequences=2, stop="\n", max_live_sequences=8)
    short = eager_cpp.run(model, prompts()[:2], max_new_tokens=16, **kw)
    long = eager_cpp.run(model, prompts()[:2], max_new_tokens=30000, **kw)
    # "auto" starts with the prompts and 8 live sequences of 64 tokens (16 when the budget is 16), whatever
    # the budget, and these short answers never make it grow: M x max_new_tokens sizes nothing.
    assert short.stats.kv_cells <= long.stats.kv_cells <= 1024
    assert short.stats.kv_grows == long.stats.kv_grows == 0
    assert long.stats.peak_kv_cells < 1024  # what the short answers held


def test_auto_grows_the_cache_when_the_run_needs_it_and_changes_no_sample(model):
    # Two prompts x 4 samples x 200 tokens need ~1,700 cells; "auto" starts with 8 x 64 beside the prompts
    # and doubles twice. Growing moves every cell, shared ones with all their sequences, into a larger
    # context in the same order: the samples are those of a run whose cache was that large from the start,
    # and of a later run on the same model that finds the grown context already there.
    kw = dict(method="parallel", max_sequences=4, temperature=0.8, max_new_tokens=200, ignore_eos=True, seed=2,
              max_live_sequences=8)
    grown = eager_cpp.run(model, prompts()[:2], **kw)
    assert grown.stats.kv_grows >= 2 and grown.stats.preemptions == 0
    assert grown.stats.peak_kv_cells <= grown.stats.kv_cells < 4 * grown.stats.peak_kv_cells
    assert all(len(s.token_ids) == 200 for p in grown.prompts for s in p.sequences)
    fixed = eager_cpp.run(model, prompts()[:2], n_ctx=grown.stats.kv_cells, **kw)
    again = eager_cpp.run(model, prompts()[:2], **kw)
    assert fixed.stats.kv_grows == 0 and again.stats.kv_grows == grown.stats.kv_grows
    for other in (fixed, again):
        for p, q in zip(grown.prompts, other.prompts):
            for s, t in zip(p.sequences, q.sequences):
                assert s.token_ids == t.token_ids
                assert np.max(np.abs(np.asarray(s.entropies) - np.asarray(t.entropies))) < 1e-4


def test_max_new_tokens_past_the_model_context_is_refused(model):
    with pytest.raises(ValueError, match="beyond the model's context of 32768"):
        eager_cpp.run(model, ["2+2="], max_new_tokens=32766)


GROWTH_UNDER_A_LIMIT = r"""
import re, resource, sys
import eager_cpp
m = eager_cpp.Model(eager_cpp.default_model_path(), n_threads=1)
q = "Country: Peru\nCapital:"
kw = dict(method="parallel", max_sequences=16, max_live_sequences=16, ignore_eos=True)
# The context the job starts in, made before the limit: "auto" starts both with 16 sequences of 64 tokens.
eager_cpp.run(m, [q], max_new_tokens=64, **kw)
vm = int(re.search(r"VmSize:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
# Room for the run's own allocations, not for a second context's compute buffers (~500 MB here).
resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2**20, resource.getrlimit(resource.RLIMIT_AS)[1]))
r = eager_cpp.run(m, [q], max_new_tokens=192, **kw)
s = r.stats
print(sorted({len(x.token_ids) for x in r.prompts[0].sequences}), r.prompts[0].n_sequences, s.kv_cells, s.kv_grows,
      s.preemptions, s.generated_tokens, repr(s.kv_ceiling_lowered))
"""


def test_a_growth_the_memory_cannot_hold_keeps_the_run_going_within_the_cells_it_has():
    # Under an address-space limit "auto" cannot double (llama.cpp cannot allocate the larger context): the run
    # keeps its context, takes it as the ceiling and preempts within it, instead of ending with the tokens lost.
    out = subprocess.run([sys.executable, "-c", GROWTH_UNDER_A_LIMIT], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lengths, n, cells, grows, preemptions, tokens, lowered = out.stdout.strip().splitlines()[-1].split(" ", 6)
    assert (lengths, n, grows, tokens) == ("[192]", "16", "0", str(16 * 192))
    assert int(preemptions) > 0
    assert f"could not grow the KV cache from {cells} to {2 * int(cells)} cells" in lowered
