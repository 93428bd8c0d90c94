"""Show the online planner switching shape when the text changes character: decode one prompt
with ``--strategy auto`` and report, per segment of the output (split where ``--marker`` first
appears in the generated text, else at the half), the share of rounds per option, tokens per
oracle call and decode speed.

    python tools/planner_switch.py BUNDLE [--prompt TEXT] [--marker STR] [--tokens N] [--threads N]

Time it under /work/quiet.sh-style discipline (nothing else running) when the speeds matter.
"""

from __future__ import annotations

import argparse
from collections import Counter

from stagedx.runtime import Generator

CODE_THEN_PROSE = (
    "def moving_average(values, window):\n"
    "    total = sum(values[:window])\n"
    "    out = [total / window]\n"
    "    for i in range(window, len(values)):\n"
    "        total += values[i] - values[i - window]\n"
    "        out.append(total / window)\n"
    "    return out\n"
    "\n"
    "# The function above keeps a running total. In plain English, a moving average is"
)


def segments(trace: list, split: int) -> list:
    """Rounds before / after ``split`` generated tokens: [(name, rounds)]."""
    return [("first", [r for r in trace if r[0] < split]), ("second", [r for r in trace if r[0] >= split])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--prompt", default=CODE_THEN_PROSE)
    ap.add_argument("--marker", default=None, help="split the output where this text first appears")
    ap.add_argument("--tokens", type=int, default=192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sampling", default="greedy")
    a = ap.parse_args()
    with Generator(a.bundle, threads=a.threads) as gen:
        gen.generate(a.prompt, max_new_tokens=16, sampling=a.sampling, seed=0, ignore_eos=True)  # warm-up
        res = gen.generate(a.prompt, max_new_tokens=a.tokens, sampling=a.sampling, seed=0, ignore_eos=True)
        split = len(res.tokens) // 2
        if a.marker and a.marker in res.text:
            head = res.text[: res.text.index(a.marker)]
            split = len(gen.tokenizer.encode(head))
        trace = res.stats.planner.trace
        print(f"{a.bundle}: {len(res.tokens)} tokens, {a.sampling}, split at token {split}")
        print("--- output ---\n" + res.text + "\n--------------")
        ends = [r[0] for r in trace[1:]] + [len(res.tokens)]
        for name, rounds in segments(trace, split):
            if not rounds:
                continue
            idx = [trace.index(r) for r in rounds]
            toks = sum(ends[i] - trace[i][0] for i in idx)
            secs = sum(trace[i][2] for i in idx)
            shares = Counter(r[1] for r in rounds)
            top = ", ".join(f"{k} {100 * n / len(rounds):.0f}%" for k, n in shares.most_common(5))
            print(
                f"{name} segment: {toks} tokens in {len(rounds)} rounds ({toks / len(rounds):.2f} tokens/round), "
                f"{toks / secs:.1f} tok/s decode; shapes: {top}"
            )


if __name__ == "__main__":
    main()
