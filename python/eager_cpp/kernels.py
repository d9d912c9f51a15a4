"""The native entropy kernel, for tests and for users who analyse logits themselves."""

from __future__ import annotations

import numpy as np

from . import _core


def cuda_available() -> "tuple[bool, str]":
    """(available, reason): whether `topk_entropy(..., device="cuda")` can run here.

    It needs eager_cpp built with the CUDA option (README, "GPU") and a visible CUDA device.
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
    if device == "cpu":
        return _core.topk_entropy(rows, k, temperature, n_threads)
    ok, why = cuda_available()
    if not ok:
        raise RuntimeError(f"the CUDA kernel cannot run here: {why}")
    entropy, ids, _, _, _ = _core.cuda_topk_entropy(rows.reshape(-1, rows.shape[-1]), k, temperature)
    return entropy, np.ascontiguousarray(ids[:, 0]), np.ascontiguousarray(ids[:, 1])
