"""Shared fixtures: the default model loaded once, and llama-cpp-python as the reference client."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import eager_cpp

DATA_DIR = Path(os.environ.get("EAGER_CPP_DATA", Path(__file__).resolve().parents[1] / "data"))

CAPITAL_PROMPTS = [
    "Country: France\nCapital:",
    "Country: Japan\nCapital:",
    "Country: Kenya\nCapital:",
    "Country: Peru\nCapital:",
]


@pytest.fixture(scope="session")
def model_path() -> str:
    # EAGER_CPP_MODEL: the same model as a file, where its PyPI package is not installed (the
    # GPU machine of benchmarks/device/h200.sh).
    return os.environ.get("EAGER_CPP_MODEL") or eager_cpp.default_model_path()


@pytest.fixture(scope="session")
def model(model_path: str) -> eager_cpp.Model:
    return eager_cpp.Model(model_path, n_threads=2)


@pytest.fixture(scope="session")
def reference(model_path: str):
    """llama-cpp-python with logits for every position, for teacher-forced comparisons.

    Built through eager_cpp's CPU buffer guard: llama-cpp-python alone dies with SIGILL where the
    AMX matmul faults, and a comparison is fair only with the same buffer types on both sides.
    """
    pytest.importorskip("llama_cpp")
    return eager_cpp.llama_cpp_reference(model_path, n_ctx=1024, n_batch=512, logits_all=True, n_threads=2,
                                         verbose=False)


def reference_logits(reference, tokens: list[int]) -> np.ndarray:
    """Logits after each token of `tokens` (row i predicts token i + 1)."""
    reference.reset()
    reference.eval(tokens)
    return np.array(reference.scores[: len(tokens)], dtype=np.float32)


# Logits: llama.cpp's batch noise (DESIGN: up to 0.58 apart on the CPUs measured) plus margin.
GREEDY_NOISE = 1.0


def assert_greedy_choices(model, reference, result) -> None:
    """Every token is the model's greedy choice at its prefix (the second best where a child was born),
    teacher-forced on llama-cpp-python, up to batch noise: recomputed or copied cells that were wrong would not be."""
    for p in result.prompts:
        prompt = model.tokenize(p.prompt)
        by = {s.index: s for s in p.sequences}
        for s in p.sequences:
            rows = reference_logits(reference, prompt + s.token_ids[:-1])[len(prompt) - 1:]
            for j, (row, token) in enumerate(zip(rows, s.token_ids)):
                maker = s  # the sequence that generated token j: an inherited one comes from an ancestor
                while maker.parent is not None and j < maker.branch_step:
                    maker = by[maker.parent]
                rank = 2 if maker.parent is not None and j == maker.branch_step else 1
                wanted = np.sort(row)[-rank]
                assert row[token] >= wanted - GREEDY_NOISE, (p.index, s.index, j, float(row[token]), float(wanted))


def tree_shape(result) -> list[list[tuple]]:
    """Each prompt's sequences as (index, parent, branch step, tokens, finish reason): what two runs compare on."""
    return [[(s.index, s.parent, s.branch_step, tuple(s.token_ids), s.finish_reason) for s in p.sequences]
            for p in result.prompts]


def load_jsonl(name: str, limit: int | None = None) -> list[dict]:
    path = DATA_DIR / name
    if not path.exists():
        pytest.skip(f"data file {path} not found (set EAGER_CPP_DATA)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def numpy_topk_entropy(rows: np.ndarray, k: int, temperature: float = 1.0):
    """Reference: top-K by (logit desc, id asc), renormalised softmax entropy in nats."""
    ents, top1, top2 = [], [], []
    for row in np.atleast_2d(rows).astype(np.float64):
        order = np.lexsort((np.arange(row.size), -row))[:k]
        vals = row[order] / temperature
        finite = np.isfinite(vals)
        v = vals[finite]
        p = np.exp(v - v.max())
        p /= p.sum()
        ents.append(float(-(p * np.log(np.where(p > 0, p, 1))).sum()))
        top1.append(int(order[0]))
        top2.append(int(order[1]))
    return np.array(ents), np.array(top1), np.array(top2)


def write_gguf(path, arch: str = "llama", **keys):
    """A tiny GGUF with the given metadata and no tensors (llama.cpp refuses to load it)."""
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(64)
    for key, value in keys.items():
        if isinstance(value, float):
            w.add_float32(key, value)
        else:
            w.add_uint32(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="session")
def layout_reference(model_path: str):
    """For Model.score_continuations: a llama-cpp-python context shaped as eager_cpp's: unified KV cells for many
    sequence ids, one 512-token micro-batch, flash attention on (llama.cpp's "auto" on the CPU), 2 threads."""
    llama_cpp = pytest.importorskip("llama_cpp")
    ref = eager_cpp.llama_cpp_reference(model_path, n_ctx=256, n_threads=2, verbose=False)
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch, params.n_seq_max = 1024, 512, 512, 64
    params.kv_unified, params.flash_attn_type = True, 1
    params.n_threads = params.n_threads_batch = 2
    ctx = llama_cpp.llama_init_from_model(ref._model.model, params)
    assert ctx is not None
    yield ref, ctx
    llama_cpp.llama_free(ctx)


def reference_scores(layout_reference, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """Sum of log-softmax and greedy flag of each pair, from one llama-cpp-python llama_decode of them all (pair s
    as sequence s, logits for the rows that predict a continuation token), log-softmax in numpy."""
    import llama_cpp

    ref, ctx = layout_reference
    n_tokens = sum(len(c) + len(x) for c, x in pairs)
    batch = llama_cpp.llama_batch_init(n_tokens, 0, 1)
    try:
        rows, k = [], 0
        for s, (context, continuation) in enumerate(pairs):
            tokens = context + continuation
            for i, t in enumerate(tokens):
                batch.token[k], batch.pos[k], batch.n_seq_id[k] = t, i, 1
                batch.seq_id[k][0] = s
                wanted = len(context) - 1 <= i < len(tokens) - 1
                batch.logits[k] = int(wanted)
                if wanted:
                    rows.append((s, k, continuation[i + 1 - len(context)]))
                k += 1
        batch.n_tokens = n_tokens
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        assert llama_cpp.llama_decode(ctx, batch) == 0
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(ref._model.model))
        out = [(0.0, True)] * len(pairs)
        for s, k, t in rows:
            row = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, k), shape=(n_vocab,)).astype(np.float64)
            logprob = row[t] - (row.max() + np.log(np.exp(row - row.max()).sum()))
            out[s] = (out[s][0] + float(logprob), out[s][1] and bool(row[t] >= row.max()))
        return out
    finally:
        llama_cpp.llama_batch_free(batch)
