"""The cost side of ``stagedx tune`` (and of ``bench``'s Figure 1): measured latency curves of
a runner against its call size, their interpolation, the in-loop factors that correct them,
and the price of a decode's calls on them (``predict_tokens_per_s``). Pure NumPy around the
runner interface; the search itself lives in ``tune.py``."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

# Every size up to 16 is measured: on a CPU the curve is a staircase, not a line (ONNX Runtime's
# GEMM kernels work on blocks of rows: on the GPT-2-L-cost oracle, 2 threads, T=7 costs 11%
# more than T=6 while T=12 costs what T=8 does), and interpolating across a step misprices trees.
ORACLE_SIZES = tuple(range(1, 17)) + (20, 24, 32, 48, 64)
DRAFT_SIZES = tuple(range(1, 9)) + (12, 16, 24, 32, 48, 64)


# -- latency curves --------------------------------------------------------------------------
def latency_curve(runner, sizes: Sequence[int], context: np.ndarray, repeats: int) -> dict:
    """Median seconds of ``runner.run`` for T new tokens after ``len(context)`` committed ones."""
    from ..runtime.runner import chain_mask

    runner.truncate(0)
    p = len(context)
    runner.run(context, np.arange(p), chain_mask(p))
    runner.commit(np.arange(p))
    rng = np.random.default_rng(0)
    vocab = runner.entry.arch.vocab_size
    curve = {}
    for t in sizes:
        if p + t > getattr(runner, "max_context", p + t):
            break
        tokens = rng.integers(0, vocab, t).astype(np.int64)
        pos, mask = p + np.arange(t), chain_mask(t)
        runner.run(tokens, pos, mask)  # warm this shape
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            runner.run(tokens, pos, mask)
            times.append(time.perf_counter() - t0)
        curve[int(t)] = float(np.median(times))
    runner.truncate(0)
    return curve


def interp(curve: dict, t: float) -> float:
    xs = sorted(curve)
    return float(np.interp(t, xs, [curve[x] for x in xs]))


# -- cost model ------------------------------------------------------------------------------
def draft_batch_size(tree: dict) -> float:
    """Nodes per draft call: the chain end plus draft2's candidates, capped by the batch."""
    depth = int(tree["max_depth"])
    return float(min(int(tree["draft_batch"]), 1 + sum(tree["fanouts"][:depth])))


def predict_tokens_per_s(
    ev_counts: dict, tree: dict, oracle_curve: dict, draft_curve: dict, factors: dict | None = None
) -> float:
    """ev_counts: new_tokens, rounds, draft_calls, overhead_s (sums over calibration runs) and,
    when the decode loop counted them, call_sizes ``{"oracle": {T: calls}, "draft": {B: calls}}``:
    then every call is priced at its own size, times the in-loop ``factors``."""
    sizes = ev_counts.get("call_sizes")
    if sizes:
        f = {"oracle": 1.0, "draft": 1.0, **(factors or {})}
        total = ev_counts["overhead_s"] + sum(
            f[m] * n * interp(curve, int(t))
            for m, curve in (("oracle", oracle_curve), ("draft", draft_curve))
            for t, n in sizes.get(m, {}).items()
        )
        return ev_counts["new_tokens"] / total if total > 0 else 0.0
    rounds = max(1, ev_counts["rounds"])
    round_s = (
        ev_counts["draft_calls"] / rounds * interp(draft_curve, draft_batch_size(tree))
        + interp(oracle_curve, int(tree["budget"]) + 1)
        + ev_counts["overhead_s"] / rounds
    )
    return (ev_counts["new_tokens"] / rounds) / round_s


def stored_curves(entry, key: str) -> tuple:
    """(curves, factors, past_len) a previous ``tune`` stored for this device (a TuningEntry)."""
    from ..errors import StagedxError

    if not entry.oracle_latency_s or not entry.draft_latency_s:
        raise StagedxError(f"--reuse-curves: the bundle has no curves stored under {key!r}; run tune without it first")
    curves = tuple({int(t): float(v) for t, v in c.items()} for c in (entry.oracle_latency_s, entry.draft_latency_s))
    factors = entry.in_loop_factors or {"oracle": 1.0, "draft": 1.0}
    return curves, factors, int(entry.past_len or 0)


def in_loop_factors(gen, prompt, curves: tuple, new_tokens: int = 24) -> dict:
    """Phase time inside the decode loop over the isolated curves' price of the same calls, for
    the oracle and the draft, from one short greedy run of a tree that uses both models."""
    from ..runtime.shapes import TreeConfig

    res = gen.generate(
        prompt.text,
        max_new_tokens=new_tokens,
        strategy="staged",
        ignore_eos=True,
        truncate=True,
        tree=TreeConfig(budget=11, max_depth=8, fanouts=(2, 1, 1, 1), draft_calls=3),
    )
    s = res.stats.as_dict()
    out = {}
    for model, curve in zip(("oracle", "draft"), curves):
        priced = sum(n * interp(curve, int(t)) for t, n in s["call_sizes"][model].items())
        ratio = s["time_s"][model] / priced if priced > 0 else 1.0
        out[model] = float(min(3.0, max(0.5, ratio)))  # a guard against one disturbed run
    return out
