"""The sweep's tables and the two bars, from the ``context.json`` files of ``run.sh``.

usage: python summarize.py SWEEP_DIR [LONG_CONTEXT]   (SWEEP_DIR holds NAME-N/context.json)

Per graph (old = exported before in-place attention, new = after) and context: baseline ms per
token, the floor (weights + live KV over the copy bandwidth measured in that run), their ratio;
staged and auto decode speedups over the baseline of the same run; what a speedup is made of:
tokens per oracle call (acceptance: depends on the text) and the cost of a staged oracle call
over a baseline one (depends on the graph and the past), and the speedup staged would have had
at this context with the acceptance it had at the shortest one (cost alone).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(sweep: Path) -> dict:
    cells = {}
    for f in sorted(sweep.glob("*-*/context.json")):
        name, _, n = f.parent.name.rpartition("-")
        r = json.loads(f.read_text())
        for ctx, by_sampling in r["summary"].items():
            cells[(name, int(ctx))] = {"cells": by_sampling["greedy"], "bw": r["floor"]["bandwidth_gb_s"]}
    return cells


def main() -> None:
    sweep = Path(sys.argv[1])
    cells = load(sweep)
    names = sorted({k[0] for k in cells}, key=lambda s: (s != "old", s))
    contexts = sorted({k[1] for k in cells})
    long = int(sys.argv[2]) if len(sys.argv) > 2 else max(contexts)
    short = min(contexts)
    print(
        "| graph | past | bandwidth GB/s | baseline ms/token | floor ms | baseline / floor | staged speedup "
        "| auto speedup | staged tokens/call | staged call ms | staged call / baseline call | staged speedup at "
        f"the acceptance of {short} |"
    )
    print("|" + "---|" * 12)
    for name in names:
        base_tpc = cells.get((name, short), {}).get("cells", {}).get("staged", {}).get("tokens_per_oracle_call")
        for n in contexts:
            if (name, n) not in cells:
                continue
            c, bw = cells[(name, n)]["cells"], cells[(name, n)]["bw"]
            b, s, a = c["baseline"], c.get("staged"), c.get("auto")
            cost = s["oracle_ms_per_call"] / b["oracle_ms_per_call"] if s else float("nan")
            norm = (
                s["decode_speedup_pooled"] * base_tpc / s["tokens_per_oracle_call"] if s and base_tpc else float("nan")
            )
            print(
                f"| {name} | {n} | {bw:.1f} | {b['decode_ms_per_token']:.2f} | {b['floor_ms_per_call']:.2f} | "
                f"{b['decode_token_over_floor']:.2f}x | {s['decode_speedup_pooled']:.2f}x | "
                f"{a['decode_speedup_pooled'] if a else float('nan'):.2f}x | {s['tokens_per_oracle_call']:.2f} | "
                f"{s['oracle_ms_per_call']:.1f} | {cost:.2f} | {norm:.2f}x |"
            )
    print()
    for name in names:
        if (name, long) not in cells or (name, short) not in cells:
            continue
        lo, hi = cells[(name, short)]["cells"], cells[(name, long)]["cells"]
        ratio = hi["baseline"]["decode_token_over_floor"]
        keep = hi["staged"]["decode_speedup_pooled"] / lo["staged"]["decode_speedup_pooled"]
        keep_auto = (
            hi["auto"]["decode_speedup_pooled"] / lo["auto"]["decode_speedup_pooled"] if "auto" in hi else float("nan")
        )
        print(
            f"- {name}: baseline at {long} = {ratio:.2f}x the floor "
            f"(bar 1.25x: {'met' if ratio <= 1.25 else 'MISSED'}); "
            f"staged speedup at {long} = {keep:.2f} of its speedup at {short} (bar >= 0.90: "
            f"{'met' if keep >= 0.9 else 'MISSED'}); auto keeps {keep_auto:.2f}"
        )


if __name__ == "__main__":
    main()
