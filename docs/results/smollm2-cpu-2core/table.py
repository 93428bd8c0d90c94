"""The SmolLM2 bench table (markdown) from the bench.json files under this folder.

usage: python docs/results/smollm2-cpu-2core/table.py   (prints the two tables of README.md)

Table 1, per bundle x prompt set x sampling: decode tokens/s of each method, with tokens per
oracle call and the speedup over baseline (mean over prompts, as bench.txt's speedup column).
Table 2, why a method wins or loses: the draft's accepted tokens per speculative call, the
draft's and the oracle's milliseconds per call and the draft's share of speculative's decode
time; staged's tree tokens per oracle call and what such a call costs against a 1-token one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUNDLES = ("fp32", "gguf4")
ORDER = ("humaneval-greedy", "humaneval-topk50", "chat-greedy", "chat-topk50")


def _cells():
    for bundle in BUNDLES:
        for name in ORDER:
            f = HERE / bundle / name / "bench.json"
            if f.is_file():
                d = json.loads(f.read_text())
                (sampling,) = d["summary"]
                yield bundle, name, sampling, d


def _sum(records, method, sampling, key):
    rs = [r for r in records if r["method"] == method and r["sampling"] == sampling]
    return sum(r["time_s"][key] if key in r["time_s"] else r[key] for r in rs)


def main_table(methods: tuple) -> list[str]:
    head = "| oracle | prompts | sampling | " + " | ".join(methods) + " | load (1-min avg, start) |"
    lines = [head, "|" + "---|" * (4 + len(methods))]
    for bundle, name, sampling, d in _cells():
        s = d["summary"][sampling]
        row = [bundle, name.split("-")[0], sampling]
        for m in methods:
            c = s.get(m)
            if c is None:
                row.append("-")
                continue
            speed = "1.00x" if m == "baseline" else f"{c['speedup_mean']:.2f}x"
            row.append(f"{c['decode_tokens_per_s']:.1f} ({c['tokens_per_oracle_call']:.2f} tok/call, {speed})")
        row.append(f"{d['environment']['load_average']['before']:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def why_table() -> list[str]:
    lines = [
        "| oracle | prompts | sampling | draft tokens accepted / spec. call | draft ms / call | oracle ms / call"
        " (1 token) | draft share of spec. time | staged tree tokens / call | staged oracle call / 1-token call |",
        "|" + "---|" * 9,
    ]
    for bundle, name, sampling, d in _cells():
        s, recs = d["summary"][sampling], d["records"]
        base, spec, staged = s["baseline"], s.get("speculative"), s.get("staged")
        row = [bundle, name.split("-")[0], sampling]
        if spec is not None:
            draft_s = _sum(recs, "speculative", sampling, "draft")
            oracle_s = _sum(recs, "speculative", sampling, "oracle")
            accepted = spec["acceptance_by_stage"]["count"]["draft"] / spec["oracle_calls"]
            row += [
                f"{accepted:.3f}",
                f"{1e3 * draft_s / max(1, spec['draft_calls']):.1f}",
                f"{1e3 * base['oracle_s_per_call']:.1f}",
                f"{draft_s / (draft_s + oracle_s):.0%}",
            ]
        else:
            row += ["-"] * 4
        if staged is not None:
            row += [
                f"{staged['tree_tokens_per_oracle_call']:.1f}",
                f"{staged['oracle_s_per_call'] / base['oracle_s_per_call']:.2f}x",
            ]
        else:
            row += ["-"] * 2
        lines.append("| " + " | ".join(row) + " |")
    return lines


def main() -> int:
    methods = ("baseline", "speculative", "staged")
    if any("auto" in d["summary"][s] for _, _, s, d in _cells()):
        methods += ("auto",)
    print("\n".join(main_table(methods)))
    print()
    print("\n".join(why_table()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
