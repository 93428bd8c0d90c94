"""Markdown table of fp32 vs int8 vs int4 bench runs (one bench.json per bundle).

    python tools/research/quant_table.py fp32=OUT1/bench.json int8=OUT2/bench.json int4=OUT3/bench.json

Baseline speedups are over the first run's baseline; staged speedups over each run's own
baseline; agreement and logit error are the oracle's, from its manifest record.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(name: str, data: dict, fp32_base: float, sampling: str) -> str:
    cells = data["summary"][sampling]
    base, staged = cells["baseline"], cells["staged"]
    q = (data.get("quantization") or {}).get("oracle")
    roof = data.get("roofline") or {}
    agree = "-" if q is None else f"{100 * q['agreement']:.1f}%"
    err = "-" if q is None else f"{q['max_rel_error']:.2e}"
    mb = data["weights_bytes"]["oracle"] / 1e6
    return (
        f"| {name} | {mb:.0f} MB | {base['tokens_per_s']:.1f} | {base['tokens_per_s'] / fp32_base:.2f}x | "
        f"{staged['tokens_per_s']:.1f} | {staged['speedup_pooled']:.2f}x | "
        f"{staged['tokens_per_oracle_call']:.2f} | {agree} | {err} | "
        f"{roof.get('limit_tokens_per_s', float('nan')):.1f} ({100 * roof.get('fraction', float('nan')):.0f}%) |"
    )


def main(args: list[str]) -> str:
    runs = [(a.split("=", 1)[0], json.loads(Path(a.split("=", 1)[1]).read_text())) for a in args]
    sampling = "greedy"
    fp32_base = runs[0][1]["summary"][sampling]["baseline"]["tokens_per_s"]
    lines = [
        "| oracle weights | on disk | baseline tok/s | baseline speedup vs fp32 | staged tok/s | "
        "staged speedup vs own baseline (pooled) | tokens / oracle call | greedy agreement vs fp32 | "
        "max logit error | roofline limit tok/s (baseline share) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [row(name, data, fp32_base, sampling) for name, data in runs]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
