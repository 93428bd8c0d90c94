"""Benchmark output: a table laid out like the paper's, a JSON file with every raw figure, and
a PNG in the style of the paper's Figure 2."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from ..files import write_atomic
from .bench import STAGEDX_METHODS

PAPER = {
    "note": "Spector & Re 2023, GPT-2-L (762M) oracle, 40M draft, RTX 4090, HumanEval",
    "relative_traffic": {
        "greedy": {"baseline": 1.0, "speculative": 0.31, "staged": 0.23},
        "topk:50": {"baseline": 1.0, "speculative": 0.48, "staged": 0.35},
    },
    "staged_speedup": {"greedy": 3.16, "topk:50": 1.98},
}
METHOD_ORDER = STAGEDX_METHODS


def sampling_label(spec: str) -> str:
    if spec.startswith("topk:"):
        return f"top-k (k={spec.split(':')[1]}, T=1)"
    if spec.startswith("topp:"):
        return f"top-p (p={spec.split(':')[1]}, T=1)"
    return spec


def _f(x, fmt: str = "{:.2f}") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else fmt.format(x)


def _ordered(methods) -> list:
    return sorted(methods, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))


def main_table(summary: dict) -> str:
    head = (
        "sampling",
        "method",
        "tokens/s",
        "decode tok/s",
        "ms/tok mean",
        "p50",
        "p90",
        "speedup",
        "tok/oracle call",
        "rel. traffic",
    )
    rows = [head]
    for sampling, cells in summary.items():
        for i, method in enumerate(_ordered(cells)):
            c = cells[method]
            lat = c["latency_ms_per_token"]
            rows.append(
                (
                    sampling_label(sampling) if i == 0 else "",
                    method,
                    _f(c["tokens_per_s"], "{:.1f}"),
                    _f(c.get("decode_tokens_per_s"), "{:.1f}"),
                    _f(lat["mean"]),
                    _f(lat["p50"]),
                    _f(lat["p90"]),
                    _f(c.get("speedup_mean"), "{:.2f}x"),
                    _f(c["tokens_per_oracle_call"]),
                    _f(c["relative_traffic"]),
                )
            )
    widths = [max(len(r[j]) for r in rows) for j in range(len(head))]
    lines = [
        "  ".join(cell.ljust(w) if j < 2 else cell.rjust(w) for j, (cell, w) in enumerate(zip(r, widths))) for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def paper_table(summary: dict) -> str:
    """The paper's own layout: relative memory traffic per method, then the staged speedup,
    with the paper's figures beside ours."""
    lines = ["relative oracle memory traffic (ours | paper)   " + "".join(m.ljust(14) for m in METHOD_ORDER).rstrip()]
    for sampling, cells in summary.items():
        paper = PAPER["relative_traffic"].get(sampling, {})
        vals = [f"{_f(cells.get(m, {}).get('relative_traffic'))} | {_f(paper.get(m))}".ljust(14) for m in METHOD_ORDER]
        lines.append(f"  {sampling_label(sampling):<45} " + "".join(vals))
    for sampling, cells in summary.items():
        sp = cells.get("speculative", {})
        for name in ("staged", "staged3", "auto"):
            st = cells.get(name, {})
            if not st:
                continue
            over_spec = st["tokens_per_s"] / sp["tokens_per_s"] if sp and sp["tokens_per_s"] else None
            lines.append(
                f"{name} speedup, {sampling_label(sampling)}: "
                f"{_f(st.get('speedup_mean'), '{:.2f}x')} mean over prompts "
                f"(pooled {_f(st.get('speedup_pooled'), '{:.2f}x')}; {_f(over_spec, '{:.2f}x')} over speculative)"
                f"  | paper {_f(PAPER['staged_speedup'].get(sampling), '{:.2f}x')}"
            )
    return "\n".join(lines)


def acceptance_lines(summary: dict) -> str:
    lines = []
    for sampling, cells in summary.items():
        for method in _ordered(cells):
            if method == "baseline":
                continue
            c = cells[method]
            stage = ", ".join(f"{k} {v:.2f}" for k, v in c["acceptance_by_stage"]["fraction"].items())
            depth = " ".join(f"{x:.2f}" for x in c["acceptance_by_depth"]["per_oracle_call"])
            lines.append(
                f"{sampling_label(sampling)} {method}: tokens by stage [{stage}]; "
                f"accepted per call by depth 1.. [{depth}]"
            )
    return "\n".join(lines)


def planner_lines(summary: dict) -> str:
    """Strategy auto: the shapes its planner chose (share of rounds) and its own cost."""
    lines = []
    for sampling, cells in summary.items():
        p = cells.get("auto", {}).get("planner")
        if not p or not p["rounds"]:
            continue
        top = list(p["choice_share"].items())
        shown = ", ".join(f"{k} {100 * v:.0f}%" for k, v in top[:6]) + (", ..." if len(top) > 6 else "")
        stages = ", ".join(f"{k} {100 * v:.0f}%" for k, v in p["stage_share"].items())
        lines.append(
            f"{sampling_label(sampling)} auto planner: {shown}; stages on (share of rounds) {stages}; "
            f"{p['overhead_ms_per_round']:.3f} ms/round planning"
        )
    return "\n".join(lines)


def peers_lines(peers: dict) -> str:
    """Each peer per sampling mode, with the ratios a reader compares: stagedx's baseline and
    staged decode tokens/s over the peer's (prefill excluded where the peer reports it)."""
    if not peers:
        return ""
    lines = ["peers (same prompts as token ids, same threads, same new-token count):"]
    for sampling, cells in (peers.get("cells") or {"greedy": peers.get("methods", {})}).items():
        for name, p in cells.items():
            dec = p.get("decode_tokens_per_s")
            calls = p.get("tokens_per_oracle_call")
            base = p.get("decode_ratio_to_stagedx_baseline", p["ratio_to_stagedx_baseline"])
            staged = p.get("decode_ratio_to_stagedx_staged", p["ratio_to_stagedx_staged"])
            lines.append(
                f"  {sampling_label(sampling):<18} {name:<18} {_f(p['tokens_per_s'], '{:.1f}')} tokens/s, "
                f"decode {_f(dec, '{:.1f}')} tok/s"
                + (f", {_f(calls)} tok/call" if calls is not None else "")
                + f"   stagedx baseline {_over(base)}, staged {_over(staged)} of it"
            )
    for fam, info in (peers.get("families") or {}).items():
        if "skipped" in info:
            lines.append(f"  {info['skipped']}")
        elif fam == "llama.cpp":
            lines.append(f"  llama.cpp: {info.get('gguf')} (llama-cpp-python {info.get('llama_cpp_python')})")
    if peers.get("sanity"):
        lines.append(peers["sanity"])
    return "\n".join(lines)


def _over(peer_over_ours) -> str:
    """A peer's speed over ours, printed the other way round: our speed as a multiple of the peer's."""
    if not isinstance(peer_over_ours, (int, float)) or not math.isfinite(peer_over_ours) or peer_over_ours <= 0:
        return "-"
    return f"{1.0 / peer_over_ours:.2f}x"


def render(result: dict) -> str:
    env, cfg = result["environment"], result["config"]
    parts = [
        f"stagedx bench: {cfg['n_prompts']} prompts ({cfg['prompts']}), {cfg['repeats']} repeat(s), "
        f"{cfg['max_new_tokens']} new tokens (EOS ignored), device {env['device']} ({env['backend']}, "
        f"{env['threads']} threads)",
        main_table(result["summary"]),
        "",
        paper_table(result["summary"]),
        "",
        acceptance_lines(result["summary"]),
    ]
    if planner_lines(result["summary"]):
        parts += ["", planner_lines(result["summary"])]
    if any((result.get("quantization") or {}).values()):
        parts += ["", _quant_line(result["quantization"], result.get("weights_bytes", {}))]
    if result.get("roofline"):
        parts += ["", _roofline_line(result["roofline"])]
    if result.get("cost_curve"):
        parts += [cost_curve_line(result["cost_curve"])]
    if result.get("peers"):
        parts += ["", peers_lines(result["peers"])]
    return "\n".join(parts)


def cost_curve_line(curve: dict) -> str:
    """The oracle's call latency against tree tokens T, relative to T=1."""
    lat = {int(t): v for t, v in curve["latency_s"].items()}
    one = lat[min(lat)]
    steps = ", ".join(f"T={t} {v / one:.2f}x" for t, v in sorted(lat.items()) if t > min(lat))
    return (
        f"oracle cost curve (past {curve['past_len']}): T={min(lat)} {1e3 * one:.2f} ms; {steps}; "
        f"peak fp32 GEMM {curve['peak_flops'] / 1e9:.0f} GFLOP/s"
    )


def _quant_line(quant: dict, weights: dict) -> str:
    """Which weights were quantized and how close each model stayed to its fp32 graph."""
    cells = []
    for role, q in quant.items():
        size = f"{weights[role] / 1e6:.1f} MB" if role in weights else "?"
        if q is None:
            cells.append(f"{role} unquantized ({size})")
            continue
        cells.append(
            f"{role} int{q['bits']} {q['method']} block {q['block_size']} ({size}, fp32 "
            f"{q['fp32_weight_bytes'] / 1e6:.1f} MB; greedy agreement {100 * q['agreement']:.1f}%, "
            f"max logit error {q['max_rel_error']:.2e})"
        )
    return "weights: " + "; ".join(cells)


def _roofline_line(r: dict) -> str:
    from .roofline import Roofline

    return Roofline(**r).line()


def clean(obj):
    """JSON-safe copy: NaN / inf become null, tuples lists, keys strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def write_json(path: Path, result: dict) -> Path:
    path = Path(path)
    return write_atomic(path, json.dumps(clean(result), indent=1, allow_nan=False) + "\n")


def write_png(path: Path, summary: dict, title: str = "") -> Path | None:
    """Figure 2 style: per-prompt speed relative to baseline, prompts sorted by the staged
    speedup, one panel per sampling mode side by side. Returns None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return None
    panels = [
        s for s, cells in summary.items() if any("speedup_per_prompt" in c for m, c in cells.items() if m != "baseline")
    ]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, sampling in zip(axes[0], panels):
        cells = summary[sampling]
        key = "staged" if "staged" in cells else next(m for m in _ordered(cells) if m != "baseline")
        order = sorted(cells[key]["speedup_per_prompt"], key=lambda p: cells[key]["speedup_per_prompt"][p])
        x = range(len(order))
        for method, style in (("speculative", "s-"), ("staged", "o-"), ("staged3", "^-")):
            if method in cells:
                sp = cells[method]["speedup_per_prompt"]
                ax.plot(x, [sp.get(p, float("nan")) for p in order], style, ms=3, label=method)
        ax.axhline(1.0, color="gray", lw=1, ls="--", label="baseline")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(sampling_label(sampling))
        ax.set_xlabel(f"prompt (sorted by {key} speedup)")
        ax.set_ylabel("relative speed (tokens/s over baseline)")
        ax.legend()
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    write_atomic(path, buf.getvalue())
    plt.close(fig)
    return Path(path)
