"""The native top-K entropy kernel against a numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

import eager_cpp
from conftest import numpy_topk_entropy

N_VOCAB = 262_144


@pytest.fixture(scope="module")
def random_rows() -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = rng.normal(0.0, 3.0, size=(6, N_VOCAB)).astype(np.float32)
    rows[1, rng.choice(N_VOCAB, 5000, replace=False)] = -np.inf  # masked vocabulary
    rows[2, :] = -np.inf
    rows[2, [5, 77, 9000]] = [1.0, 3.0, 2.0]  # fewer finite entries than K
    rows[3] = np.round(rows[3])  # many ties: lower ids must win
    rows[4, 100] = 50.0  # one dominant token: entropy near 0
    rows[5] = 0.0  # all equal: entropy ln K, top ids 0 and 1
    return rows


@pytest.mark.parametrize("k", [2, 20, 64])
def test_kernel_matches_numpy_on_random_rows(random_rows, k):
    h, t1, t2 = eager_cpp.topk_entropy(random_rows, k=k)
    rh, r1, r2 = numpy_topk_entropy(random_rows, k)
    np.testing.assert_allclose(h, rh, atol=1e-4)
    assert t1.tolist() == r1.tolist()
    assert t2.tolist() == r2.tolist()
    assert h[5] == pytest.approx(np.log(k), abs=1e-5)
    assert (t1[5], t2[5]) == (0, 1)
    assert h[4] < 1e-6


def test_kernel_with_temperature(random_rows):
    h, _, _ = eager_cpp.topk_entropy(random_rows[:2], k=20, temperature=0.6)
    rh, _, _ = numpy_topk_entropy(random_rows[:2], 20, temperature=0.6)
    np.testing.assert_allclose(h, rh, atol=1e-4)


def test_kernel_matches_numpy_on_real_logits(model):
    prefix = model.tokenize("Country: Peru\nCapital:")
    parent, _, fresh = model._model.probe_fork(prefix, model.tokenize(" Lima", add_special=False))
    rows = np.stack([parent, fresh])
    for k in (2, 20, 64):
        h, t1, t2 = eager_cpp.topk_entropy(rows, k=k)
        rh, r1, r2 = numpy_topk_entropy(rows, k)
        np.testing.assert_allclose(h, rh, atol=1e-4)
        assert t1.tolist() == r1.tolist() and t2.tolist() == r2.tolist()


def test_kernel_rejects_bad_input():
    with pytest.raises(ValueError):
        eager_cpp.topk_entropy(np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(ValueError):
        eager_cpp.topk_entropy(np.zeros((2, 100), dtype=np.float32), k=65)
    with pytest.raises(ValueError):
        eager_cpp.topk_entropy(np.zeros((2, 10), dtype=np.float32), k=20)
    with pytest.raises(TypeError):
        eager_cpp.topk_entropy(np.array([["a", "b"]]))
