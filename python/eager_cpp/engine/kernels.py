"""The native entropy kernel, for tests and for users who analyse logits themselves."""

from __future__ import annotations

import numpy as np

from .. import _core


def cuda_available() -> "tuple[bool, str]":
    """(available, reason): whether `topk_entropy(..., device="cuda")` can run here.

    It needs eager_cpp built with the CUDA option (docs/gpu.md) and a visible CUDA device.
    """
    ok, why = _core.cuda_status()
    return bool(ok), str(why)


def topk_entropy(logits: "np.ndarray", k: int = 20, temperature: float = 1.0, n_threads: int = 0,
                 device: str = "cpu"):
    """Top-K entropy of each logits row and its two most likely token ids.

    logits: float array of shape (rows, n_vocab) or (n_vocab,). Returns (entropy, top1, top2)
    arrays of length rows: entropy in nats over the renormalised K largest probabilities of
    softmax(logits / temperature); ties go to the lower token id.
    device: "cpu" (the engine's host kernel) or "cuda" (the CUDA kernel; the rows are copied to
    the GPU first, so this is for checking and timing the kernel, not a faster host path).
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f'device must be "cpu" or "cuda", got {device!r}')
    arr = np.asarray(logits)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"logits must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"logits must have shape (rows, n_vocab) or (n_vocab,), got {arr.shape}")
    if arr.shape[-1] < k:
        raise ValueError(f"k={k} is larger than the row length {arr.shape[-1]}")
    rows = np.ascontiguousarray(arr, dtype=np.float32)
    flat = rows.reshape(-1, rows.shape[-1])
    # Non-finite logits, one rule: a NaN row has no distribution (ValueError naming it); +inf logits
    # are the limit of logits growing together, so they share all the probability equally and the
    # entropy is ln(min(j, K)) for j of them; -inf is a probability of 0.
    nan_rows = np.flatnonzero(np.isnan(flat).any(axis=1))
    if nan_rows.size:
        raise ValueError(f"logits row {int(nan_rows[0])} contains NaN ({nan_rows.size} such rows)")
    empty_rows = np.flatnonzero(np.isneginf(flat).all(axis=1))
    if empty_rows.size:
        raise ValueError(f"logits row {int(empty_rows[0])} is all -inf: no token has any probability")
    if device == "cpu":
        entropy, top1, top2 = _core.topk_entropy(rows, k, temperature, n_threads)
        _apply_infinite_limit(flat, k, entropy, top1, top2)
        return entropy, top1, top2
    ok, why = cuda_available()
    if not ok:
        raise RuntimeError(f"the CUDA kernel cannot run here: {why}")
    entropy, ids, _, _, _ = _core.cuda_topk_entropy(flat, k, temperature)
    top1, top2 = np.ascontiguousarray(ids[:, 0]), np.ascontiguousarray(ids[:, 1])
    _apply_infinite_limit(flat, k, entropy, top1, top2)
    return entropy, top1, top2


def _apply_infinite_limit(flat: "np.ndarray", k: int, entropy: "np.ndarray", top1: "np.ndarray",
                          top2: "np.ndarray") -> None:
    """Rows holding +inf: the kernel's finite arithmetic does not apply; set the limit in place."""
    inf_rows = np.flatnonzero(np.isposinf(flat).any(axis=1))
    ent, t1, t2 = np.atleast_1d(entropy), np.atleast_1d(top1), np.atleast_1d(top2)
    for i in inf_rows:
        ids = np.flatnonzero(np.isposinf(flat[i]))
        ent[i] = np.log(min(ids.size, k))
        t1[i] = ids[0]
        if ids.size > 1:
            t2[i] = ids[1]
        else:  # the best finite logit, lowest id among equals
            finite = np.where(np.isposinf(flat[i]), -np.inf, flat[i])
            t2[i] = int(np.flatnonzero(finite == finite.max())[0])
