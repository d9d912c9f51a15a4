"""A run that keeps summaries, not results: the CLI's output files hold the sequences (phases.ResultStore), the
phases only each prompt's counts and plan inputs, and what the files end with is what memory would have held."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import eager_cpp
from conftest import load_jsonl
from eager_cpp.cli.run import _FileResults, _merged_prompt, _merged_row
from eager_cpp.core.options import RunOptions
from eager_cpp.core.results import PromptResult, RunResult, RunStats, prompt_to_dict
from eager_cpp.files.checkpoint import Checkpoint
from eager_cpp.method.phases import run_phases

from test_phases import FakeExecutor

PROMPTS = ["a", "b", "c", "d", "e"]


def _phases(method, store_dir=None, **options):
    """run_phases on the fake executor (2 prompts per chunk): in memory, or with the CLI's checkpoint as the
    store. Returns (results, stats, outcome, the checkpoint or None)."""
    # Prompt k makes k + 1 sequences of M 4: prompts 3 and 4 reach M, so the plan has budget and recipients.
    ex = FakeExecutor(produce=lambda job: min(job.max_sequences, job.index + 1) if job.round == 0 else 1,
                      text=lambda job, k: "yes" if (job.index + k + job.round) % 2 else "no",
                      tokens=lambda index: tuple(range(1, index + 2)))
    opts = RunOptions.create(method=method, max_sequences=4, entropy_threshold=2.0, **options)
    results = [PromptResult(index=i, prompt=p, sequences=[], prompt_tokens=0) for i, p in enumerate(PROMPTS)]
    answers = ["yes", "no", "yes", "no", "yes"] if method == "eager" else None
    stats = RunStats(method=method)
    checkpoint = store = on_chunk = None
    if store_dir is not None:
        checkpoint = Checkpoint(store_dir / "out.jsonl", {"k": 1}, ["h"] * len(PROMPTS), staged_phase_a=True)
        checkpoint.start(resume=False)
        store = _FileResults(checkpoint)

        def on_chunk(chunk):
            checkpoint.chunk_done([prompt_to_dict(p) for p in chunk])

    outcome = run_phases(ex, opts, results, stats, answers, None, None, chunk_size=2, on_chunk=on_chunk, store=store)
    if checkpoint is not None:
        checkpoint.finish([p.index for p in results], {"method": method}, _merged_row)
    return results, stats, outcome, checkpoint


@pytest.mark.parametrize("method", ["eager_adapt", "eager", "eager_label_free"])
def test_a_run_with_a_store_holds_no_sequences_and_writes_what_memory_holds(tmp_path, method):
    whole, stats, outcome, _ = _phases(method)
    assert outcome.tries >= 1 and stats.reallocated_sequences > 0, "the setting must exercise phase (c)"
    kept, kept_stats, kept_outcome, checkpoint = _phases(method, tmp_path)
    assert all(p.sequences == [] for p in kept)  # the phases held summaries only
    rows = [json.loads(line) for line in checkpoint.out.read_text().splitlines()]
    assert rows == [prompt_to_dict(p) for p in whole]
    assert kept_stats == stats and kept_outcome == outcome
    assert stats.sequences == sum(p.n_sequences for p in whole) > 0
    assert stats.generated_tokens == sum(p.generated_tokens for p in whole) > 0
    assert not checkpoint.extras_path.exists()  # merged into the results file


def test_a_run_stopped_in_phase_c_resumes_with_every_prompt_once(tmp_path):
    whole, stats, outcome, _ = _phases("eager_adapt")
    assert outcome.tries >= 2, "the stop must come after a try wrote its sequences"
    out = tmp_path / "out.jsonl"
    key, hashes = {"k": 1}, ["h"] * len(PROMPTS)
    ex = FakeExecutor(produce=lambda job: min(job.max_sequences, job.index + 1) if job.round == 0 else 1,
                      text=lambda job, k: "yes" if (job.index + k + job.round) % 2 else "no",
                      tokens=lambda index: tuple(range(1, index + 2)),
                      fail=lambda jobs: KeyboardInterrupt() if jobs[0].round == 2 else None)
    opts = RunOptions.create(method="eager_adapt", max_sequences=4, entropy_threshold=2.0)
    checkpoint = Checkpoint(out, key, hashes, staged_phase_a=True)
    checkpoint.start(resume=False)
    results = [PromptResult(index=i, prompt=p, sequences=[], prompt_tokens=0) for i, p in enumerate(PROMPTS)]
    with pytest.raises(KeyboardInterrupt):
        run_phases(ex, opts, results, RunStats(method="eager_adapt"), None, None, None, chunk_size=2,
                   on_chunk=lambda chunk: checkpoint.chunk_done([prompt_to_dict(p) for p in chunk]),
                   store=_FileResults(checkpoint))
    checkpoint.close()  # as if killed: no clean-up (the CLI abandons on Ctrl-C; SIGKILL leaves the files)
    # --resume: phase (a) is the checkpoint; phase (c) runs again from the start, its first try not doubled.
    resumed = Checkpoint(out, key, hashes, staged_phase_a=True)
    done = resumed.start(resume=True)
    assert sorted(done) == list(range(len(PROMPTS)))
    results = [_merged_prompt(done[i], []) for i in range(len(PROMPTS))]
    resumed_stats = RunStats(method="eager_adapt")
    run_phases(FakeExecutor(produce=ex.produce, text=ex.text, tokens=ex.tokens), opts, results, resumed_stats, None,
               None, None, pending=[], store=_FileResults(resumed))
    resumed.finish([p.index for p in results], {"method": "eager_adapt"}, _merged_row)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows == [prompt_to_dict(p) for p in whole]
    assert (resumed_stats.sequences, resumed_stats.reallocated_sequences) == (stats.sequences, stats.reallocated_sequences)


@pytest.mark.parametrize("method,reallocation", [("parallel", "fresh"), ("eager_init", "fresh"),
                                                 ("eager_adapt", "fresh"), ("eager_adapt", "tree"),
                                                 ("eager", "tree"), ("eager_label_free", "fresh")])
def test_the_cli_output_reads_back_as_the_in_memory_result(tmp_path, model_path, method, reallocation):
    rows = load_jsonl("capitals_dev_100.jsonl", limit=5)
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "eager_cpp", "run", str(data), "-o", str(out), "--model", model_path,
                           "--method", method, "--reallocation", reallocation, "-M", "3", "--theta", "0.5",
                           "--max-new-tokens", "6", "--stop", "\\n", "--chunk-size", "2", "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    from_files = RunResult.from_jsonl(out)
    # In memory, in the same chunks (llama.cpp's samples follow the batch): phase (a) two prompts at a time.
    answers = [r["answer"] for r in rows]
    opts = dict(max_sequences=3, entropy_threshold=0.5, max_new_tokens=6, stop="\n", scorer="first_line",
                reallocation=reallocation)
    phase_a = "eager_init" if method not in ("parallel", "eager_init") else method
    parts = [eager_cpp.run(model_path, [r["prompt"] for r in rows[k:k + 2]], method=phase_a, answers=answers[k:k + 2],
                           prompt_indices=range(k, min(k + 2, 5)), **opts) for k in range(0, 5, 2)]
    in_memory = RunResult(prompts=[p for part in parts for p in part.prompts], stats=parts[0].stats,
                          settings=parts[0].settings)
    if phase_a != method:
        in_memory = eager_cpp.reallocate(model_path, in_memory, method=method, answers=answers, scorer="first_line")
    assert [prompt_to_dict(p) for p in from_files.prompts] == [prompt_to_dict(p) for p in in_memory.prompts]
    if method not in ("parallel", "eager_init"):
        assert any(s.round > 0 for p in from_files.prompts for s in p.sequences), "phase (c) must have run"
