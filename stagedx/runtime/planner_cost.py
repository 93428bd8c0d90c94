"""The planner's cost model: seconds of one round's oracle work as a function of its tree tokens
(per band of past length; the oracle call plus what scales with it: fetching its outputs,
verification, the planner), and seconds of one draft call as a function of its batch.

Seeded from the manifest's tuned latency curves when the bundle has an entry for this device,
else from a built-in shape (a call's cost grows slowly with its tokens; a draft call costs a
share of an oracle call set by the weight sizes). Then refined from the calls the decode makes
anyway: no calibration pass. Every prediction is monotone in the tree size (the running maximum
of the measured points, see ``_fit``), so the CPU's staircase (T=7 dearer than T=6) is priced
about as measured and never "learned" backwards.
Pure NumPy over a few dozen entries: a prediction is a handful of vector operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_TOKENS = 64  # largest oracle tree / draft batch priced individually (beyond: the last entry)
PAST_BAND = 512  # oracle costs are kept per band of past length (long pasts make trees dearer)
MAX_BANDS = 16
CALL_OVERHEAD_BYTES = 20e6  # one model call's fixed cost (ONNX Runtime, 2-core CPU), in bytes streamed
DECAY = 0.9  # weight of the old mean when a point is measured again (tracks drift, damps noise)
FAST_DOWN = 0.5  # ... when it is measured faster: CPU noise only ever slows a call (a first
# call of a new shape, another process), so a slow outlier is forgotten in a few calls
CATCH_UP = 32  # a draft call over more rows is a catch-up (the prompt, rows after rounds
# without the draft): a one-time cost, not what a round's call costs, so not learned from


@dataclass(frozen=True)
class CostPrior:
    """Relative costs before anything is measured: ``oracle[T]`` and ``draft[B]`` (index 0
    unused) in seconds when tuned curves exist, else in units of one 1-token oracle call."""

    oracle: np.ndarray  # [MAX_TOKENS + 1]
    draft: np.ndarray  # [MAX_TOKENS + 1]
    tuned: bool = False


def _curve(points: dict | None, slope: float, scale: float) -> np.ndarray:
    """A monotone curve over 0..MAX_TOKENS from ``{str(size): seconds}`` (interpolated, flat
    beyond the last point), else ``scale * (1 + slope * (size - 1))``."""
    sizes = np.arange(MAX_TOKENS + 1, dtype=np.float64)
    if points:
        xs = np.asarray(sorted(int(k) for k in points), np.float64)
        ys = np.asarray([float(points[str(int(x))]) for x in xs])
        out = np.interp(sizes, xs, ys)
    else:
        out = scale * (1.0 + slope * (sizes - 1.0))
    return np.maximum.accumulate(np.maximum(out, 1e-9))


def prior_from(entry, oracle_bytes: int, draft_bytes: int) -> CostPrior:
    """The tuned entry's curves (times its in-loop factors), else the built-in shape."""
    oc = getattr(entry, "oracle_latency_s", None)
    dc = getattr(entry, "draft_latency_s", None)
    if oc and dc:
        try:
            f = getattr(entry, "in_loop_factors", None) or {}
            o = _curve(oc, 0.0, 1.0) * float(f.get("oracle", 1.0))
            d = _curve(dc, 0.0, 1.0) * float(f.get("draft", 1.0))
            return CostPrior(o, d, tuned=True)
        except (TypeError, ValueError):
            pass  # a malformed curve: fall back to the built-in prior
    # a call streams its weights plus a fixed per-call overhead worth ~CALL_OVERHEAD_BYTES: a
    # draft call then costs ~0.4 of an oracle call for the vendored pair (10.6 / 56.7 MB) on a
    # 2-core CPU, ~0.06 at GPT-2-L cost (170 / 3116 MB), as measured there
    draft_rel = min(1.0, (draft_bytes + CALL_OVERHEAD_BYTES) / (oracle_bytes + CALL_OVERHEAD_BYTES))
    return CostPrior(_curve(None, 0.04, 1.0), _curve(None, 0.03, draft_rel))


def _update(mean: float, x: float) -> float:
    """A running mean that follows a faster measurement quickly (``FAST_DOWN``) and a slower
    one slowly (``DECAY``)."""
    w = FAST_DOWN if x < mean else DECAY
    return w * mean + (1 - w) * x


class CostModel:
    """Live costs (seconds). Lives as long as its Generator, so what one request measured
    prices the next."""

    def __init__(self, prior: CostPrior):
        self.prior = prior
        n = MAX_TOKENS + 1
        self.oracle_mean = np.zeros((MAX_BANDS, n))
        self.oracle_seen = np.zeros((MAX_BANDS, n), bool)
        self.bands_seen: list = []  # bands with a measurement, in the order first seen
        self.draft_scale = 1.0  # measured draft time / prior draft time
        self.draft_seen = False
        self._cache: dict = {}

    # -- observations ----------------------------------------------------------------------
    def observe_oracle(self, tokens: int, past: int, seconds: float) -> None:
        b, t = self.band(past), min(int(tokens), MAX_TOKENS)
        m = self.oracle_mean[b]
        m[t] = _update(m[t], seconds) if self.oracle_seen[b, t] else seconds
        self.oracle_seen[b, t] = True
        if b not in self.bands_seen:
            self.bands_seen.append(b)
        self._cache.pop(b, None)

    def observe_draft(self, sizes, seconds: float) -> None:
        """One proposal's draft calls (``DraftCost.sizes``) and their total time."""
        if not len(sizes) or seconds <= 0 or max(sizes) > CATCH_UP:
            return
        ratio = seconds / float(self.prior.draft[np.minimum(np.asarray(sizes), MAX_TOKENS)].sum())
        self.draft_scale = _update(self.draft_scale, ratio) if self.draft_seen else ratio
        self.draft_seen = True

    def measured(self, past: int) -> np.ndarray:
        """[MAX_TOKENS + 1] bool: the oracle call sizes timed at least once at this past."""
        return self.oracle_seen[self.band(past)]

    # -- predictions -----------------------------------------------------------------------
    @staticmethod
    def band(past: int) -> int:
        return min(int(past) // PAST_BAND, MAX_BANDS - 1)

    def oracle_curve(self, past: int) -> np.ndarray:
        """Predicted seconds of one oracle call of T tokens, ``[MAX_TOKENS + 1]``, monotone in T,
        for a past of ``past`` tokens, from this band's measurements (``_fit``); a band with
        none borrows the nearest measured band's curve."""
        b = self.band(past)
        if not self.bands_seen:
            return self.prior.oracle  # tuned: seconds; else relative units until a call is timed
        if b not in self.bands_seen:
            b = min(self.bands_seen, key=lambda x: (abs(x - b), x))
        if b not in self._cache:
            self._cache[b] = self._fit(self.oracle_seen[b], self.oracle_mean[b])
        return self._cache[b]

    def _fit(self, seen: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """Measured points, linear between them, the prior's shape beyond them (anchored at
        the nearest measured point); then made monotone robustly: the mean of the running
        maximum from the left and the running minimum from the right, so one slow outlier at a
        small T does not lift every larger T (nor a fast one lower every smaller T)."""
        ts = np.flatnonzero(seen[1:]) + 1
        sizes = np.arange(MAX_TOKENS + 1)
        prior = self.prior.oracle
        out = np.interp(sizes, ts, mean[ts])
        out = np.where(sizes < ts[0], mean[ts[0]] * prior / prior[ts[0]], out)
        out = np.where(sizes > ts[-1], mean[ts[-1]] * prior / prior[ts[-1]], out)
        out[0] = out[1]
        return 0.5 * (np.maximum.accumulate(out) + np.minimum.accumulate(out[::-1])[::-1])

    def draft_seconds(self, sizes: np.ndarray) -> np.ndarray:
        """Predicted seconds of draft calls of these batch sizes."""
        scale = self.draft_scale
        if not self.draft_seen and not self.prior.tuned and self.bands_seen:
            # untuned and the draft never timed: its prior is relative to a 1-token oracle call
            scale = float(self.oracle_curve(0)[1])
        return self.prior.draft[np.minimum(np.asarray(sizes), MAX_TOKENS)] * scale
