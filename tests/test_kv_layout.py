"""kv_layout="per_sequence": a KV stream per sequence id instead of one unified pool
(docs/long-generations.md, "KV layout").

Every KV copy the engine makes must work across streams, where llama.cpp copies only whole streams: the forks
of Full Parallel and EAGer-init, the prefix anchor's ranged copies, and a tree seed's copy of a shared start."""

from __future__ import annotations

import numpy as np
import pytest

import eager_cpp
from eager_cpp import _core
from eager_cpp.engine.local import engine_config

from conftest import GREEDY_NOISE, assert_greedy_choices, load_jsonl, reference_logits

# Few-shot prompts of ~120 tokens that share their first 64-token block (what the prefix anchor copies).
HEADER = "".join(f"Q: What is {a} plus {b}?\nA: {a + b}\n\n" for a, b in [(3, 4), (10, 22), (7, 8), (31, 11), (5, 9),
                                                                          (12, 13)])
FEW_SHOT = [HEADER + f"Q: What is {a} plus {b}?\nA:" for a, b in [(17, 25), (40, 2), (8, 8)]]


@pytest.mark.parametrize("method, share", [("parallel", False), ("eager_init", False), ("eager_init", True)])
def test_per_sequence_streams_decode_what_the_unified_cache_decodes(model, reference, method, share):
    kw = dict(method=method, max_sequences=4, entropy_threshold=1.0, temperature=0.0, max_new_tokens=24,
              ignore_eos=True, share_prompt_prefixes=share, progress=None)
    unified = eager_cpp.run(model, FEW_SHOT, **kw)
    streams = eager_cpp.run(model, FEW_SHOT, kv_layout="per_sequence", **kw)
    stream = -(-(len(model.tokenize(FEW_SHOT[0])) + 24) // 256) * 256  # the longest prompt + max_new_tokens, padded
    ids = 3 * 4 + (1 if share else 0)  # every prompt's M, and the anchor's
    assert streams.stats.kv_cells == ids * stream
    assert all(p.n_sequences == 4 for p in streams.prompts)
    if method == "eager_init":  # children were forked (whole-stream copies), not only roots
        assert any(s.parent is not None for p in streams.prompts for s in p.sequences)
    if share:  # the anchor's ranged copy ran across streams
        assert streams.stats.shared_prompt_tokens == unified.stats.shared_prompt_tokens == 2 * 64
    assert_greedy_choices(model, reference, streams)
    # The same greedy paths as the unified run's, up to ties: where a path parts from the unified run's, the two
    # tokens were within llama.cpp's batch noise of each other (on an AVX-512 CPU 2 of 3 roots part here, at
    # logit gaps of 0.13 and 0.23; elsewhere 1 in 3 did). Only the roots compare for EAGer-init: a prompt's cells
    # sit at other offsets across layouts, which moves entropies by ~0.01-0.3, enough to flip a branch near θ.
    for p, q in zip(streams.prompts, unified.prompts):
        pairs = zip(p.sequences, q.sequences) if method == "parallel" else [(p.sequences[0], q.sequences[0])]
        for s, t in pairs:
            assert len(s.token_ids) == len(t.token_ids) == 24
            parted = next((j for j, (a, b) in enumerate(zip(s.token_ids, t.token_ids)) if a != b), None)
            if parted is None:
                continue
            row = reference_logits(reference, model.tokenize(p.prompt) + s.token_ids[:parted])[-1]
            gap = abs(float(row[s.token_ids[parted]]) - float(row[t.token_ids[parted]]))
            assert gap <= GREEDY_NOISE, (p.index, s.index, parted, gap)


def test_a_seed_copies_the_start_it_shares_with_the_seed_before_it_across_streams(model, reference):
    """Engine level: two seeds share the prompt and one token, so whichever the engine starts second (it orders
    seeds by prefix) gets its cells as a ranged copy of the other's stream (whole stream copied, the rest
    dropped) and prefills only what it does not share."""
    tokens = model.tokenize("Country: Peru\nCapital:")
    cfg = engine_config(eager_cpp.RunOptions.create(max_new_tokens=8, temperature=0.0), model)
    cfg.method = _core.Method.EAGER_INIT
    greedy = list(model.generate(cfg, [_core.PromptJob(tokens, 1, 1e9, 0)]).prompts[0]
                  .sequences[0].own_tokens)
    other = model.tokenize(" the", add_special=False)[0]
    assert other not in greedy[:2]
    seeds = [_core.BranchSeed(greedy[:3], [greedy[3]], 1), _core.BranchSeed([greedy[0], other], [], 1)]
    runs = {}
    for layout in (_core.KvLayout.UNIFIED, _core.KvLayout.PER_SEQUENCE):
        cfg.kv_layout = layout
        runs[layout] = model.generate(cfg, [_core.PromptJob(tokens, 2, 1e9, 0, 1, seeds)])
    out = runs[_core.KvLayout.PER_SEQUENCE]
    assert out.stats.reprocessed_tokens == 3 + 1  # one seed's whole prefix, then only the other's unshared token
    assert [q.branch_step for q in out.prompts[0].sequences] == [3, 2]
    # Teacher-forced: from each seed's prefix on, every token is the greedy choice at its prefix (the first among
    # those the seed does not exclude). Positions the source holds past the shared start, left in the copied
    # stream, would be attended too and bend these.
    for seed, q in zip(seeds, out.prompts[0].sequences):
        full = list(seed.prefix) + list(q.own_tokens)
        rows = reference_logits(reference, tokens + full[:-1])[len(tokens) - 1:]
        for j in range(len(seed.prefix), len(full)):
            row = rows[j].copy()
            if j == len(seed.prefix):
                row[list(seed.exclude)] = -np.inf
            assert row[full[j]] >= row.max() - GREEDY_NOISE, (j, float(row[full[j]]), float(row.max()))
    unified = runs[_core.KvLayout.UNIFIED].prompts[0].sequences
    assert [list(q.own_tokens) for q in out.prompts[0].sequences] == [list(q.own_tokens) for q in unified]


def test_the_budget_buys_whole_streams_and_admission_waits_for_free_ones(model):
    prompts = [r["prompt"] for r in load_jsonl("capitals_dev_100.jsonl", 4)]
    cell = model.kv_bytes_per_cell
    # Each stream: the longest prompt plus 40 tokens, padded to 256 cells; 8 of them hold two prompts' M = 4.
    r = eager_cpp.run(model, prompts, method="parallel", max_sequences=4, temperature=0.6, max_new_tokens=40,
                      ignore_eos=True, kv_layout="per_sequence", kv_memory=int(8.5 * 256 * cell), progress=None)
    assert r.stats.kv_cells == 8 * 256
    assert r.stats.max_live_sequences == 8  # two prompts at a time, the other two after them
    assert [p.n_sequences for p in r.prompts] == [4] * 4
    assert all(len(s.token_ids) == 40 for p in r.prompts for s in p.sequences)
    # "auto" affords many streams, but every stream is allocated up front: no more than admission keeps live.
    r = eager_cpp.run(model, prompts, method="parallel", max_sequences=4, max_new_tokens=8, ignore_eos=True,
                      max_live_sequences=5, kv_layout="per_sequence", progress=None)
    assert r.stats.kv_cells == 5 * 256 and r.stats.max_live_sequences == 4
    assert [p.n_sequences for p in r.prompts] == [4] * 4
    with pytest.raises(ValueError, match="buys 3 such streams, fewer than the 4 sequences of prompt 0"):
        eager_cpp.run(model, prompts, method="parallel", max_sequences=4, max_new_tokens=40,
                      kv_layout="per_sequence", kv_memory=int(3.5 * 256 * cell), progress=None)
    with pytest.raises(ValueError, match="unknown kv_layout 'streams'"):
        eager_cpp.run(model, prompts, kv_layout="streams", progress=None)


def test_ids_freed_mid_run_are_refilled_by_moving_live_streams_down(model, reference):
    # Branches end at different steps (stop at the newline), freeing ids below live ones; the engine moves the
    # highest live streams into them (whole-stream copies) so each step's ids stay consecutive: llama.cpp decodes
    # a streams batch in one micro-batch per run of consecutive ids. A moved sequence must keep its cells.
    prompts = [r["prompt"] for r in load_jsonl("capitals_dev_100.jsonl", 4)[2:4]] + ["a a a a a a a a a a a a",
                                                                                    "1 2 1 2 1 2 1 2 1 2 1 2"]
    r = eager_cpp.run(model, prompts, method="eager_init", max_sequences=4, entropy_threshold=0.5, temperature=0.0,
                      max_new_tokens=40, stop="\n", think_end_marker=None, kv_layout="per_sequence", progress=None)
    ends = [len(s.token_ids) for p in r.prompts for s in p.sequences]
    assert len(set(ends)) > 2 and max(ends) == 40  # some ended early while others ran on
    assert sum(p.n_sequences for p in r.prompts) > len(prompts)
    assert_greedy_choices(model, reference, r)


STORY = "Write a long story about a dragon and a knight.\n\n"


def stream_signature(result) -> list[tuple]:
    """Each sequence's tokens (the engine's own tokens, or a result's whole ones) and entropies."""
    return [(list(getattr(s, "token_ids", None) or s.own_tokens), np.asarray(s.entropies, dtype=np.float32))
            for p in result.prompts for s in p.sequences]


@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("method", ["parallel", "eager_init"])
def test_streams_that_grow_decode_what_streams_sized_for_the_job_decode(model_path, method, temperature):
    """Streams start short and double when a sequence fills its stream: the whole cache is copied into the larger
    context, stream by stream from cell 0, after the decode that found the stream full applied llama.cpp's queued
    stream copies (forks). Tokens and entropies must be those of streams sized for the whole job from the start.
    The engine-level window_cache=FULL keeps the sliding-window layers out of it (the next test grows past
    the window cache)."""
    grown_model = eager_cpp.Model(model_path, n_threads=2)  # a fresh context: a reused larger one would not grow
    prompt = grown_model.tokenize(STORY)
    cfg = engine_config(eager_cpp.RunOptions.create(method=method, max_sequences=3, entropy_threshold=1.5,
                                                    temperature=temperature, max_new_tokens=280, ignore_eos=True,
                                                    seed=5, think_end_marker=None, no_branch_window=40),
                        grown_model)
    cfg.method = _core.Method.PARALLEL if method == "parallel" else _core.Method.EAGER_INIT
    cfg.kv_layout = _core.KvLayout.PER_SEQUENCE
    cfg.window_cache = _core.WindowCache.FULL
    job = _core.PromptJob(prompt, 3, 1.5, 0, 1, [])
    grown = grown_model.generate(cfg, [job])
    cfg.n_ctx = 3 * 512  # three streams of the longest prompt + max_new_tokens, padded
    fixed = eager_cpp.Model(model_path, n_threads=2).generate(cfg, [job])
    assert grown.stats.kv_grows == 1 and grown.stats.kv_cells == fixed.stats.kv_cells == 3 * 512
    assert fixed.stats.kv_grows == 0
    if method == "eager_init":
        assert len(grown.prompts[0].sequences) > 1  # forks: whole-stream copies
    a, b = stream_signature(grown), stream_signature(fixed)
    assert len(a) == len(b)
    for (tokens_a, ent_a), (tokens_b, ent_b) in zip(a, b):
        assert tokens_a == tokens_b
        np.testing.assert_array_equal(ent_a, ent_b)


def test_streams_with_the_window_cache_grow_past_it_and_keep_the_samples(model_path):
    """The default window cache on streams (Gemma 3's 512-token window; window + micro-batch = 1,024 cells a stream).
    llama.cpp restores a grown cache from cell 0 and looks for a token's cell from there, reusing a cell whose
    position left the window: grown where cell 0 is such a cell (256 -> 512 cells at token 512), the token lands
    elsewhere than in a stream sized for the job, and the samples change by the kernels' noise. So a stream grows
    256 -> 1,024 (the window cache's size, before anything leaves the window) -> 1,280 (at token 1,024, where the
    job-sized stream's search also starts at cell 0). Grown so, a sample at T 0.7 is the one a stream sized for the
    job draws, token for token and entropy for entropy."""
    tokens = 1100
    kw = dict(method="parallel", max_sequences=1, temperature=0.7, max_new_tokens=tokens, ignore_eos=True, seed=2,
              kv_layout="per_sequence", progress=None)
    grown = eager_cpp.run(eager_cpp.Model(model_path, n_threads=2), [STORY], **kw)
    fixed = eager_cpp.run(eager_cpp.Model(model_path, n_threads=2), [STORY], n_ctx=1280, **kw)
    assert (grown.stats.kv_grows, grown.stats.kv_cells) == (2, 1280)
    assert (fixed.stats.kv_grows, fixed.stats.kv_cells) == (0, 1280)
    assert len(grown.prompts[0].sequences[0].token_ids) == tokens
    (tokens_a, ent_a), (tokens_b, ent_b) = stream_signature(grown)[0], stream_signature(fixed)[0]
    assert tokens_a == tokens_b
    np.testing.assert_array_equal(ent_a, ent_b)


def test_stream_memory_follows_what_is_generated_and_counts_the_window_cache_apart(model):
    """A 3,000-token budget whose answers end at the first newline keeps its streams at their first size (256
    cells), not the budget's; and the budget buys streams at what they weigh with the window cache: on
    the default model 3 of 18 layers span every cell, so a stream of 3,072 cells weighs 0.45x its full-layer
    size, and half of 8 full-size streams' bytes buys the 8 streams (counted as full, 4: those streams may then
    preempt)."""
    prompt = "Country: Peru\nCapital:"
    kw = dict(method="parallel", max_sequences=8, temperature=0.7, max_new_tokens=3000, stop="\n",
              kv_layout="per_sequence", progress=None)
    stream = -(-(len(model.tokenize(prompt)) + 3000) // 256) * 256
    budget = int(0.5 * 8 * stream * model.kv_bytes_per_cell)
    r = eager_cpp.run(model, [prompt], kv_memory=budget, **kw)
    assert r.stats.kv_grows == 0 and r.stats.kv_cells == 8 * 256
    assert r.prompts[0].n_sequences == 8 and max(len(s.token_ids) for s in r.prompts[0].sequences) < 200
    cfg = engine_config(eager_cpp.RunOptions.create(**{k: v for k, v in kw.items() if k != "progress"},
                                                    kv_memory=budget), model)
    cfg.method = _core.Method.PARALLEL
    cfg.window_cache = _core.WindowCache.FULL
    out = model.generate(cfg, [_core.PromptJob(model.tokenize(prompt), 8, 1e9, 0, 1, [])])
    assert out.stats.kv_cells == 8 * 256 and len(out.prompts[0].sequences) == 8
    # Below the first streams' size every layout is refused, naming the budget.
    cfg.kv_memory = int(7.5 * 256 * model.kv_bytes_per_cell)
    with pytest.raises(ValueError, match="fewer than the 8 sequences of prompt 0"):
        model.generate(cfg, [_core.PromptJob(model.tokenize(prompt), 8, 1e9, 0, 1, [])])


def test_streams_that_outgrow_the_budget_preempt_and_every_sequence_finishes(model_path):
    """kv_memory that holds 4 streams of 256 cells but 2 of 512: a Full Parallel prompt x M 4 x 300 tokens starts
    on 4 streams; when they fill, its two youngest samples are paused (their streams freed) and the other two
    move into a context of 2 streams of 512 cells; the paused ones are recomputed into streams of their own once
    those finish. Memory stays within the budget, every sample reaches its length, and greedy, each is the one a
    run whose budget holds every stream decodes."""
    m = eager_cpp.Model(model_path, n_threads=2)
    cell = m.kv_bytes_per_cell
    kw = dict(method="parallel", max_sequences=4, temperature=0.0, max_new_tokens=300, ignore_eos=True,
              kv_layout="per_sequence", progress=None)
    prompt = "Write a short story about a lighthouse keeper.\n"
    budget = int(4 * 256 * cell * 1.05)
    tight = eager_cpp.run(m, [prompt], kv_memory=budget, **kw)
    roomy = eager_cpp.run(m, [prompt], kv_memory="1GiB", **kw)
    # Its two youngest samples paused at 256 cells; the first recomputed whole, its greedy twin copies it.
    assert tight.stats.preemptions == 2 and tight.stats.recomputed_tokens == 256
    assert tight.stats.kv_cells == 2 * 512 and tight.stats.kv_cells * cell <= budget
    assert roomy.stats.preemptions == 0 and roomy.stats.kv_cells == 4 * 512
    assert [len(q.token_ids) for q in tight.prompts[0].sequences] == [300] * 4
    assert [q.token_ids for q in tight.prompts[0].sequences] == [q.token_ids for q in roomy.prompts[0].sequences]


# kv_layout="auto" (the default): per-sequence streams from max_new_tokens 512 on, when the budget holds every
# stream the run keeps live at its whole length; otherwise the unified cache (docs/long-generations.md,
# "Choosing the layout"). Each case runs (a capitals prompt, Full Parallel, one line) and reports its layout.
AUTO_CASES = {
    "short answers": (dict(max_sequences=8, max_new_tokens=16, kv_memory="2GiB"), "unified"),
    "just below the threshold": (dict(max_sequences=8, max_new_tokens=511, kv_memory="2GiB"), "unified"),
    "long generation": (dict(max_sequences=8, max_new_tokens=1024, kv_memory="2GiB"), "per_sequence"),
    # 24 MiB buys one stream of 1,280 cells (the window cache counted apart), fewer than M = 8.
    "tight memory": (dict(max_sequences=8, max_new_tokens=1024, kv_memory="24MiB"), "unified"),
    # M = 32 streams of ~32,000 cells: ~3.1 GiB with the window cache (its full layers' 3 KiB a cell).
    "large M, budget too small": (dict(max_sequences=32, max_new_tokens=32000, kv_memory="2GiB"), "unified"),
    "large M, budget that holds it": (dict(max_sequences=32, max_new_tokens=32000, kv_memory="4GiB"), "per_sequence"),
    # 100 MiB buys 5 such streams (about 19.6 MB each: 1,280 cells in the full layers, 1,024 in the window ones): enough for one prompt's M = 4, not for the 8 sequences the run keeps live.
    "fewer streams than live sequences": (dict(max_sequences=4, max_new_tokens=1024, kv_memory="100MiB",
                                               max_live_sequences=8), "unified"),
    "as many streams as live sequences": (dict(max_sequences=4, max_new_tokens=1024, kv_memory="100MiB",
                                               max_live_sequences=4), "per_sequence"),
    # 80 MiB buys 4: the live sequences' streams, but not one more for the prefix anchor's.
    "four streams for four live sequences": (dict(max_sequences=4, max_new_tokens=1024, kv_memory="80MiB",
                                                  max_live_sequences=4), "per_sequence"),
    "four streams and the anchor's": (dict(max_sequences=4, max_new_tokens=1024, kv_memory="80MiB",
                                           max_live_sequences=4, share_prompt_prefixes=True), "unified"),
    "explicit layout kept": (dict(max_sequences=8, max_new_tokens=1024, kv_memory="2GiB", kv_layout="unified"),
                             "unified"),
}


@pytest.mark.parametrize("case", list(AUTO_CASES))
def test_auto_layout_picks_what_its_rule_says(model, case):
    kw, expected = AUTO_CASES[case]
    r = eager_cpp.run(model, ["Country: Peru\nCapital:"] * 2, method="parallel", stop="\n", progress=None, **kw)
    assert r.stats.kv_layout == expected
    assert all(p.n_sequences == kw["max_sequences"] for p in r.prompts)
    if expected == "per_sequence":  # streams start short: memory follows what is generated, not the budget
        assert r.stats.kv_cells < 2 * kw["max_sequences"] * 1024
