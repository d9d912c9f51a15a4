"""EAGer-adapt and full EAGer end to end on the default model."""

from __future__ import annotations

import json

import pytest

import eager_cpp
from eager_cpp.method.phases import MAX_TRIES
from eager_cpp.answers.scoring import default_scorer
from conftest import load_jsonl

FIRST_LINE = default_scorer("first_line")


@pytest.fixture(scope="module")
def capitals():
    rows = load_jsonl("capitals_dev_100.jsonl", limit=12)
    return [r["prompt"] for r in rows], [r["answer"] for r in rows]


def common(**kw):
    base = dict(max_sequences=4, entropy_threshold=0.75, temperature=0.6, max_new_tokens=8, stop="\n", seed=11)
    base.update(kw)
    return base


def signature(result):
    return [[(s.round, s.parent, s.token_ids) for s in p.sequences] for p in result.prompts]


def test_eager_adapt_matches_its_plan_and_is_reproducible(model, capitals):
    prompts, _ = capitals
    init = eager_cpp.run(model, prompts, method="eager_init", **common())
    adapt = eager_cpp.run(model, prompts, method="eager_adapt", **common())
    again = eager_cpp.run(model, prompts, method="eager_adapt", **common())
    assert signature(adapt) == signature(again)

    plan = eager_cpp.plan_reallocation(eager_cpp.summarize(init.prompts, 0.75), 4, "eager_adapt")
    extras = {e.index: e.extra_sequences for e in plan.extras}
    assert plan.budget == 4 * len(prompts) - sum(p.n_sequences for p in init.prompts)
    assert extras, "expected some capped prompts to receive budget in this setting"
    for p_init, p in zip(init.prompts, adapt.prompts):
        first = [s for s in p.sequences if s.round == 0]
        later = [s for s in p.sequences if s.round > 0]
        # Phase (a) is EAGer-init itself; phase (c) adds exactly the planned extras (tries permitting), marked.
        assert [s.token_ids for s in first] == [s.token_ids for s in p_init.sequences]
        assert len(later) == adapt.reallocation.produced.get(p.index, 0) <= extras.get(p.index, 0)
        assert all(s.round > 0 and s.index >= len(first) for s in later)
        assert all(s.parent is None or s.parent >= len(first) for s in later)
        if later:
            assert len(p_init.sequences) == 4  # adapt gives budget to capped prompts only
        # Every capped prompt received its eᵢ: each try yields at least one sequence per prompt it runs,
        # so eᵢ <= MAX_TRIES is always filled, a larger one gets at least one per try.
        e = extras.get(p.index, 0)
        assert len(later) == e if e <= MAX_TRIES else len(later) >= MAX_TRIES
    # The whole budget is spent but for what the caps and the bounded tries left, which is reported.
    assert adapt.stats.sequences == 4 * len(prompts) - adapt.stats.unspent_sequences
    assert adapt.stats.unspent_sequences == plan.unused + sum(
        extras[i] - adapt.reallocation.produced[i] for i in extras)
    assert adapt.stats.generated_tokens == sum(len(s.own_tokens) for p in adapt.prompts for s in p.sequences)
    assert adapt.stats.reallocated_sequences == sum(1 for p in adapt.prompts for s in p.sequences if s.round > 0)


def test_full_eager_gives_budget_to_unsolved_prompts_only(model, capitals):
    prompts, answers = capitals
    result = eager_cpp.run(model, prompts, method="eager", answers=answers, scorer=FIRST_LINE, **common())
    again = eager_cpp.run(model, prompts, method="eager", answers=answers, scorer=FIRST_LINE, **common())
    assert signature(result) == signature(again)
    assert result.stats.sequences <= 4 * len(prompts)
    init = [eager_cpp.PromptResult(p.index, p.prompt, [s for s in p.sequences if s.round == 0], p.prompt_tokens,
                                   gold_answer=p.gold_answer) for p in result.prompts]
    plan = eager_cpp.plan_reallocation(eager_cpp.summarize(init, 0.75), 4, "eager")
    extras = {e.index: e.extra_sequences for e in plan.extras}
    unsolved = [p.index for p in init if not any(s.correct for s in p.sequences)]
    assert unsolved and sorted(plan.selected) == unsolved and extras, "this setting leaves prompts unsolved"
    for p in result.prompts:
        first = [s for s in p.sequences if s.round == 0]
        later = [s for s in p.sequences if s.round > 0]
        if any(s.correct for s in first):
            assert not later  # a solved prompt never gets more budget
        # An unsolved prompt received exactly its eᵢ (<= M = 4 <= MAX_TRIES: the tries always fill it).
        assert len(later) == extras.get(p.index, 0) <= 4
    assert result.stats.unspent_sequences == plan.unused
    metrics = result.metrics()
    for key in ("pass@k", "cons@k", "pass_rate", "tokens", "mean_sequences", "per_prompt"):
        assert key in metrics
    assert 0.0 <= metrics["cons@k"] <= metrics["pass@k"] <= 1.0
    assert len(metrics["per_prompt"]) == len(prompts)


def test_metrics_need_answers_and_results_serialise(model, capitals, tmp_path):
    prompts, answers = capitals
    result = eager_cpp.run(model, prompts[:3], method="eager_init", **common())
    with pytest.raises(ValueError, match="answers"):
        result.metrics()
    result.score(answers[:3], FIRST_LINE)
    assert set(result.metrics()) >= {"pass@k", "cons@k", "pass_rate"}
    out = tmp_path / "r.jsonl"
    result.to_jsonl(out)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == [0, 1, 2]
    assert lines[0]["sequences"][0]["token_ids"] == result.prompts[0].sequences[0].token_ids
    assert json.dumps(result.to_dict())


def test_extras_fill_the_plan_exactly(model, capitals):
    """A single EAGer-init run per prompt yields 1..eᵢ sequences; the tries keep going until eᵢ."""
    prompts, _ = capitals
    adapt = eager_cpp.run(model, prompts, method="eager_adapt", **common(entropy_threshold=1.5))
    outcome = adapt.reallocation
    assert outcome.granted, "this setting should reallocate"
    assert outcome.produced == outcome.granted  # every granted sequence made
    assert outcome.tries >= 2  # one try alone fell short (θ = 1.5 rarely branches)
    assert adapt.stats.sequences == 4 * len(prompts) - outcome.plan.unused
    for p in adapt.prompts:
        rounds = sorted({s.round for s in p.sequences if s.round > 0})
        assert rounds == list(range(1, len(rounds) + 1))  # rounds are the tries that gave the prompt sequences


@pytest.mark.slow
def test_adapt_with_large_m_needs_no_engine_run_past_256_sequences(model):
    """EAGer-adapt's extras reach 3M: with M = 100 a prompt may be granted more than 256 (the engine's
    limit per run); the tries split them instead of failing after phase (a)."""
    prompts = ["The most surprising thing about the ocean is"] + [
        f"Country: {c}\nCapital:" for c in ("France", "Japan", "Peru")]
    r = eager_cpp.run(model, prompts, method="eager_adapt", max_sequences=100, entropy_threshold=0.0,
                      max_new_tokens=8, stop="\n", seed=1)
    granted = r.reallocation.granted
    assert r.prompts[0].sequences and granted.get(0, 0) > 256
    assert r.reallocation.produced[0] == granted[0]
    assert sum(1 for s in r.prompts[0].sequences if s.round > 0) == granted[0]


def test_reallocation_past_a_fixed_context_preempts_and_one_that_cannot_start_fails_before_phase_a(model_path):
    m = eager_cpp.Model(model_path, n_threads=2, n_ctx=256)
    # Extras that outgrow the cache are paused and recomputed: the run completes and spends its plan.
    r = eager_cpp.run(m, ["Country: Peru\nCapital:", "a a a a a a a a"], method="eager", answers=["zzz", "zzz"],
                      reallocation="tree", max_sequences=8, entropy_threshold=100.0, max_new_tokens=64,
                      ignore_eos=True)
    assert sum(r.reallocation.granted.values()) == 14  # 7 extras each, all started in one try
    assert r.reallocation.produced == r.reallocation.granted
    assert r.stats.preemptions > 0
    assert all(len(s.token_ids) == 64 for p in r.prompts for s in p.sequences)
    # A tree try starts every extra at once, each with its prefix: past the context it cannot start at all.
    long_prompt = "word " * 200
    with pytest.raises(ValueError, match="n_ctx is 256"):
        eager_cpp.run(m, [long_prompt], method="eager_adapt", reallocation="tree", max_sequences=8,
                      max_new_tokens=64)


class LastWordScorer:
    """A custom scorer with its own extractor: the last word of the first line."""

    def extract(self, text):
        words = text.strip().split("\n")[0].split()
        return words[-1] if words else None

    def __call__(self, text, gold):
        return self.extract(text) == gold


def test_a_custom_scorer_extracts_the_answers_that_vote(model):
    r = eager_cpp.run(model, ["Country: France\nCapital:"], method="parallel", max_sequences=4,
                      max_new_tokens=6, stop="\n", seed=2)
    r.score(["Paris"], LastWordScorer())
    for s in r.prompts[0].sequences:
        assert s.answer == LastWordScorer().extract(s.text)
        assert s.correct == (s.answer == "Paris")


def test_reallocate_scores_the_extras_with_the_results_own_labels(model, capitals):
    prompts, answers = capitals
    init = eager_cpp.run(model, prompts, method="eager_init", answers=answers, scorer=FIRST_LINE, **common())
    out = eager_cpp.reallocate(model, init, "eager", scorer=FIRST_LINE)  # labels: the ones init was scored with
    extras = [s for p in out.prompts for s in p.sequences if s.round > 0]
    assert extras and all(s.correct is not None and s.answer is not None for s in extras)
