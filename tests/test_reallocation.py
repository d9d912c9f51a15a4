"""EAGer-adapt and full EAGer end to end on the default model."""

from __future__ import annotations

import json

import pytest

import eager_cpp
from eager_cpp.scoring import default_scorer
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
        later = [s for s in p.sequences if s.round == 1]
        # Phase (a) is EAGer-init itself; phase (c) adds at most the planned extras, marked.
        assert [s.token_ids for s in first] == [s.token_ids for s in p_init.sequences]
        assert 1 <= len(later) <= extras.get(p.index, 0) or (not later and p.index not in extras)
        assert all(s.reallocated and s.index >= len(first) for s in later)
        assert all(s.parent is None or s.parent >= len(first) for s in later)
        if later:
            assert len(p_init.sequences) == 4  # adapt gives budget to capped prompts only
    assert adapt.stats.sequences <= 4 * len(prompts)
    assert adapt.stats.generated_tokens == sum(len(s.own_tokens) for p in adapt.prompts for s in p.sequences)
    assert adapt.stats.reallocated_sequences == sum(s.round for p in adapt.prompts for s in p.sequences)


def test_full_eager_gives_budget_to_unsolved_prompts_only(model, capitals):
    prompts, answers = capitals
    result = eager_cpp.run(model, prompts, method="eager", answers=answers, scorer=FIRST_LINE, **common())
    again = eager_cpp.run(model, prompts, method="eager", answers=answers, scorer=FIRST_LINE, **common())
    assert signature(result) == signature(again)
    assert result.stats.sequences <= 4 * len(prompts)
    for p in result.prompts:
        first = [s for s in p.sequences if s.round == 0]
        later = [s for s in p.sequences if s.round == 1]
        if any(s.correct for s in first):
            assert not later  # a solved prompt never gets more budget
        assert len(later) <= 4  # full EAGer caps the extras at M
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
