"""The one runner interface every backend implements (ONNX Runtime, TensorRT).

A runner owns one neural model (oracle or draft) and its KV cache. The decode loop only ever
calls the five members below; buffers belong to the backend (host arrays for ONNX Runtime on
CPU, device memory for CUDA / TensorRT), so one parity test covers every backend.

Semantics, shared by all backends:
- ``length`` is the number of committed KV rows (logical rows: a backend that keeps
  ``kv_reserved_slots`` dummy rows hides them here and masks them out itself).
- ``run(tokens, positions, tree_mask)`` scores T new tokens. Every new token attends to all
  ``length`` committed rows; among the new tokens, row i may attend to column j iff
  ``tree_mask[i, j]`` (ancestors and itself; parents come before children). ``positions`` are
  absolute (committed length + depth in the tree). The new K/V rows stay in backend-owned
  buffers until the next ``run``.
- ``commit(rows)`` appends the K/V of the given rows of the last ``run`` (tree indices, in path
  order) at ``[length, length + len(rows))`` and advances ``length``. Only those rows move.
- ``truncate(n)`` rolls back to ``n <= length`` committed rows (nothing is copied).
- ``close()`` releases the session / engine and every buffer the runner owns (idempotent).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..manifest import ModelEntry

FETCH_TOPK = "topk"
FETCH_LOGITS = "logits"


@dataclass(frozen=True)
class RunOutput:
    """What one call brings back to the host (float32 / int64 NumPy arrays)."""

    topk_values: np.ndarray | None = None  # [T, K] raw logits of the K best tokens, descending
    topk_indices: np.ndarray | None = None  # [T, K] their token ids
    logits: np.ndarray | None = None  # [T, V] only when fetch includes "logits"


class Runner(Protocol):
    entry: ModelEntry
    backend: str  # "onnxruntime" | "tensorrt"
    device: str  # the device really in use, e.g. "cpu", "cuda:0"
    max_context: int  # committed rows the cache can hold

    @property
    def length(self) -> int: ...

    def run(
        self,
        tokens: np.ndarray,  # [T] int64
        positions: np.ndarray,  # [T] int64
        tree_mask: np.ndarray,  # [T, T] bool
        fetch: Sequence[str] = (FETCH_TOPK,),
    ) -> RunOutput: ...

    def commit(self, rows: Sequence[int] | np.ndarray) -> None: ...

    def truncate(self, length: int) -> None: ...

    def close(self) -> None: ...


def chain_mask(t: int) -> np.ndarray:
    """Causal [T, T] mask for a linear chain (prefill, baseline, speculative)."""
    return np.tril(np.ones((t, t), dtype=bool))
