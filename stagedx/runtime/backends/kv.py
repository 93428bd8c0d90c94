"""Host KV cache: preallocated per-layer K / V rows, a live prefix bound as past, row commits.

Layout. Keys and values are each ONE array ``[L, R + max_context, H, D]`` (L layers, R =
``kv_reserved_slots`` dummy rows for the backend, zero-filled and never written, so that a
backend needing a non-empty past always has one; the runner masks them out). Layer ``l``'s
live prefix ``keys[l, : R + length]`` is contiguous, so it is bound as the graph's
``past_key.{l}`` without a copy. ``commit`` copies only the accepted rows of the last run's new
K / V (``[L, T, H, D]``, tree order) into ``[R + at, R + at + n)`` with one fancy-index copy
for all layers at once (rows in path order). ``truncate`` only moves ``length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...errors import ContractError, StagedxError
from ...manifest import NUMPY_DTYPE

NP_DTYPES = {name: np.dtype(np_name).type for name, np_name in NUMPY_DTYPE.items()}  # the runtime's one copy


@dataclass(frozen=True)
class KVShape:
    n_layers: int
    n_heads: int  # KV heads
    head_dim: int
    max_context: int  # committed rows the cache can hold
    reserved: int = 0  # dummy rows before the committed ones (always masked out)
    dtype: str = "fp32"

    @property
    def rows(self) -> int:
        return self.reserved + self.max_context

    @property
    def np_dtype(self) -> type:
        return NP_DTYPES[self.dtype]


class KVCache:
    """Per-layer K / V rows ``[L, R + max_context, H, D]`` with a logical ``length``."""

    def __init__(self, shape: KVShape):
        if shape.max_context < 1 or shape.reserved < 0:
            raise ContractError(f"bad KV shape {shape}")
        self.shape = shape
        full = (shape.n_layers, shape.rows, shape.n_heads, shape.head_dim)
        # zeros, not empty: reserved rows are masked, but masked scores times NaN are still NaN
        self.keys = np.zeros(full, dtype=shape.np_dtype)  # [L, R + max_ctx, H, D]
        self.values = np.zeros(full, dtype=shape.np_dtype)  # [L, R + max_ctx, H, D]
        self._length = 0

    @property
    def length(self) -> int:
        return self._length

    @property
    def reserved(self) -> int:
        return self.shape.reserved

    @property
    def max_context(self) -> int:
        return self.shape.max_context

    def prefix(self) -> tuple[np.ndarray, np.ndarray]:
        """Views (no copy) of the live rows, reserved ones included: ``[L, R + length, H, D]``;
        ``keys[l]`` of the result is contiguous."""
        end = self.shape.reserved + self._length
        return self.keys[:, :end], self.values[:, :end]

    def commit(
        self,
        new_k: np.ndarray,  # [L, T, H, D] the last run's new keys, tree order
        new_v: np.ndarray,  # [L, T, H, D]
        rows: Sequence[int] | np.ndarray,  # tree indices to keep, in path order
        at: int | None = None,  # committed row where they land (default: length)
    ) -> None:
        """Copy ``new_*[:, rows]`` to committed rows ``[at, at + len(rows))``; ``length``
        becomes ``at + len(rows)`` (``at < length`` drops the rows after ``at``)."""
        at = self._length if at is None else int(at)
        if not 0 <= at <= self._length:
            raise ContractError(f"commit at row {at} outside the committed {self._length} rows")
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = idx.shape[0]
        t = new_k.shape[1]
        if new_k.shape != new_v.shape or new_k.shape[0] != self.shape.n_layers:
            raise ContractError(f"new K/V shapes {new_k.shape} / {new_v.shape} do not fit {self.shape}")
        if n and (idx.min() < 0 or idx.max() >= t):
            raise ContractError(f"commit rows {idx.tolist()} outside the last run's {t} rows")
        if at + n > self.shape.max_context:
            raise StagedxError(
                f"context limit reached: {at + n} rows do not fit the KV cache of {self.shape.max_context}"
            )
        start = self.shape.reserved + at
        if n:
            if n == t and (idx == np.arange(t)).all():  # a chain: plain slice copy
                self.keys[:, start : start + n] = new_k
                self.values[:, start : start + n] = new_v
            else:
                self.keys[:, start : start + n] = new_k[:, idx]
                self.values[:, start : start + n] = new_v[:, idx]
        self._length = at + n

    def truncate(self, n: int) -> None:
        """Roll back to ``n <= length`` committed rows (no copy)."""
        n = int(n)
        if not 0 <= n <= self._length:
            raise ContractError(f"cannot truncate to {n}: {self._length} rows committed")
        self._length = n

    def room(self) -> int:
        """Rows that can still be committed."""
        return self.shape.max_context - self._length
