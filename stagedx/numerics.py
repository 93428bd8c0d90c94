"""Numeric measures shared by export (parity), engines (validate) and runtime tests. NumPy only:
every stage may import it, the runtime included (no torch)."""

from __future__ import annotations

import numpy as np

# A draft with a small-vocabulary head (FR-Spec) returns this or less for the ids outside its
# head (export writes -1e9 in fp32, -3e4 in fp16); no real logit comes near it.
OUT_OF_HEAD = -1.0e4


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """``max|ours - ref| / max|ref|``, the error measure of docs/design.md, in float64.

    ``inf`` when the shapes differ or ``ours`` holds a NaN / inf (never a silent broadcast, and
    a NaN cannot compare below a tolerance); 0.0 for empty arrays; against an all-zero
    reference any difference is ``inf`` (0.0 when there is none). Entries where ``ref`` is at
    or below ``OUT_OF_HEAD`` (ids outside a small-vocabulary draft head) must be there in
    ``ours`` too (else ``inf``) and are left out of both maxima."""
    ours = np.asarray(ours, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ours.shape != ref.shape or not np.all(np.isfinite(ours)):
        return float("inf")
    if not ref.size:
        return 0.0
    outside = ref <= OUT_OF_HEAD
    if outside.any():
        if np.any(ours[outside] > OUT_OF_HEAD):
            return float("inf")
        ours, ref = ours[~outside], ref[~outside]
        if not ref.size:
            return 0.0
    diff = float(np.max(np.abs(ours - ref)))
    scale = float(np.max(np.abs(ref)))
    if scale == 0.0:
        return float("inf") if diff else 0.0
    return diff / scale
