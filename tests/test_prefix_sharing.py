"""Prompts that share a start (few-shot headers) share its KV cells; a traced run reports each step's span."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import eager_cpp
from conftest import load_jsonl


def gsm8k_prompts(n: int) -> list[str]:
    return [r["prompt"] for r in load_jsonl("gsm8k_train_200.jsonl", limit=n)]


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def test_shared_header_is_copied_not_prefilled_and_samples_agree(model):
    prompts = gsm8k_prompts(3)
    tokens = [model.tokenize(p) for p in prompts]
    kw = dict(method="parallel", max_sequences=2, temperature=0.0, max_new_tokens=8)
    shared = eager_cpp.run(model, prompts, share_prompt_prefixes=True, **kw)
    fresh = eager_cpp.run(model, prompts, **kw)  # the default: no sharing
    # Each prompt after the first copies the 64-token multiple it shares with the one before it.
    expected = sum(min(common_prefix(tokens[i - 1], tokens[i]), len(tokens[i]) - 1) // 64 * 64
                   for i in range(1, len(tokens)))
    assert expected >= 2 * 384  # the few-shot header
    assert shared.stats.shared_prompt_tokens == expected
    assert fresh.stats.shared_prompt_tokens == 0
    assert shared.stats.prompt_tokens == fresh.stats.prompt_tokens == sum(map(len, tokens))
    # The copied cells hold what a prefill computes: greedy samples agree.
    assert [[s.token_ids for s in p.sequences] for p in shared.prompts] == \
           [[s.token_ids for s in p.sequences] for p in fresh.prompts]
    assert shared.settings["share_prompt_prefixes"] is True and fresh.settings["share_prompt_prefixes"] is False


def test_by_default_a_prompt_samples_the_same_whatever_came_before_it(model):
    """Shard parity (api.run's docstring) for prompts behind a shared few-shot header: with prompts admitted
    one at a time, a prompt run after another gives what it gives alone. With sharing on (the old default)
    its cells come from the prompt before it and, measured here, its EAGer-init tree differs."""
    prompts = gsm8k_prompts(2)
    kw = dict(method="eager_init", max_sequences=4, entropy_threshold=1.5, temperature=0.0, max_new_tokens=32,
              max_live_sequences=1)
    alone = eager_cpp.run(model, prompts[1:], prompt_indices=[1], **kw)
    after = eager_cpp.run(model, prompts, **kw)
    assert after.settings["share_prompt_prefixes"] is False and after.stats.shared_prompt_tokens == 0
    sig = lambda p: [(s.parent, s.branch_step, s.token_ids, s.entropies) for s in p.sequences]
    assert alone.prompts[0].n_sequences > 1  # a tree, not one greedy line
    assert sig(after.prompts[1]) == sig(alone.prompts[0])


def test_short_or_unrelated_prompts_share_nothing(model):
    r = eager_cpp.run(model, ["Country: Peru\nCapital:", "Country: Chile\nCapital:"], method="parallel",
                      max_sequences=2, max_new_tokens=4, share_prompt_prefixes=True)
    assert r.stats.shared_prompt_tokens == 0  # 4 common tokens: under the 64-token granularity


TRACE_SCRIPT = r"""
import json, sys
import eager_cpp
from eager_cpp import _core
from eager_cpp.engine.local import engine_config
prompts = json.loads(sys.argv[1])
model = eager_cpp.Model(eager_cpp.default_model_path(), n_threads=2)
cfg = engine_config(eager_cpp.RunOptions.create(method="parallel", max_sequences=3, max_new_tokens=6), model)
cfg.method = _core.Method.PARALLEL
cfg.trace_steps = True
jobs = [_core.PromptJob(model.tokenize(p), 3, 1.0, i) for i, p in enumerate(prompts)]
out = model.generate(cfg, jobs)
print(json.dumps([[t.tokens, t.prompts, t.decode_ms, t.kv_span, t.kv_used] for t in out.stats.step_trace]))
"""


def run_traced(prompts: list[str], debug: bool) -> list[list]:
    env = dict(os.environ)
    env.pop("LLAMA_KV_CACHE_DEBUG", None)
    if debug:
        env["LLAMA_KV_CACHE_DEBUG"] = "1"
    proc = subprocess.run([sys.executable, "-c", TRACE_SCRIPT, json.dumps(prompts)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_traced_steps_report_the_kv_span():
    prompts = gsm8k_prompts(2)
    steps = run_traced(prompts, debug=True)
    assert len(steps) >= 5 and all(t[0] >= 1 and t[2] > 0 for t in steps)
    spans = [t[3] for t in steps]
    used = [t[4] for t in steps]
    assert all(u > 0 for u in used) and all(s >= u for s, u in zip(spans, used))
    # Each step adds one cell per live sequence (the prompts' cells stay in use while they are in flight).
    first_prompt_steps = [t for t in steps if t[1] == 2]
    assert first_prompt_steps and first_prompt_steps[1][4] - first_prompt_steps[0][4] == first_prompt_steps[0][0]
    untraced = run_traced(prompts, debug=False)  # without llama.cpp's debug log: steps, no span
    assert len(untraced) == len(steps) and all(t[3] == -1 and t[4] == -1 for t in untraced)
