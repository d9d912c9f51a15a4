"""The CLI's checkpoint store on its own (no model): staging, resume checks, cut lines, the sidecar."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import eager_cpp
from eager_cpp.files.checkpoint import Checkpoint, CheckpointError, prompt_hash, recorded_settings

KEY = {"method": "eager_init", "seed": 0, "chunk_size": 2}
HASHES = [prompt_hash("a", None), prompt_hash("b", "B"), prompt_hash("c", "C")]


def interrupted_after_row_0(out, *, staged: bool) -> Checkpoint:
    """A run into `out` that wrote row 0 and stopped (the file closed, not finished)."""
    store = Checkpoint(out, KEY, HASHES, staged_phase_a=staged)
    store.start(resume=False)
    store.chunk_done([row(0)])
    store.close()
    return store


def row(index: int) -> dict:
    return {"index": index, "prompt": f"p{index}", "prompt_tokens": 1, "answer": None, "steps": 1,
            "sequences": [{"index": 0, "text": "x", "token_ids": [5], "own_tokens": [5], "entropies": [0.1],
                           "parent": None, "branch_step": 0, "finish_reason": "length"}]}


def test_prompt_hash_covers_the_prompt_and_its_answer():
    assert len({prompt_hash("a", "1"), prompt_hash("a", "2"), prompt_hash("b", "1"), prompt_hash("a", None)}) == 4
    # A prompt and answer that run together differently are different lines.
    assert prompt_hash("a1", "") != prompt_hash("a", "1")


def test_prompt_hash_is_the_same_in_another_process():
    # --resume compares hashes written by an earlier process: a hash that depended on the process (Python's
    # salted hash(), object ids) would make every line of a resumed run look changed.
    code = "from eager_cpp.files.checkpoint import prompt_hash; print(prompt_hash('Country: Perú', '42'))"
    others = {subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONHASHSEED=seed),
                             capture_output=True, text=True, check=True).stdout.strip() for seed in ("1", "2")}
    assert others == {prompt_hash("Country: Perú", "42")}


def test_a_fresh_run_replaces_the_old_results_only_once_a_chunk_is_on_disk(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("old\n")
    store = Checkpoint(out, KEY, HASHES, staged_phase_a=False)
    assert store.start(resume=False) == []
    assert out.read_text() == "old\n" and not store.meta_path.exists()  # nothing replaced yet
    store.chunk_done([row(0)], {"method": "eager_init"})
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == [0]
    assert not (tmp_path / "r.jsonl.new").exists()
    store.chunk_done([row(1), row(2)])
    store.finish(None, {"method": "eager_init", "n_prompts": 3})
    meta = json.loads(store.meta_path.read_text())
    assert meta["complete"] is True and meta["settings"] == KEY and meta["prompt_hashes"] == HASHES
    assert recorded_settings(out) == {"method": "eager_init", "n_prompts": 3}
    assert eager_cpp.RunResult.from_jsonl(out).settings["n_prompts"] == 3  # the library asks the checkpoint


def test_an_abandoned_fresh_run_leaves_the_old_results_and_no_staged_file(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text("old\n")
    store = Checkpoint(out, KEY, HASHES, staged_phase_a=False)
    store.start(resume=False)
    store.abandon()
    assert out.read_text() == "old\n" and list(tmp_path.iterdir()) == [out]


def test_resume_keeps_complete_lines_and_drops_a_cut_one(tmp_path):
    out = tmp_path / "r.jsonl"
    interrupted_after_row_0(out, staged=False)
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"index": 1, "trunc')  # an interruption mid-line
    store = Checkpoint(out, KEY, HASHES, staged_phase_a=False)
    done = store.start(resume=True)
    assert list(done) == [0]
    store.chunk_done([row(1)])
    store.close()
    assert [json.loads(line)["index"] for line in out.read_text().splitlines()] == [0, 1]


def test_resume_reads_the_kept_lines_without_rewriting_them_and_refuses_a_foreign_line(tmp_path):
    out = tmp_path / "r.jsonl"
    interrupted_after_row_0(out, staged=False)
    kept = out.read_text()
    store = Checkpoint(out, KEY, HASHES, staged_phase_a=False)
    assert store.start(resume=True) == [0] and store.has(0) and not store.has(1)
    store.close()
    assert out.read_text() == kept
    for foreign in ('{"no_index": 1}', '{"index": 3}', '{"index": true}', "[1]"):  # index 3: beyond the input
        out.write_text(kept + foreign + "\n")
        with pytest.raises(CheckpointError, match="without the index of an input line"):
            Checkpoint(out, KEY, HASHES, staged_phase_a=False).start(resume=True)


def test_resume_refuses_other_settings_changed_prompts_and_a_foreign_file(tmp_path):
    out = tmp_path / "r.jsonl"
    store = interrupted_after_row_0(out, staged=True)
    assert (tmp_path / "r.jsonl.init.jsonl").exists() and not out.exists()  # phase (a) beside the final file
    with pytest.raises(CheckpointError, match="other settings.*seed: 0 -> 1"):
        Checkpoint(out, dict(KEY, seed=1), HASHES, staged_phase_a=True).start(resume=True)
    with pytest.raises(CheckpointError, match="prompt 2 of the input"):
        Checkpoint(out, KEY, [HASHES[0], prompt_hash("b", "C"), HASHES[2]], staged_phase_a=True).start(resume=True)
    store.meta_path.write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read .*meta.json"):
        Checkpoint(out, KEY, HASHES, staged_phase_a=True).start(resume=True)
    store.meta_path.unlink()
    out.write_text("")
    with pytest.raises(CheckpointError, match="not written by 'eager-cpp run'"):
        Checkpoint(out, KEY, HASHES, staged_phase_a=True).start(resume=True)


def test_a_reallocating_run_writes_its_final_file_whole(tmp_path):
    out = tmp_path / "r.jsonl"
    store = Checkpoint(out, KEY, HASHES, staged_phase_a=True)
    store.start(resume=False)
    store.chunk_done([row(0), row(1), row(2)])
    # Two tries' new sequences for prompt 1, one for prompt 2: kept apart until the end, then merged.
    store.extras_done([dict(row(1), sequences=["a"]), dict(row(2), sequences=["b"])])
    store.extras_done([dict(row(1), sequences=["c"])])
    assert store.parts(1) == (row(1), [dict(row(1), sequences=["a"]), dict(row(1), sequences=["c"])])
    assert not out.exists()

    def merge(base, extras):
        return dict(base, sequences=base["sequences"] + [s for e in extras for s in e["sequences"]])

    store.finish([2, 0, 1], {"method": "eager_adapt"}, merge)
    final = [merge(row(2), [{"sequences": ["b"]}]), row(0), merge(row(1), [{"sequences": ["a", "c"]}])]
    assert [json.loads(line) for line in out.read_text().splitlines()] == final
    assert recorded_settings(out) == {"method": "eager_adapt"}
    assert not store.extras_path.exists()


def test_recorded_settings_reads_sidecars_of_older_versions(tmp_path):
    out = tmp_path / "r.jsonl"
    assert recorded_settings(out) is None
    (tmp_path / "r.jsonl.meta.json").write_text(json.dumps({"settings": {"seed": 1}, "engine_settings": {"seed": 2}}))
    assert recorded_settings(out) == {"seed": 2}
    (tmp_path / "r.jsonl.meta.json").write_text("[1]")
    with pytest.raises(ValueError, match="no 'settings' object"):
        recorded_settings(out)


def test_a_prompt_file_reads_back_each_prompt_as_loaded_and_refuses_a_file_changed_under_it(tmp_path):
    from eager_cpp.files.datasets import DatasetError, PromptFile, load_examples

    path = tmp_path / "in.jsonl"
    lines = ['{"prompt": "Country: Perú\\nCapital:", "answer": "Lima"}', "", '{"prompt": "b", "answer": "B"}',
             '{"prompt": "c", "answer": "C"}']
    path.write_text("\n".join(lines) + "\n")
    inputs = PromptFile(path)
    examples = load_examples(path)
    assert len(inputs) == 3 and [inputs.example(k) for k in (2, 0, 1)] == [examples[k] for k in (2, 0, 1)]
    # What --resume compares: the same hashes as the checkpoint's, line for line, blank lines skipped.
    assert [inputs.digest(k).hex() for k in range(3)] == [prompt_hash(e.prompt, e.answer) for e in examples]
    assert list(inputs.answers()[k] for k in range(3)) == ["Lima", "B", "C"]
    # Another file of the same shape put in its place: the same offsets now hold other prompts.
    path.write_text("\n".join(lines[:2] + ['{"prompt": "x", "answer": "B"}', lines[3]]) + "\n")
    assert inputs.example(0) == examples[0]
    with pytest.raises(DatasetError, match="changed while the run was reading it"):
        inputs.example(1)
    inputs.close()
    path.write_text('{"prompt": "a"}\n{"prompt": "b", "answer": "B"}\n')
    assert PromptFile(path).answers() is None  # not every line has an answer


def test_iter_results_reads_a_results_file_a_prompt_at_a_time(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(row(1)) + "\n\n" + json.dumps(row(0)) + "\n" + '{"index": 2, "cut' + "\n")
    prompts = eager_cpp.iter_results(path)
    # Lazily: the prompts before a bad line come out, in file order, before the bad line is read.
    assert [next(prompts).index, next(prompts).index] == [1, 0]
    with pytest.raises(ValueError, match=r"r.jsonl:4: not a results line"):
        next(prompts)
    path.write_text(json.dumps(row(1)) + "\n" + json.dumps(row(0)) + "\n")
    whole = eager_cpp.RunResult.from_jsonl(path)
    assert [p.index for p in whole.prompts] == [0, 1]  # from_jsonl sorts by index
    assert sorted(eager_cpp.iter_results(path), key=lambda p: p.index) == whole.prompts
