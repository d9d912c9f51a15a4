"""The device path (top-K and entropy inside llama.cpp's graph) and the CUDA kernel.

The graph ops run on whatever backend runs the model, so on this CPU-only build they run on the
CPU backend and every test but the GPU ones runs here. With a CUDA-enabled llama.cpp and
EAGER_CPP_TEST_GPU_LAYERS set (e.g. -1), the same tests run on the GPU; the CUDA kernel tests
need eager_cpp built with -DEAGER_CPP_CUDA=ON and a visible device, and skip cleanly otherwise.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import eager_cpp
from eager_cpp import _core
from conftest import CAPITAL_PROMPTS, numpy_topk_entropy, reference_logits

GPU_LAYERS = int(os.environ.get("EAGER_CPP_TEST_GPU_LAYERS", "0"))
PROMPTS = CAPITAL_PROMPTS + [
    "Question: What is 12 times 7?\nAnswer:",
    "Once upon a time",
    "def fibonacci(n):",
]


@pytest.fixture(scope="module")
def device_model(model_path):
    """The model on the backend under test: the GPU when EAGER_CPP_TEST_GPU_LAYERS is set."""
    return eager_cpp.Model(model_path, n_threads=2, n_gpu_layers=GPU_LAYERS)


def _order(ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Candidate positions by (logit desc, id asc), the host kernel's order."""
    return np.lexsort((ids, -logits))


@pytest.mark.parametrize("entropy_temperature", [1.0, 0.6])
def test_device_rows_equal_host_kernel_on_the_same_logits(device_model, entropy_temperature):
    tokens = [device_model.tokenize(p) for p in PROMPTS]
    rows = device_model.probe_device_topk(tokens, candidates=256, entropy_k=20,
                                                 entropy_temperature=entropy_temperature, sample_temperature=0.6)
    assert len(rows) == len(PROMPTS)
    for r in rows:
        logits, ids = r["logits"], r["ids"]
        # The premise: both passes produced the same logits.
        np.testing.assert_array_equal(r["cand_logits"], logits[ids])
        assert len(set(ids.tolist())) == 256
        # The candidates are the row's 256 largest (up to ties at the boundary).
        assert r["cand_logits"].min() >= np.partition(logits, -256)[-256]
        h, t1, t2 = eager_cpp.topk_entropy(logits, k=20, temperature=entropy_temperature)
        assert abs(r["entropy"] - h[0]) < 1e-4
        top = ids[_order(ids, r["cand_logits"])]
        assert (top[0], top[1]) == (t1[0], t2[0])
        ref_h, _, _ = numpy_topk_entropy(logits, 20, entropy_temperature)
        assert abs(r["entropy"] - ref_h[0]) < 1e-4
        # Probabilities under the full row's softmax at the sampling temperature.
        x = logits.astype(np.float64) / 0.6
        p = np.exp(x - x.max())
        p /= p.sum()
        np.testing.assert_allclose(r["cand_probs"], p[ids], atol=1e-6, rtol=1e-4)


def _run(model, **kw):
    args = dict(method="eager_init", max_sequences=4, entropy_threshold=1.5, max_new_tokens=20, seed=3,
                record_entropies=True, think_end_marker=None)
    args.update(kw)
    return eager_cpp.run(model, PROMPTS, **args)


def _sequences(result):
    return [[(s.parent, s.branch_step, s.token_ids) for s in p.sequences] for p in result.prompts]


def test_engine_device_path_matches_host_kernel_greedy(device_model):
    host = _run(device_model, temperature=0.0, device_topk=False)
    device = _run(device_model, temperature=0.0, device_topk=True)
    assert device.settings["device_topk"] is True and host.settings["device_topk"] is False
    assert _sequences(device) == _sequences(host)
    assert sum(p.n_sequences for p in host.prompts) > len(PROMPTS)  # the run branched
    for hp, dp in zip(host.prompts, device.prompts):
        for hs, ds in zip(hp.sequences, dp.sequences):
            np.testing.assert_allclose(ds.entropies, hs.entropies, atol=1e-4)


def test_engine_device_path_samples_like_the_host_kernel(device_model):
    # With the whole vocabulary as candidates, nothing is left out and the same per-sequence
    # draws must pick the same tokens: the device path's sampling is the host kernel's.
    host = _run(device_model, temperature=0.6, device_topk=False, max_new_tokens=12)
    device = _run(device_model, temperature=0.6, device_topk=True, device_candidates=device_model.n_vocab,
                  max_new_tokens=12)
    assert _sequences(device) == _sequences(host)
    assert device.stats.device_dropped_mass_max < 1e-5
    assert host.stats.device_dropped_mass_max == 0.0


def test_device_path_reports_the_mass_it_leaves_out(device_model):
    few = _run(device_model, temperature=0.6, device_topk=True, device_candidates=32, max_new_tokens=8)
    assert few.stats.device_dropped_mass_max > 1e-3  # 32 candidates of a base model's 262k vocabulary
    for p in few.prompts:
        assert 1 <= p.n_sequences <= 4


def test_device_path_bad_settings(device_model):
    with pytest.raises(ValueError, match="device_candidates"):
        _run(device_model, device_topk=True, device_candidates=10)  # fewer than top_k_entropy=20
    with pytest.raises(ValueError, match="raise device_candidates"):
        _run(device_model, device_topk=True, device_candidates=64, top_k=100)
    with pytest.raises(TypeError, match="device_topk"):
        _run(device_model, device_topk="yes")
    with pytest.raises(ValueError, match="n_gpu_layers"):
        eager_cpp.Model(device_model.path, n_gpu_layers=-2)


def test_device_path_is_off_by_default_on_the_cpu(model):
    assert not model.offloaded
    result = eager_cpp.run(model, PROMPTS[:1], max_new_tokens=2)
    assert result.settings["device_topk"] is False


requires_cuda_kernel = pytest.mark.skipif(not eager_cpp.engine.kernels.cuda_available()[0],
                                          reason="CUDA kernel unavailable: " + eager_cpp.engine.kernels.cuda_available()[1])


@requires_cuda_kernel
@pytest.mark.parametrize("k", [2, 20, 64])
def test_cuda_kernel_equals_host_kernel(model, k):
    rng = np.random.default_rng(1)
    rows = rng.normal(0.0, 3.0, size=(8, model.n_vocab)).astype(np.float32)
    rows[1] = np.round(rows[1])  # ties: the lower id first on both
    rows[2, 4242] = 60.0
    real = model.probe_device_topk([model.tokenize(p) for p in PROMPTS])
    rows = np.vstack([rows] + [r["logits"][None, :] for r in real])
    entropy, ids, values, kernel_ms, _ = _core.cuda_topk_entropy(rows, k, 1.0)
    h, t1, t2 = eager_cpp.topk_entropy(rows, k=k)
    np.testing.assert_allclose(entropy, h, atol=1e-4)
    assert ids[:, 0].tolist() == t1.tolist() and ids[:, 1].tolist() == t2.tolist()
    for row, row_ids, row_values in zip(rows, ids, values):
        np.testing.assert_array_equal(row[row_ids], row_values)
        assert np.all(np.diff(row_values) <= 0)
    assert kernel_ms > 0


@requires_cuda_kernel
def test_cuda_path_through_the_python_api(model):
    rows = np.random.default_rng(2).normal(size=(3, 1000)).astype(np.float32)
    for a, b in zip(eager_cpp.topk_entropy(rows, device="cuda"), eager_cpp.topk_entropy(rows)):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.skipif(GPU_LAYERS == 0 or not _core.supports_gpu_offload(),
                    reason="needs a GPU-enabled llama.cpp and EAGER_CPP_TEST_GPU_LAYERS")
def test_gpu_greedy_tokens_are_the_cpu_argmax_teacher_forced(device_model, reference):
    result = eager_cpp.run(device_model, PROMPTS, method="parallel", max_sequences=1, temperature=0.0,
                           max_new_tokens=24, device_topk=True)
    for prompt, p in zip(PROMPTS, result.prompts):
        prompt_tokens = device_model.tokenize(prompt)
        generated = p.sequences[0].token_ids
        logits = reference_logits(reference, prompt_tokens + generated)[len(prompt_tokens) - 1:]
        for step, token in enumerate(generated):
            row = logits[step]
            # The GPU's choice is the CPU's argmax up to the numeric noise between backends.
            assert row.max() - row[token] < 0.1, (prompt, step)
