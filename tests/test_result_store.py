"""A run that keeps summaries, not results: the CLI's output files hold the sequences (phases.ResultStore), the
phases only each prompt's counts and plan inputs, and what the files end with is what memory would have held."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

import eager_cpp
from conftest import load_jsonl
from eager_cpp.cli.run import _FileResults, _InputPrompts, _merged_row
from eager_cpp.core.options import RunOptions
from eager_cpp.core.results import PromptResult, RunResult, RunStats, prompt_to_dict
from eager_cpp.files.checkpoint import Checkpoint
from eager_cpp.files.datasets import PromptFile
from eager_cpp.method.phases import run_phases
from eager_cpp.answers.scoring import default_scorer
from eager_cpp.runner.driver import drive

from test_phases import FakeExecutor

PROMPTS = ["a", "b", "c", "d", "e"]


def _table(folder):
    """The prompts as the CLI hands them to the phases: a table over an input file, holding none of them."""
    path = folder / "prompts.txt"
    path.write_text("".join(p + "\n" for p in PROMPTS))
    return _InputPrompts(PromptFile(path))


def _phases(method, store_dir=None, table=False, **options):
    """run_phases on the fake executor (2 prompts per chunk): in memory, or with the CLI's checkpoint as the
    store (the prompts a list, or with `table` read from a file as the CLI does). Returns (results, stats,
    outcome, the checkpoint or None)."""
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

    if table:
        results = _table(store_dir)
    outcome = run_phases(ex, opts, results, stats, answers, None, None, chunk_size=2, on_chunk=on_chunk, store=store)
    if table:
        results.inputs.close()
    if checkpoint is not None:
        checkpoint.finish(range(len(PROMPTS)), {"method": method}, _merged_row)
    return results, stats, outcome, checkpoint


@pytest.mark.parametrize("table", [False, True], ids=["list", "table"])
@pytest.mark.parametrize("method", ["eager_adapt", "eager", "eager_label_free"])
def test_a_run_with_a_store_holds_no_sequences_and_writes_what_memory_holds(tmp_path, method, table):
    whole, stats, outcome, _ = _phases(method)
    assert outcome.tries >= 1 and stats.reallocated_sequences > 0, "the setting must exercise phase (c)"
    kept, kept_stats, kept_outcome, checkpoint = _phases(method, tmp_path, table=table)
    if not table:
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
    resumed_stats = RunStats(method="eager_adapt")  # phase (a) read back from the files, as the CLI does
    table = _table(tmp_path)
    run_phases(FakeExecutor(produce=ex.produce, text=ex.text, tokens=ex.tokens), opts, table,
               resumed_stats, None, None, None, pending=[], store=_FileResults(resumed))
    table.inputs.close()
    resumed.finish(range(len(PROMPTS)), {"method": "eager_adapt"}, _merged_row)
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
    if phase_a != method:  # as eager_cpp.reallocate does, with its tries in the CLI's chunks too
        options = dataclasses.replace(RunOptions.from_recorded(in_memory.settings), method=method).validate()
        drive(model_path, options, in_memory.prompts, answers, default_scorer("first_line"), None, pending=(),
              stats=in_memory.stats, chunk_size=2)
    assert [prompt_to_dict(p) for p in from_files.prompts] == [prompt_to_dict(p) for p in in_memory.prompts]
    if method not in ("parallel", "eager_init"):
        assert any(s.round > 0 for p in from_files.prompts for s in p.sequences), "phase (c) must have run"


class _ModelFreeExecutor(FakeExecutor):
    """The executor a CLI run gets, without a model (the driver's own memory is what is measured): checks the
    prompts as they come, records nothing per call."""

    n_ctx = 0

    def __init__(self, options, **kw):
        super().__init__(**kw)
        self.options = options

    def check(self, prompts):
        return max((len(text) for _, text in prompts), default=0), 1000

    def run_jobs(self, jobs, method, progress):
        out = super().run_jobs(jobs, method, progress)
        self.calls.clear()
        return out

    def recorded(self, n_prompts):
        return self.options.recorded(n_prompts)

    def account(self, stats, elapsed, outcome):
        pass


def _cli_run_peak_bytes(tmp_path, n, monkeypatch):
    """Peak bytes Python allocated during `eager-cpp run` (EAGer-adapt) of `n` prompts on the model-free
    executor, after checking that the output holds every prompt once."""
    import contextlib
    import tracemalloc

    import eager_cpp.cli.run as cli_run
    import eager_cpp.runner.driver as driver
    from eager_cpp.cli import main

    @contextlib.contextmanager
    def model_free(model, options):
        yield _ModelFreeExecutor(options, produce=lambda job: 4 if job.round == 0 and job.index % 3 == 0 else 1,
                                 text=lambda job, k: "Lima" if (job.index + k) % 2 else "Quito")

    monkeypatch.setattr(driver, "open_executor", model_free)
    monkeypatch.setattr(cli_run, "model_or_workers", lambda args, options: ("model.gguf", None))
    data, out = tmp_path / f"in_{n}.jsonl", tmp_path / f"out_{n}.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"#{i} Country: Peru\nCapital:", "answer": "Lima"}) + "\n"
                            for i in range(n)))
    tracemalloc.start()
    try:
        assert main(["run", str(data), "-o", str(out), "--method", "eager_adapt", "-M", "4", "--quiet"]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    indices = [json.loads(line)["index"] for line in out.read_text().splitlines()]
    assert sorted(indices) == list(range(n))
    return peak


def test_a_cli_run_holds_a_few_hundred_bytes_a_prompt_not_its_prompts(tmp_path, monkeypatch):
    # The run's memory grows with its columns per prompt (counts, plan inputs, file offsets: the ledger and the
    # checkpoint), not with the prompts' texts, their tokens or their results: those are read back from the
    # files. Holding the input's prompts alone (as it once did) added about 1.2 KB a prompt here.
    small, large = 1500, 6000
    per_prompt = (_cli_run_peak_bytes(tmp_path, large, monkeypatch)
                  - _cli_run_peak_bytes(tmp_path, small, monkeypatch)) / (large - small)
    assert per_prompt < 600, f"{per_prompt:.0f} bytes per added prompt"
