"""Small statistics helpers for distribution tests (no SciPy needed)."""

from __future__ import annotations

import math

import numpy as np


def chi2_sf(x: float, df: int) -> float:
    """Upper tail of the chi-square distribution (Wilson-Hilferty normal approximation)."""
    if df <= 0:
        return 1.0
    z = ((x / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return 0.5 * math.erfc(z / math.sqrt(2))


def chi_square_pvalue(counts: np.ndarray, probs: np.ndarray, min_expected: float = 5.0) -> float:
    """Goodness of fit of observed ``counts`` to ``probs``; cells with a small expected
    count are pooled into one so the approximation holds. An observation in a cell of
    probability zero gives p = 0."""
    counts = np.asarray(counts, dtype=np.float64).ravel()
    probs = np.asarray(probs, dtype=np.float64).ravel()
    if np.any(counts[probs == 0] > 0):
        return 0.0
    n = counts.sum()
    expected = probs * n
    big = expected >= min_expected
    obs = list(counts[big]) + [counts[~big].sum()]
    exp = list(expected[big]) + [expected[~big].sum()]
    obs, exp = np.asarray(obs), np.asarray(exp)
    keep = exp > 0
    stat = float(np.sum((obs[keep] - exp[keep]) ** 2 / exp[keep]))
    return chi2_sf(stat, int(keep.sum()) - 1)


def law_pvalue(counts, law: dict) -> float:
    """Chi-square p-value of observed ``counts`` (a Counter of outcomes) against the exact ``law``
    (outcome -> probability), over every outcome either side names."""
    cells = sorted(set(law) | set(counts))
    return chi_square_pvalue([counts.get(c, 0) for c in cells], [law.get(c, 0.0) for c in cells])
