"""The memory roofline at batch size 1: how close the baseline is to streaming the oracle's
weights once per token at the device's copy bandwidth.

Bandwidth is measured with a large NumPy copy (``np.copyto`` between two arrays much larger
than the last-level cache); each copy moves 2 x size bytes (read + write). The best of a few
repetitions is kept: the figure is what the memory system can do, not an average under load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Roofline:
    bandwidth_gb_s: float  # measured copy bandwidth, 1e9 bytes/s
    copy_mib: int  # size of each array copied
    oracle_weight_bytes: int
    limit_tokens_per_s: float  # bandwidth / oracle weight bytes
    baseline_tokens_per_s: float
    fraction: float  # baseline / limit

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    def line(self) -> str:
        return (
            f"roofline: copy bandwidth {self.bandwidth_gb_s:.1f} GB/s, oracle weights "
            f"{self.oracle_weight_bytes / 1e6:.1f} MB -> bandwidth-bound limit "
            f"{self.limit_tokens_per_s:.0f} tokens/s; baseline {self.baseline_tokens_per_s:.1f} tokens/s "
            f"= {100 * self.fraction:.1f}% of the limit"
        )


def measure_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Copy bandwidth in bytes/s (read + write counted), best of ``repeats``."""
    n = mib * (1 << 20) // 8
    src = np.ones(n, np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch every page before timing
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def tokens_per_s_limit(bandwidth_bytes_s: float, oracle_weight_bytes: int) -> float:
    return bandwidth_bytes_s / oracle_weight_bytes


def roofline(baseline_tokens_per_s: float, oracle_weight_bytes: int, mib: int = 256) -> Roofline:
    bw = measure_bandwidth(mib)
    limit = tokens_per_s_limit(bw, oracle_weight_bytes)
    return Roofline(
        bw / 1e9, mib, int(oracle_weight_bytes), limit, baseline_tokens_per_s, baseline_tokens_per_s / limit
    )
