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
    parent, _, fresh = model.probe_fork(prefix, model.tokenize(" Lima", add_special=False))
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


def test_non_finite_logits_follow_one_rule():
    """NaN: no distribution (ValueError naming the row); +inf: the limit (equal shares); -inf: probability 0."""
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(4, 300)).astype(np.float32)
    with_nan = rows.copy()
    with_nan[2, 0] = np.nan
    with pytest.raises(ValueError, match="logits row 2 contains NaN"):
        eager_cpp.topk_entropy(with_nan, 20)
    with_nan[2, 0], with_nan[1, -1] = 0.0, np.nan  # a NaN at the end is not ignored either
    with pytest.raises(ValueError, match="logits row 1 contains NaN"):
        eager_cpp.topk_entropy(with_nan, 20)
    with pytest.raises(ValueError, match="all -inf"):
        eager_cpp.topk_entropy(np.full((1, 50), -np.inf, np.float32), 20)

    limits = rows.copy()
    limits[0, [4, 9, 200]] = np.inf  # three infinite logits share the mass: ln 3, top-2 the lowest ids
    limits[1, :] = np.inf  # all infinite: K equal shares, ln K (as equal finite logits give)
    limits[2, [7]] = np.inf  # one: all the mass, entropy 0, top-2 the best finite logit
    limits[3, :150] = -np.inf  # -inf is probability 0: the same as leaving those tokens out
    ent, top1, top2 = eager_cpp.topk_entropy(limits, 20)
    assert ent[:3] == pytest.approx([np.log(3), np.log(20), 0.0], abs=1e-6)
    assert (top1[:3].tolist(), top2[:2].tolist()) == ([4, 0, 7], [9, 1])
    assert top2[2] == int(np.argmax(np.where(np.isinf(limits[2]), -np.inf, limits[2])))
    ref_ent, ref1, ref2 = numpy_topk_entropy(limits[3:], 20)
    assert ent[3] == pytest.approx(ref_ent[0], abs=1e-5) and (top1[3], top2[3]) == (ref1[0], ref2[0])
    # Equal finite logits give ln K too: +inf everywhere is their limit.
    assert eager_cpp.topk_entropy(np.zeros((1, 300), np.float32), 20)[0][0] == pytest.approx(np.log(20), abs=1e-6)
