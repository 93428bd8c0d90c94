"""Decode the same HumanEval prompts with every strategy and sampling mode (seeded) and print
the token ids as JSON: run it once per checkout and compare the two files to show a refactor
left every output unchanged.

usage: PYTHONPATH=CHECKOUT python tools/same_outputs.py BUNDLE [BUNDLE ...] > out.json
"""

import json
import sys

from stagedx.bench.prompts import load_prompts
from stagedx.runtime import Generator, SamplingConfig


def main(bundles: list) -> None:
    out = {}
    for bundle in bundles:
        with Generator(bundle, device="cpu", threads=2) as gen:
            for s in ("greedy", "topk:50", "topp:0.9"):
                cfg = SamplingConfig.parse(s)
                for name in ("baseline", "speculative", "staged", "staged3"):
                    strategy, tree = ("staged", gen.three_stage_tree(cfg)) if name == "staged3" else (name, None)
                    for i, p in enumerate(load_prompts("humaneval", 4)):
                        r = gen.generate(
                            p.text,
                            max_new_tokens=48,
                            sampling=s,
                            seed=i,
                            strategy=strategy,
                            tree=tree,
                            ignore_eos=True,
                            truncate=True,
                        )
                        out[f"{bundle}|{s}|{name}|{i}"] = r.tokens
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
