"""`eager-cpp` subcommands end to end on the default model, with tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import load_jsonl


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eager_cpp", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def capitals_small(tmp_path_factory):
    rows = load_jsonl("capitals_dev_100.jsonl", limit=4)
    path = tmp_path_factory.mktemp("data") / "capitals_small.jsonl"
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows))
    return path


def test_demo_runs_on_the_default_model():
    proc = cli("demo", "-M", "3", "--max-new-tokens", "6")
    assert proc.returncode == 0, proc.stderr
    assert "sequences" in proc.stdout and "saved" in proc.stdout and "total:" in proc.stdout


def test_a_full_disk_ends_in_one_error_and_resume_completes_the_run(tmp_path):
    """A write refused for want of room ends the run with one error saying what is intact; --resume then ends
    with every prompt once. The refusal is real: a file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored) makes
    the kernel fail the write with EFBIG, as a full disk fails it with ENOSPC, without needing root."""
    rows = load_jsonl("capitals_dev_100.jsonl", limit=8)
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in rows))
    args = ["run", str(data), "--method", "eager_adapt", "-M", "4", "--theta", "1.0", "--max-new-tokens", "8",
            "--stop", "\\n", "--chunk-size", "4", "--quiet"]
    whole = tmp_path / "whole.jsonl"
    assert cli(*args, "-o", str(whole)).returncode == 0
    phase_a = (tmp_path / "whole.jsonl.init.jsonl").read_bytes().splitlines(keepends=True)
    limit = len(b"".join(phase_a[:4])) + len(phase_a[4]) // 2  # the first chunk fits, the second does not

    out = tmp_path / "out.jsonl"
    limited = ("import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); sys.argv = sys.argv[:1] + sys.argv[2:]; "
               "runpy.run_module('eager_cpp', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", limited, "-", *args, "-o", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("eager-cpp: error:") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"writing the results beside {out} failed: File too large" in proc.stderr
    assert f"phase (a) of 4 prompts is intact in {out}.init.jsonl" in proc.stderr and "--resume" in proc.stderr
    assert not out.exists() and not (tmp_path / "out.jsonl.extras.jsonl").exists()

    proc = cli(*args, "-o", str(out), "--resume")
    assert proc.returncode == 0, proc.stderr
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    expected = [json.loads(line) for line in whole.read_text().splitlines()]
    assert [r["index"] for r in resumed] == list(range(8))
    assert [[q["token_ids"] for q in r["sequences"]] for r in resumed] == [
        [q["token_ids"] for q in r["sequences"]] for r in expected]


def test_run_writes_jsonl_and_resumes(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Country: Peru\\nCapital:\nCountry: Chile\\nCapital:\nCountry: Kenya\\nCapital:\n")
    out = tmp_path / "out.jsonl"
    args = ["run", str(prompts), "-o", str(out), "--method", "eager_init", "-M", "3", "--theta", "1.0",
            "--max-new-tokens", "6", "--stop", "\\n", "--chunk-size", "2", "--quiet"]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert 1 <= r["n_sequences"] <= 3
        assert {"text", "token_ids", "own_tokens", "entropies", "parent", "branch_step", "finish_reason"} <= set(
            r["sequences"][0])
    # An interruption after the first chunk: resume completes only what is missing.
    out.write_text(out.read_text().splitlines()[0] + "\n" + '{"index": 1, "trunc')
    proc = cli(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    resumed = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in resumed] == [0, 1, 2]
    assert resumed[0] == rows[0]  # kept, not redone
    # Redone prompts use the same per-prompt streams; their first token comes from the prompt's own
    # prefill row, which does not depend on which prompts share the batch.
    for a, b in zip(resumed[1:], rows[1:]):
        assert a["sequences"][0]["token_ids"][0] == b["sequences"][0]["token_ids"][0]
    # Different settings cannot resume into the same output; an existing output is not overwritten.
    proc = cli(*args[:-1], "--seed", "5", "--resume")
    assert proc.returncode == 2 and "other settings" in proc.stderr
    proc = cli(*args)
    assert proc.returncode == 2 and "--resume" in proc.stderr


def run_eager(tmp_path, capitals_small, name, *extra):
    out = tmp_path / name
    proc = cli("run", str(capitals_small), "-o", str(out), "--method", "eager", "-M", "3", "--theta", "0.75",
               "--max-new-tokens", "6", "--stop", "\\n", "--quiet", *extra)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / (name + ".meta.json")).read_text())
    return [json.loads(line) for line in out.read_text().splitlines()], meta


def test_run_reallocating_method(tmp_path, capitals_small):
    from eager_cpp.answers.scoring import default_scorer

    first_line = default_scorer("first_line")
    rows, meta = run_eager(tmp_path, capitals_small, "eager.jsonl")
    assert len(rows) == 4 and all(r["answer"] for r in rows)
    # The dataset's scorer, as eval picks it (capitals: the first line), decides "solved"...
    assert meta["settings"]["scorer"] == "first_line"
    for r in rows:
        assert all(s["correct"] == first_line(s["text"], r["answer"]) for s in r["sequences"])
    # ...and full EAGer gives the saved budget to exactly the prompts phase (a) left unsolved.
    init = [[s for s in r["sequences"] if s["round"] == 0] for r in rows]
    budget = 3 * 4 - sum(map(len, init))
    unsolved = [k for k, seqs in enumerate(init) if not any(s["correct"] for s in seqs)]
    assert 0 < len(unsolved) <= budget, "this setting leaves prompts unsolved and budget to give them"
    got = [sum(1 for s in r["sequences"] if s["round"] > 0) for r in rows]
    assert [k for k, n in enumerate(got) if n] == unsolved
    assert sum(got) == min(budget, 3 * len(unsolved))  # every sequence of the plan made (caps of M each)
    # Another scorer selects another set: --scorer number finds no number in a capital's name.
    rows, meta = run_eager(tmp_path, capitals_small, "number.jsonl", "--scorer", "number")
    assert meta["settings"]["scorer"] == "number"
    assert not any(s["correct"] for r in rows for s in r["sequences"])
    init = [[s for s in r["sequences"] if s["round"] == 0] for r in rows]
    budget = 3 * 4 - sum(map(len, init))
    got = [sum(1 for s in r["sequences"] if s["round"] > 0) for r in rows]
    assert budget > 0 and sum(got) == budget and sum(1 for n in got if n) == min(budget, 4)


def test_tree_run_then_show_draws_the_tree(tmp_path, capitals_small):
    pytest.importorskip("matplotlib")
    out = tmp_path / "tree.jsonl"
    proc = cli("run", str(capitals_small), "-o", str(out), "--method", "eager_adapt", "--reallocation", "tree",
               "-M", "3", "--theta", "0.5", "--max-new-tokens", "6", "--stop", "\\n", "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    extended = [r for r in rows if any(s["round"] > 0 for s in r["sequences"])]
    assert extended, "θ = 0.5 caps some prompts here, so the tree reallocation has budget to spend"
    index = extended[0]["index"]
    extras = [s for s in extended[0]["sequences"] if s["round"] > 0]
    assert all(s["parent"] is not None for s in extras)  # continuations, not fresh roots
    png = tmp_path / "tree.png"
    proc = cli("show", str(out), "--prompt", str(index), "-o", str(png))
    assert proc.returncode == 0, proc.stderr
    # The text tree: one line per sequence, the extras marked with their try and branch point.
    assert proc.stdout.count("\n#") + proc.stdout.count("\n  ") >= len(extended[0]["sequences"])
    assert "[try 1] from #" in proc.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    proc = cli("show", str(out), "--prompt", "999")
    assert proc.returncode == 2 and "prompt 999 is not in" in proc.stderr and "Traceback" not in proc.stderr


def test_eval_compares_fresh_and_tree_reallocation(tmp_path, capitals_small):
    out = tmp_path / "table.json"
    proc = cli("eval", str(capitals_small), "--methods", "parallel,eager_adapt", "--reallocation", "fresh,tree",
               "--thetas", "0.5", "-M", "3", "--max-new-tokens", "6", "--stop", "\\n", "--json", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["reallocation"]) for r in rows] == [("parallel", "-"), ("eager_adapt", "fresh"),
                                                                 ("eager_adapt", "tree")]
    # Fresh tries prefill nothing again; tree extras re-prefill the prefixes of the points they continue.
    assert rows[1]["reprocessed"] == 0 and rows[2]["reallocated"] > 0 and rows[2]["reprocessed"] > 0
    assert rows[2]["extras_length_ended"] <= rows[2]["reallocated"] and rows[2]["reallocation_error"] == ""
    proc = cli("eval", str(capitals_small), "--reallocation", "forest", "--quiet")
    assert proc.returncode == 2 and "unknown reallocation 'forest'" in proc.stderr


def test_eval_prints_table_and_json(tmp_path, capitals_small):
    out = tmp_path / "table.json"
    proc = cli("eval", str(capitals_small), "--methods", "parallel,eager_init,eager_adapt,eager", "--thetas", "1.0",
               "-M", "3", "--max-new-tokens", "6", "--stop", "\\n", "--json", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "Pass@k" in proc.stdout and "Cons@k" in proc.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["parallel", "eager_init", "eager_adapt", "eager"]
    for r in rows:
        assert {"pass@k", "cons@k", "pass_rate", "tokens", "mean_sequences", "wall_seconds"} <= set(r)


def test_bench_writes_valid_pngs(tmp_path, capitals_small):
    pytest.importorskip("matplotlib")
    proc = cli("bench", str(capitals_small), "--methods", "parallel,eager_init", "--thetas", "1.0", "--Ms", "1,2",
               "--max-new-tokens", "4", "--stop", "\\n", "--out-dir", str(tmp_path), "--quiet")
    assert proc.returncode == 0, proc.stderr
    for name in ("tokens_vs_pass.png", "methods_bars.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert len(json.loads((tmp_path / "bench.json").read_text())["rows"]) == 4


def test_bad_input_is_one_line_error(tmp_path):
    missing = cli("run", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "o.jsonl"))
    assert missing.returncode == 2 and "not found" in missing.stderr and "Traceback" not in missing.stderr
    bad_model = tmp_path / "m.gguf"
    bad_model.write_text("hello")
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    proc = cli("run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--model", str(bad_model))
    assert proc.returncode == 2 and "GGUF" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--model", str(tmp_path / "missing.gguf"))
    assert proc.returncode == 2 and "--model" in proc.stderr and "Traceback" not in proc.stderr
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": \n')
    proc = cli("eval", str(broken))
    assert proc.returncode == 2 and "broken.jsonl:2" in proc.stderr
    unlabelled = tmp_path / "unlabelled.jsonl"
    unlabelled.write_text('{"prompt": "a"}\n')
    proc = cli("eval", str(unlabelled))
    assert proc.returncode == 2 and "answer" in proc.stderr
    proc = cli("run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--gpu-layers", "-2")
    assert proc.returncode == 2 and "--gpu-layers" in proc.stderr and "Traceback" not in proc.stderr
    (tmp_path / "left.jsonl.meta.json").write_text("{}")  # what an interrupted run leaves before its first rows
    proc = cli("run", str(prompts), "-o", str(tmp_path / "left.jsonl"))
    assert proc.returncode == 2 and "an unfinished run into" in proc.stderr and "--resume" in proc.stderr
    proc = cli("run", "--no-such-flag")
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr or "required" in proc.stderr


RUN = ["--method", "eager_init", "-M", "2", "--theta", "1.0", "--max-new-tokens", "4", "--stop", "\\n", "--quiet"]


def test_overwrite_keeps_the_old_results_until_new_ones_exist(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Country: Peru\\nCapital:\nCountry: Chile\\nCapital:\n")
    out = tmp_path / "existing.jsonl"
    assert cli("run", str(prompts), "-o", str(out), *RUN).returncode == 0
    before, meta_before = out.read_text(), (tmp_path / "existing.jsonl.meta.json").read_text()
    for bad in (["-M", "0"], ["--max-new-tokens", "40000"], ["--top-p", "0"], ["--threads", "100000"]):
        proc = cli("run", str(prompts), "-o", str(out), *RUN, *bad, "--overwrite")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert out.read_text() == before and (tmp_path / "existing.jsonl.meta.json").read_text() == meta_before
    huge = tmp_path / "huge.txt"
    huge.write_text("x" * 10_000_000 + "\n")  # beyond the model's context: refused before anything is replaced
    proc = cli("run", str(huge), "-o", str(out), *RUN, "--overwrite")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert out.read_text() == before
    # A valid overwrite replaces both.
    proc = cli("run", str(prompts), "-o", str(out), *RUN[:-1], "--seed", "9", "--overwrite", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "existing.jsonl.meta.json").read_text())["settings"]["seed"] == 9


def test_resume_refuses_changed_prompts_and_chunk_sizes(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Country: Peru\\nCapital:\nCountry: Chile\\nCapital:\n")
    out = tmp_path / "o.jsonl"
    assert cli("run", str(prompts), "-o", str(out), *RUN, "--chunk-size", "1").returncode == 0
    prompts.write_text("Country: Peru\\nCapital:\nCountry: Japan\\nCapital:\n")
    proc = cli("run", str(prompts), "-o", str(out), *RUN, "--chunk-size", "1", "--resume")
    assert proc.returncode == 2 and "prompt 2 of the input" in proc.stderr
    prompts.write_text("Country: Peru\\nCapital:\nCountry: Chile\\nCapital:\n")
    proc = cli("run", str(prompts), "-o", str(out), *RUN, "--chunk-size", "2", "--resume")
    assert proc.returncode == 2 and "chunk_size" in proc.stderr
    (tmp_path / "o.jsonl.meta.json").write_text("{not json")
    proc = cli("run", str(prompts), "-o", str(out), *RUN, "--chunk-size", "1", "--resume")
    assert proc.returncode == 2 and "o.jsonl.meta.json" in proc.stderr and "Traceback" not in proc.stderr


def test_user_errors_are_one_line_never_a_traceback(tmp_path, capitals_small):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Country: Peru\\nCapital:\n")
    cases = [
        (["run", str(prompts), "-o", "/sys/x.jsonl", *RUN], "cannot write /sys/x.jsonl"),
        (["eval", str(capitals_small), "--json", "/proc/version", "-M", "2", "--max-new-tokens", "2"],
         "cannot write /proc/version"),
        (["eval", str(capitals_small), "--methods", ""], "--methods is empty"),
        (["run", str(prompts), "-o", str(tmp_path / "o.jsonl"), *RUN, "--threads", "100000"], "--threads must be"),
    ]
    for argv, message in cases:
        proc = cli(*argv)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, (argv, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    # A results file without 'index' on a line, then --resume.
    out = tmp_path / "r.jsonl"
    assert cli("run", str(prompts), "-o", str(out), *RUN).returncode == 0
    out.write_text('{"no_index": 1}\n')
    proc = cli("run", str(prompts), "-o", str(out), *RUN, "--resume")
    assert proc.returncode == 2 and "without the index of an input line" in proc.stderr and "Traceback" not in proc.stderr


def test_run_scores_whenever_answers_are_given_and_reads_back(tmp_path, capitals_small):
    import eager_cpp

    out = tmp_path / "scored.jsonl"
    proc = cli("run", str(capitals_small), "-o", str(out), *RUN)
    assert proc.returncode == 0, proc.stderr
    result = eager_cpp.RunResult.from_jsonl(out)
    assert [p.index for p in result.prompts] == [0, 1, 2, 3]
    assert all(p.gold_answer for p in result.prompts)
    assert all(s.correct is not None for p in result.prompts for s in p.sequences)
    from eager_cpp.answers.scoring import default_scorer

    first_line = default_scorer("first_line")  # the dataset's scorer (its name says capitals)
    assert all(s.correct == first_line(s.text, p.gold_answer) for p in result.prompts for s in p.sequences)
    solved = sum(any(first_line(s.text, p.gold_answer) for s in p.sequences) for p in result.prompts)
    assert result.settings["method"] == "eager_init" and result.metrics()["pass@k"] == solved / 4
