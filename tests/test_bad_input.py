"""Bad input on the newer surfaces (issue 23): each a clear Python exception, or one `eager-cpp: error:` line
with exit 2 naming the file and line, never a traceback, a pybind11 signature or a hang."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import eager_cpp
from eager_cpp.files import textfiles
from eager_cpp.files.datasets import load_examples
from eager_cpp.engine.gguf_header import HeaderReader
from eager_cpp.engine.model import MAX_THREADS
from eager_cpp.core.options import RunOptions
from eager_cpp.evaluation.plots import tree_lanes
from eager_cpp.core.results import RunResult

Q = "Country: Peru\nCapital:"


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The CLI with a timeout: a hang fails the test instead of the suite."""
    return subprocess.run([sys.executable, "-m", "eager_cpp", *args], capture_output=True, text=True, timeout=60,
                          env=env)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eager-cpp: error: "), proc.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def sequence(index: int, parent: int | None, branch_step: int = 0, **fields) -> dict:
    tokens = [10, 11, 12]
    return dict(index=index, text=" Lima", token_ids=tokens, own_tokens=tokens[branch_step:],
                entropies=[0.5] * (len(tokens) - branch_step), parent=parent, branch_step=branch_step,
                finish_reason="stop", round=0, branch_entropy=None if parent is None else 1.5, **fields)


def results_line(sequences: list | None = None) -> str:
    seqs = [sequence(0, None), sequence(1, 0, branch_step=1)] if sequences is None else sequences
    return json.dumps({"index": 0, "prompt": Q, "prompt_tokens": 6, "answer": "Lima", "sequences": seqs}) + "\n"


@pytest.fixture
def results_file(tmp_path) -> Path:
    path = tmp_path / "r.jsonl"
    path.write_text(results_line())
    return path


# ----------------------------------------------------------------------------- 3: no pybind11 signature dumps


@pytest.mark.parametrize("stop", [["\ud800"], "\ud800", ["\n", "ok\udfff"]])
def test_a_stop_string_with_a_lone_surrogate_is_a_value_error(model, stop):
    with pytest.raises(ValueError, match=r"stop string \d .* is not valid Unicode text \(surrogates not allowed"):
        eager_cpp.run(model, ["hi"], max_new_tokens=4, stop=stop)


def test_a_think_end_marker_with_a_lone_surrogate_is_a_value_error():
    with pytest.raises(ValueError, match="think_end_marker is not valid Unicode text"):
        RunOptions.create(think_end_marker="</\ud800>")


def _tree_result(model) -> eager_cpp.RunResult:
    """Phase (a) of a tree-reallocating run whose one sequence per prompt leaves budget to spend."""
    return eager_cpp.run(model, [Q], method="eager_init", reallocation="tree", max_sequences=3,
                         entropy_threshold=100.0, max_new_tokens=3, answers=["zzz"])


@pytest.mark.parametrize("bad", [2**40, 10**9, -5, 1.5])
def test_tampered_token_ids_give_one_clean_error_before_the_engine(model, bad):
    result = _tree_result(model)
    first = result.prompts[0].sequences[0]
    assert first.parent is None and len(first.token_ids) >= 1
    first.token_ids[0] = bad  # every branch point's prefix (or its taken tokens) holds it
    with pytest.raises(ValueError, match=r"prompt 0: sequence 0 has a token id outside "
                                         rf"the vocabulary \[0, {model.n_vocab}\): {re.escape(repr(bad))}"):
        eager_cpp.reallocate(model, result, method="eager", answers=["zzz"])


# ----------------------------------------------------------------------------- 4: ggml's thread limit


def test_the_thread_limit_is_ggmls_own():
    llama_cpp = pytest.importorskip("llama_cpp")
    site = Path(llama_cpp.__file__).resolve().parents[1]
    header = next((p for p in (site / "include" / "ggml.h", Path(llama_cpp.__file__).parent / "include" / "ggml.h")
                   if p.is_file()), None)
    if header is None:
        pytest.skip("the pinned llama-cpp-python installed no ggml.h")
    found = re.search(r"#define\s+GGML_MAX_N_THREADS\s+(\d+)", header.read_text())
    assert found, f"no GGML_MAX_N_THREADS in {header}"
    assert MAX_THREADS == int(found.group(1)) == 512


@pytest.mark.parametrize("n_threads", [513, 600, 1024])
def test_thread_counts_past_ggmls_limit_are_refused_before_any_thread_starts(model_path, n_threads):
    with pytest.raises(ValueError, match=r"n_threads must be between 1 and 512 \(ggml's limit, GGML_MAX_N_THREADS\)"):
        RunOptions.create(n_threads=n_threads)
    with pytest.raises(ValueError, match="GGML_MAX_N_THREADS"):
        eager_cpp.Model(model_path, n_threads=n_threads)
    assert RunOptions.create(n_threads=512).n_threads == 512


def test_the_cli_refuses_threads_past_ggmls_limit(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    proc = cli("run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--threads", "600", "--quiet")
    assert_one_line_error(proc, "--threads must be between 1 and 512", "GGML_MAX_N_THREADS")


# ----------------------------------------------------------------------------- 5: eager-cpp show


def test_show_draws_a_well_formed_file(results_file):
    proc = cli("show", str(results_file), "--prompt", "0")
    assert proc.returncode == 0, proc.stderr
    assert "#1 from #0 at step 1" in proc.stdout


def test_show_without_matplotlib_is_one_line_before_any_output(tmp_path, results_file):
    # matplotlib installed but unimportable: what a machine without it sees.
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker.parent), os.environ.get("PYTHONPATH", "")]))
    proc = cli("show", str(results_file), "--prompt", "0", "-o", str(tmp_path / "tree.png"), env=env)
    assert_one_line_error(proc, "matplotlib", 'pip install "eager_cpp[plot]"')
    assert proc.stdout == "" and not (tmp_path / "tree.png").exists()


@pytest.mark.parametrize("line, message", [
    (results_line([1]), "sequence 0 is int, expected an object"),
    (results_line([sequence(0, None) | {"text": 5}]), "sequence 0: 'text' must be str, got 5"),
    (results_line([sequence(0, None) | {"token_ids": "abc"}]), "'token_ids' must be a list of int"),
    (results_line([sequence(0, None) | {"parent": "x"}]), "'parent' must be int or null"),
    ('{"index": 0, "prompt": "q", "prompt_tokens": 1, "sequences": {}}\n', "'sequences' must be list"),
    ('[1, 2]\n', "expected a JSON object, got list"),
])
def test_show_names_the_line_of_a_malformed_result(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(results_line() + line)
    assert_one_line_error(cli("show", str(path), "--prompt", "0"), f"{path}:2: not a results line", message)


def test_show_refuses_a_duplicated_sequence_index_instead_of_looping(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text(results_line([sequence(0, None), sequence(0, 0, branch_step=1)]))
    assert_one_line_error(cli("show", str(path), "--prompt", "0"), f"{path}:1:", "sequence 0 is its own parent")
    path.write_text(results_line([sequence(0, None), sequence(1, 0, branch_step=1), sequence(1, 0, branch_step=2)]))
    assert_one_line_error(cli("show", str(path), "--prompt", "0"), f"{path}:1:", "sequence index 1 appears twice")
    # The layout itself refuses it too, for a result built in memory.
    with pytest.raises(ValueError, match="sequence index 0 appears twice"):
        tree_lanes([eager_cpp.Sequence(**sequence(0, None)), eager_cpp.Sequence(**sequence(0, 0, branch_step=1))])


@pytest.mark.parametrize("make", ["fifo", "device"])
def test_every_command_refuses_a_file_that_is_not_regular_without_blocking(tmp_path, make):
    if make == "fifo":
        path = tmp_path / "input.jsonl"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
    out = tmp_path / "x.jsonl"
    assert_one_line_error(cli("show", str(path), "--prompt", "0"), "results file is not a regular file", str(path))
    assert_one_line_error(cli("run", str(path), "-o", str(out), "--quiet"), "input file is not a regular file",
                          str(path))
    assert_one_line_error(cli("eval", str(path), "--quiet"), "input file is not a regular file", str(path))
    assert not out.exists()


def test_a_line_over_the_limit_is_refused_after_reading_only_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(textfiles, "MAX_LINE_BYTES", 1000)
    path = tmp_path / "long.jsonl"
    path.write_text(results_line() + "x" * 5000 + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}:2: a line longer than 1000 bytes"):
        RunResult.from_jsonl(path)
    # A line of exactly the limit (its newline aside) is read.
    exact = tmp_path / "exact.jsonl"
    line = results_line()
    monkeypatch.setattr(textfiles, "MAX_LINE_BYTES", len(line) - 1)
    exact.write_text(line)
    assert len(RunResult.from_jsonl(exact).prompts) == 1


# ----------------------------------------------------------------------------- 6: messages that keep their place


def _with_context_length(src: str, dst: Path, value: int) -> Path:
    """A copy of the model at `src` whose '<arch>.context_length' (a uint32) holds `value`."""
    shutil.copyfile(src, dst)
    with open(dst, "rb") as f:
        buf = f.read(16 * 1024 * 1024)
    r = HeaderReader(buf, str(dst))
    r.take("4s"), r.take("I"), r.take("Q")
    for _ in range(r.take("Q")):
        key = r.string("key")
        kind = r.take("I")
        if key.endswith(b".context_length"):
            assert kind == 4, "context_length is a uint32 in GGUF"
            with open(dst, "r+b") as f:
                f.seek(r.pos)
                f.write(struct.pack("<I", value))
            return dst
        if kind == 8:
            r.string(key)
        elif kind == 9:
            r.skip_array(key)
        else:
            r.take({0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}[kind])
    raise AssertionError("the model has no context_length key")


def test_a_context_length_past_int32_is_read_unsigned(tmp_path, model_path):
    path = _with_context_length(model_path, tmp_path / "long_context.gguf", 2**32 - 1)
    model = eager_cpp.Model(path, n_threads=1)
    assert model.n_ctx_train == 2**32 - 1
    result = eager_cpp.run(model, [Q], method="parallel", max_sequences=1, max_new_tokens=2)
    assert len(result.prompts[0].sequences[0].own_tokens) >= 1


def test_invalid_utf8_names_the_file_and_line(tmp_path, results_file):
    prompts = tmp_path / "p.txt"
    prompts.write_bytes(b"Country: Peru\\nCapital:\nCountry: \xff\xfe\n")
    assert_one_line_error(cli("run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--quiet"),
                          f"{prompts}:2: not UTF-8 text")
    results_file.write_bytes(results_file.read_bytes() + b'{"index": 1, "prompt": "\xc3"}\n')
    assert_one_line_error(cli("show", str(results_file), "--prompt", "0"), f"{results_file}:2: not UTF-8 text")


def test_a_lone_surrogate_in_a_jsonl_prompt_names_the_file_and_line(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "fine", "answer": "a"}\n{"prompt": "bad \\ud800", "answer": "a"}\n')
    assert_one_line_error(cli("run", str(data), "-o", str(tmp_path / "o.jsonl"), "--quiet"),
                          f"{data}:2: the 'prompt' field is not valid Unicode text")
    data.write_text('{"prompt": "fine", "answer": "\\udfff"}\n')
    assert_one_line_error(cli("eval", str(data), "--quiet"), f"{data}:1: the 'answer' field is not valid Unicode")


def test_a_corrupt_meta_json_is_named(results_file):
    meta = Path(str(results_file) + ".meta.json")
    meta.write_text("{not json")
    assert_one_line_error(cli("show", str(results_file), "--prompt", "0"), f"{meta}: not a results metadata file")
    meta.write_text("[]")
    with pytest.raises(ValueError, match=rf"{re.escape(str(meta))}: not a results metadata file"):
        RunResult.from_jsonl(results_file)


@pytest.mark.parametrize("limit", ["-1", "0"])
def test_eval_says_what_is_wrong_with_limit(tmp_path, limit):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "q", "answer": "a"}\n')
    assert_one_line_error(cli("eval", str(data), "--limit", limit, "--quiet"), "--limit must be at least 1",
                          f"got {limit}")
    with pytest.raises(ValueError, match="limit must be a positive number"):
        load_examples(data, limit=int(limit))


def test_resume_and_overwrite_together_are_refused(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("hi\n")
    proc = cli("run", str(prompts), "-o", str(tmp_path / "o.jsonl"), "--resume", "--overwrite", "--quiet")
    assert_one_line_error(proc, "--resume", "--overwrite", "pass one of them")
