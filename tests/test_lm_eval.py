"""eager_cpp as an lm-evaluation-harness model, on the default model (skipped where lm-eval is not installed:
pip install "eager_cpp[lm-eval]"; the test extra installs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason='lm-eval is not installed (pip install "eager_cpp[lm-eval]")')

from lm_eval.api.instance import Instance  # noqa: E402

import eager_cpp.lm_eval as backend  # noqa: E402
from eager_cpp.answers.scoring import default_scorer  # noqa: E402
from eager_cpp.lm_eval.agreement import compare_samples  # noqa: E402
from eager_cpp.lm_eval.model import EagerCppLM  # noqa: E402

from conftest import DATA_DIR, reference_scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lm(model_path):
    return EagerCppLM(model_path=model_path, method="parallel", n_threads=2, seed=3)


def request(kind: str, args: tuple, doc_id: int = 0, repeats: int = 1) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=0, metadata=("t", doc_id, repeats))


# ----------------------------------------------------------------------------- loglikelihood


def test_loglikelihood_is_the_sum_of_the_continuations_log_softmax(lm, layout_reference):
    texts = [("Country: France\nCapital:", " Paris"), ("Country: France\nCapital:", " Tokyo"),
             ("The quick brown fox", " jumps over the lazy dog."), ("Country: France\nCapital: ", "Paris")]
    # One request per call, as the reference scores each pair alone: llama.cpp's logits follow the batch (batched
    # with the others, the 6-token continuation moved 0.034 nats on an AVX-512 CPU, in eager_cpp and the reference alike).
    got = [lm.loglikelihood([request("loglikelihood", t)])[0] for t in texts]
    for (context, continuation), (logprob, greedy) in zip(texts, got):
        # lm-eval's split: a context's trailing space moves to the continuation, both encoded with the BOS first.
        context, continuation = context.rstrip(), context[len(context.rstrip()):] + continuation
        whole, head = lm.tok_encode(context + continuation), lm.tok_encode(context)
        [(want, want_greedy)] = reference_scores(layout_reference, [(head, whole[len(head):])])
        assert logprob == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy
    assert [g for _, g in got[:2]] == [True, False]  # Paris is the model's first choice, Tokyo is not
    assert got[0][0] > got[1][0]


def test_an_empty_context_is_scored_after_the_bos_token(lm, layout_reference):
    [(logprob, _)] = lm.loglikelihood([request("loglikelihood", ("", "The capital of France is Paris."))])
    tokens = lm.tok_encode("The capital of France is Paris.", add_special_tokens=False)
    [(want, _)] = reference_scores(layout_reference, [([lm.prefix_token_id], tokens)])
    assert logprob == pytest.approx(want, abs=1e-3)


def test_loglikelihood_rolling_sums_disjoint_windows(model_path):
    text = "Paris is the capital and largest city of France. It sits on the Seine."
    small = EagerCppLM(model_path=model_path, n_threads=2, max_length=8)
    tokens = small.tok_encode(text, add_special_tokens=False)
    # lm-eval's windows of 8 predicted tokens: the first after the BOS token, each next after the token before it.
    windows = [([small.prefix_token_id], tokens[:8])] + [(tokens[i - 1:i], tokens[i:i + 8])
                                                          for i in range(8, len(tokens), 8)]
    want = sum(lp for lp, _ in small.model.score_continuations(windows))
    [got] = small.loglikelihood_rolling([request("loglikelihood_rolling", (text,))])
    assert got == pytest.approx(want, abs=1e-6)
    [whole] = EagerCppLM(model_path=model_path, n_threads=2).loglikelihood_rolling(
        [request("loglikelihood_rolling", (text,))])
    [(one_window, _)] = small.model.score_continuations([([small.prefix_token_id], tokens)])
    assert whole == pytest.approx(one_window, abs=1e-6)  # the default 2048-token window holds the whole text


# ----------------------------------------------------------------------------- generate_until


def test_copies_of_a_request_are_one_prompt_and_come_back_in_order(model_path):
    lm = EagerCppLM(model_path=model_path, method="parallel", n_threads=2, seed=3)
    until = {"until": ["\n"], "max_gen_toks": 8, "do_sample": True}
    a = request("generate_until", ("Country: France\nCapital:", until), doc_id=0, repeats=4)
    b = request("generate_until", ("Country: Kenya\nCapital:", until), doc_id=1, repeats=4)
    ordered = lm.generate_until([a] * 4 + [b] * 4)  # as lm-eval's evaluator sends them: copies in a row
    assert len(ordered) == 8 and all(isinstance(t, str) and "\n" not in t for t in ordered)
    assert [(g.context, g.copies) for g, _ in lm.generations] == [(a.args[0], 4), (b.args[0], 4)]
    for k, (group, prompt) in enumerate(lm.generations):
        assert len(prompt.sequences) == 4  # Full Parallel: M = the copies
        texts = [s.text.split("\n")[0] for s in sorted(prompt.sequences, key=lambda s: s.index)]
        assert ordered[4 * k:4 * k + 4] == texts  # copy j gets sequence j
    interleaved = lm.generate_until([a, b] * 4)
    assert len(lm.generations) == 4  # two more prompts, one per request
    assert interleaved[0::2] == ordered[:4] and interleaved[1::2] == ordered[4:]  # same seed, same samples


def test_eager_init_fills_the_copies_by_cycling_its_sequences(model_path):
    lm = EagerCppLM(model_path=model_path, method="eager_init", entropy_threshold=50.0, n_threads=2)
    req = request("generate_until", ("Country: France\nCapital:", {"until": ["\n"], "max_gen_toks": 6}), repeats=3)
    out = lm.generate_until([req] * 3)
    [(_, prompt)] = lm.generations
    assert len(prompt.sequences) == 1  # θ above any entropy: never branches
    assert out == [prompt.sequences[0].text.split("\n")[0]] * 3


def test_bad_model_arguments_are_one_clear_error(model_path):
    with pytest.raises(ValueError, match="unknown eager_cpp model argument 'temprature'.*temperature"):
        EagerCppLM(model_path=model_path, temprature=0.5)
    with pytest.raises(ValueError, match="max_sequences come from each request"):
        EagerCppLM(model_path=model_path, max_sequences=4)
    with pytest.raises(ValueError, match='method="eager" reallocates by the gold answers'):
        EagerCppLM(model_path=model_path, method="eager")
    with pytest.raises(ValueError, match="entropy_threshold"):
        EagerCppLM(model_path=model_path, entropy_threshold=-1.0)


# ----------------------------------------------------------------------------- through lm-eval


def test_simple_evaluate_on_the_gsm8k_task_agrees_with_eager_cpp(model_path):
    """The shipped GSM8K task offline (the repository's data), 3 documents, 4 samples each: lm-eval's maj@4 is
    eager_cpp's Cons@k on the same 4 samples, its first the first sample, its mean@4 eager_cpp's Pass Rate."""
    from lm_eval import simple_evaluate

    backend.register()
    task = backend.task_config("eager_gsm8k", repeats=4, data_dir=DATA_DIR)
    task["generation_kwargs"] = dict(task["generation_kwargs"], max_gen_toks=96)
    out = simple_evaluate(model="eager_cpp", model_args={"model_path": model_path, "method": "eager_init",
                                                         "entropy_threshold": 1.5, "n_threads": 2},
                          tasks=[task], limit=3, log_samples=True, task_manager=backend.task_manager())
    metrics = out["results"]["eager_gsm8k"]
    samples = out["samples"]["eager_gsm8k"]
    assert all(len(s["resps"][0]) == 4 for s in samples)
    report = compare_samples(samples, default_scorer("gsm8k"))
    assert report["n_docs"] == 3
    by_filter = {row["filter"]: row for row in report["filters"]}
    assert set(by_filter) == {"maj@4", "first", "mean@4"}
    for name, row in by_filter.items():
        assert row["lm_eval"] == pytest.approx(metrics[f"exact_match,{name}"])
        assert row["eager_cpp"] == pytest.approx(row["lm_eval"]), report["disagreements"]


def test_simple_evaluate_on_capitals_agrees_with_eager_cpp(model_path):
    """Where the model gets some answers right (capitals), so the pairs below are not all zeros: every document's
    lm-eval metric is eager_cpp's on the same samples, but where lm-eval's majority counted "[invalid]" votes."""
    from lm_eval import simple_evaluate

    backend.register()
    out = simple_evaluate(model=EagerCppLM(model_path=model_path, method="eager_init", entropy_threshold=1.0,
                                           n_threads=2, seed=1),
                          tasks=[backend.task_config("eager_capitals", repeats=4, data_dir=DATA_DIR)], limit=8,
                          log_samples=True, task_manager=backend.task_manager())
    report = compare_samples(out["samples"]["eager_capitals"], default_scorer("first_line"))
    by_filter = {row["filter"]: row for row in report["filters"]}
    assert set(by_filter) == {"maj@4", "first"}
    assert 0 < by_filter["maj@4"]["lm_eval"] < 1
    assert [d for d in report["disagreements"] if d["cause"] != "invalid votes"] == []
    if not report["disagreements"]:
        assert by_filter["maj@4"]["eager_cpp"] == pytest.approx(by_filter["maj@4"]["lm_eval"])
    assert by_filter["first"]["eager_cpp"] == pytest.approx(by_filter["first"]["lm_eval"])


def test_the_module_entry_runs_lm_evals_command_line(model_path, tmp_path):
    """python -m eager_cpp.lm_eval: lm-eval's CLI with the model registered and the tasks included, offline."""
    args = [sys.executable, "-m", "eager_cpp.lm_eval", "run", "--model", "eager_cpp", "--model_args",
            f"model_path={model_path},method=parallel,n_threads=2", "--tasks", "eager_capitals_mc", "--limit", "3",
            "--output_path", str(tmp_path / "out")]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "HF_DATASETS_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eager_capitals_mc" in done.stdout and "acc" in done.stdout
    assert list((tmp_path / "out").rglob("results_*.json"))


def test_generation_settings_map_onto_run_options(caplog):
    from eager_cpp.lm_eval.requests import cut_at_stops, fill, settings_of

    assert settings_of({"until": "Q:", "do_sample": False, "temperature": 0.7}, 512) == \
        {"stop": ["Q:"], "max_new_tokens": 512, "temperature": 0.0}  # no sampling: greedy, whatever the temperature
    assert settings_of({"until": ["\n\n", ""], "max_gen_toks": 32, "top_p": 0.9}, 512) == \
        {"stop": ["\n\n"], "max_new_tokens": 32, "top_p": 0.9}
    with caplog.at_level("WARNING"):
        settings_of({"num_beams": 4}, 8)
    assert "num_beams" in caplog.text
    with pytest.raises(ValueError, match="'until' must be"):
        settings_of({"until": 3}, 8)
    assert cut_at_stops(" Paris\nCountry: Spain", ["\n", "Country:"]) == " Paris"
    assert fill(["a", "b", "c"], 8) == ["a", "b", "c", "a", "b", "c", "a", "b"] and fill(["a"] * 9, 2) == ["a", "a"]
