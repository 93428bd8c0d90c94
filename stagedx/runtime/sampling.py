"""Sampling configuration and the warping that turns logits into the distribution we draw from.

The oracle samples from ``warp(logits)``; the staged tree is ranked with the same warping
(or, for greedy decoding, with a softmax at temperature ``tau``), so the tree is built from
the distribution the verifier will draw from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import StagedxError

MODES = ("greedy", "sample")


@dataclass(frozen=True)
class SamplingConfig:
    mode: str = "greedy"  # "greedy" | "sample"
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    top_p: float = 1.0  # 1.0 = no nucleus cut

    def __post_init__(self) -> None:
        """Refuse what cannot be sampled from, however the config was built (parser or API)."""
        if self.mode not in MODES:
            raise StagedxError(f"sampling mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not _is_real(self.temperature) or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise StagedxError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise StagedxError(f"top_k must be an integer >= 0 (0 = no top-k cut), got {self.top_k!r}")
        if not _is_real(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise StagedxError(f"top_p must be a number in (0, 1] (1 = no nucleus cut), got {self.top_p!r}")

    @property
    def greedy(self) -> bool:
        return self.mode == "greedy"

    @staticmethod
    def parse(spec: str = "greedy", temperature: float = 1.0) -> SamplingConfig:
        """``greedy`` | ``sample`` | ``topk:50`` | ``topp:0.9`` (with ``temperature``)."""
        spec = (spec or "greedy").strip().lower()
        if not _is_real(temperature) or not math.isfinite(temperature) or temperature <= 0:
            raise StagedxError(f"--temperature must be a finite number > 0, got {temperature!r}")
        try:
            if spec == "greedy":
                return SamplingConfig()
            if spec in ("sample", "random"):
                return SamplingConfig("sample", temperature)
            kind, _, value = spec.partition(":")
            if kind == "topk" and int(value) > 0:
                return SamplingConfig("sample", temperature, top_k=int(value))
            if kind == "topp" and math.isfinite(float(value)) and 0.0 < float(value) <= 1.0:
                return SamplingConfig("sample", temperature, top_p=float(value))
        except ValueError:
            pass
        raise StagedxError(f"unknown sampling {spec!r}: use greedy, sample, topk:K (K > 0) or topp:P (0 < P <= 1)")

    @property
    def label(self) -> str:
        if self.greedy:
            return "greedy"
        cut = f"topk:{self.top_k}" if self.top_k else (f"topp:{self.top_p:g}" if self.top_p < 1 else "sample")
        return cut if self.temperature == 1.0 else f"{cut},T={self.temperature:g}"


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def warp(logits: np.ndarray, cfg: SamplingConfig) -> np.ndarray:
    """Distribution to sample from: temperature, then top-k, then top-p. ``logits [..., V]``.

    Greedy is the one-hot of the argmax. Returns float64 probabilities summing to 1.
    """
    x = np.asarray(logits, dtype=np.float64)
    if cfg.greedy:
        out = np.zeros_like(x)
        np.put_along_axis(out, np.argmax(x, axis=-1)[..., None], 1.0, axis=-1)
        return out
    x = x / cfg.temperature
    v = x.shape[-1]
    if 0 < cfg.top_k < v:
        kth = -np.partition(-x, cfg.top_k - 1, axis=-1)[..., cfg.top_k - 1 : cfg.top_k]  # [..., 1]
        x = np.where(x < kth, -np.inf, x)
    probs = softmax(x)
    if cfg.top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass strictly above each token
        keep_sorted = before < cfg.top_p  # the smallest prefix reaching top_p
        keep = np.empty_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def rank_logprobs(topk_values: np.ndarray, cfg: SamplingConfig, tau: float) -> np.ndarray:
    """Log-probabilities used to RANK tree candidates from a model's top-K logits ``[..., K]``.

    Greedy: log-softmax at temperature ``tau`` (the paper's 0.1), otherwise a one-hot warp would
    collapse the tree into a chain. Sampling: the same warping the oracle samples with. The
    normalisation is over the K entries the graph returns; ranking needs no more, and the
    verification rule is exact whatever the ranking.
    """
    if cfg.greedy:
        return log_softmax(np.asarray(topk_values, dtype=np.float64) / tau)
    with np.errstate(divide="ignore"):
        return np.log(warp(topk_values, cfg))


def sample(probs: np.ndarray, rng: np.random.Generator) -> int:
    """One draw from ``probs [V]`` by inverting the CDF with a single uniform."""
    cdf = np.cumsum(probs)
    u = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), len(probs) - 1))
