"""The paper's Figure 1 for this device, from measured data: a roofline of the oracle.

x: arithmetic intensity of one oracle call, FLOPs per weight byte = 2 x params x T / weight
bytes for T tree tokens scored in the call (2 FLOPs per parameter per token; attention over
the past is left out, it is small at these lengths). y: FLOP/s the call attains,
2 x params x T / latency(T). Roofs: the measured copy bandwidth x intensity (memory bound) and
the measured peak FLOP/s of an fp32 matrix product on the same threads (compute bound).

Measured here, by ``stagedx bench``: the oracle's latency curve (``costs.latency_curve``: T
new tokens after a committed past) and both roofs. Operating points: every method of a bench
run at its mean tree tokens per oracle call and the FLOP/s its oracle calls attained inside
the decode loop (oracle time / calls from the run's statistics). A pair whose baseline sits
on the bandwidth roof and whose curve stays flat for a dozen tokens (a large oracle) gains
from big trees; one whose curve bends early (a small oracle, overhead- and compute-bound)
does not: the figure shows which regime a pair is in.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..files import write_atomic
from .costs import ORACLE_SIZES

METHOD_MARKERS = {"baseline": "o", "speculative": "s", "staged": "*", "staged3": "^"}
PAIR_COLOURS = ("tab:blue", "tab:red", "tab:green", "tab:purple")


def measure_peak_flops(n: int = 1536, repeats: int = 5) -> float:
    """FLOP/s of an fp32 ``n x n`` matrix product (NumPy's BLAS), best of ``repeats``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty_like(a)
    np.matmul(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def measure_cost_curve(gen, past_len: int = 200, repeats: int = 5, sizes: Sequence[int] = ORACLE_SIZES) -> dict:
    """The oracle's call latency against T (median seconds), with what the figure needs."""
    from .costs import latency_curve

    rng = np.random.default_rng(0)
    past = min(past_len, max(1, gen.context_limit - max(sizes) - 1))
    context = rng.integers(0, gen.vocab, past).astype(np.int64)
    curve = latency_curve(gen.oracle, sizes, context, repeats)
    return {
        "past_len": int(past),
        "oracle_params": int(gen.manifest.oracle.n_params),
        "oracle_weight_bytes": int(gen.oracle_weight_bytes),
        "latency_s": {str(t): s for t, s in curve.items()},
        "peak_flops": measure_peak_flops(),
    }


def _flops_per_token(curve: dict) -> float:
    return 2.0 * curve["oracle_params"]


def curve_points(curve: dict) -> tuple[np.ndarray, np.ndarray]:
    """(intensity FLOPs/byte, attained FLOP/s) for every measured T."""
    ts = np.asarray(sorted(int(t) for t in curve["latency_s"]), float)
    lat = np.asarray([curve["latency_s"][str(int(t))] for t in ts])
    flops = _flops_per_token(curve) * ts
    return flops / curve["oracle_weight_bytes"], flops / lat


def operating_points(result: dict) -> list[dict]:
    """One point per (sampling, method) of a bench result: intensity, FLOP/s, tokens/s."""
    curve, out = result["cost_curve"], []
    for sampling, cells in result["summary"].items():
        for method, c in cells.items():
            t, s = c.get("tree_tokens_per_oracle_call"), c.get("oracle_s_per_call")
            if t is None or s is None or not (t == t and s == s) or s <= 0:
                continue
            flops = _flops_per_token(curve) * t
            out.append(
                {
                    "sampling": sampling,
                    "method": method,
                    "tree_tokens": t,
                    "intensity": flops / curve["oracle_weight_bytes"],
                    "flops_per_s": flops / s,
                    "decode_tokens_per_s": c.get("decode_tokens_per_s"),
                }
            )
    return out


def pair_label(result: dict) -> str:
    curve = result["cost_curve"]
    name = Path(str(result["config"]["bundle"]).rstrip("/")).name
    return f"{name} ({curve['oracle_params'] / 1e6:.0f}M oracle)"


def write_figure1(path: Path, results: Sequence[dict], title: str = "") -> Path | None:
    """Draw the roofline of every result (bench.json dicts with a ``cost_curve``) on one set
    of axes; roofs from the first result. Returns None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    results = [r for r in results if r.get("cost_curve")]
    if not results:
        return None
    first = results[0]
    bw = first["roofline"]["bandwidth_gb_s"] * 1e9 if first.get("roofline") else None
    peak = first["cost_curve"]["peak_flops"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs_all = np.concatenate([curve_points(r["cost_curve"])[0] for r in results])
    x = np.geomspace(xs_all.min() / 2, xs_all.max() * 4, 200)
    if bw:
        ax.plot(
            x,
            np.minimum(bw * x, peak),
            color="black",
            lw=1.5,
            label=f"roofs: {bw / 1e9:.1f} GB/s copy, {peak / 1e9:.0f} GFLOP/s fp32 GEMM",
        )
    else:
        ax.axhline(peak, color="black", lw=1.5, label=f"compute roof {peak / 1e9:.0f} GFLOP/s")
    for i, res in enumerate(results):
        colour = PAIR_COLOURS[i % len(PAIR_COLOURS)]
        cx, cy = curve_points(res["cost_curve"])
        ts = sorted(int(t) for t in res["cost_curve"]["latency_s"])
        ax.plot(cx, cy, "-", color=colour, lw=1, alpha=0.7, label=f"{pair_label(res)}: oracle call, T=1..{ts[-1]}")
        for t, px, py in zip(ts, cx, cy):
            if t in (1, 8, 16, 64):
                ax.annotate(
                    f"T={t}",
                    (px, py),
                    textcoords="offset points",
                    xytext=(0, -11),
                    fontsize=7,
                    color=colour,
                    ha="center",
                )
        for p in operating_points(res):
            filled = p["sampling"] == "greedy"
            ax.plot(
                p["intensity"],
                p["flops_per_s"],
                METHOD_MARKERS.get(p["method"], "x"),
                ms=8 if filled else 7,
                color=colour,
                mfc=colour if filled else "none",
                mew=1.2,
            )
            if p["decode_tokens_per_s"]:
                ax.annotate(
                    f"{p['decode_tokens_per_s']:.3g}",
                    (p["intensity"], p["flops_per_s"]),
                    textcoords="offset points",
                    xytext=(5, 3),
                    fontsize=7,
                    color=colour,
                )
    for method, marker in METHOD_MARKERS.items():
        ax.plot([], [], marker, color="gray", label=method)
    ax.plot([], [], "o", color="gray", mfc="none", label="hollow: top-k 50; filled: greedy")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity of an oracle call (FLOPs per weight byte; fp32: T/2 for T tree tokens)")
    ax.set_ylabel("oracle FLOP/s attained")
    ax.set_title(title or "Figure 1 on this device: oracle roofline (labels: decode tokens/s)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, buf.getvalue())
    return Path(path)
