"""The native entropy kernel, for tests and for users who analyse logits themselves."""

from __future__ import annotations

import numpy as np

from . import _core


def topk_entropy(logits: "np.ndarray", k: int = 20, temperature: float = 1.0, n_threads: int = 0):
    """Top-K entropy of each logits row and its two most likely token ids.

    logits: float array of shape (rows, n_vocab) or (n_vocab,). Returns (entropy, top1, top2)
    arrays of length rows: entropy in nats over the renormalised K largest probabilities of
    softmax(logits / temperature); ties go to the lower token id.
    """
    arr = np.asarray(logits)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"logits must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise ValueError(f"logits must have shape (rows, n_vocab) or (n_vocab,), got {arr.shape}")
    if arr.shape[-1] < k:
        raise ValueError(f"k={k} is larger than the row length {arr.shape[-1]}")
    rows = np.ascontiguousarray(arr, dtype=np.float32)
    return _core.topk_entropy(rows, k, temperature, n_threads)
