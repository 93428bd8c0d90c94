"""Greedy tokens of a bundle (baseline, speculative, staged) against transformers' own greedy
``generate`` on the checkpoint it was exported from, for the same prompt token ids.

The prompt is tokenized by the checkpoint's transformers tokenizer with its special tokens
(Gemma's <bos>), and those ids go to both sides. Prints one JSON line per prompt and exits 1
when any strategy differs from transformers.

    python tools/greedy_vs_transformers.py BUNDLE CHECKPOINT --tokens 48 \\
        --prompt "The capital of France is" --prompt "def fibonacci(n):"
"""

from __future__ import annotations

import argparse
import json
import sys
import time

STRATEGIES = ("baseline", "speculative", "staged")


def transformers_greedy(checkpoint: str, prompts: list[str], n_tokens: int) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, greedy continuation ids) per prompt, fp32 on the CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    out = []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt").input_ids  # [1, N]
        with torch.no_grad():
            gen = model.generate(
                ids, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False, top_k=None, top_p=None
            )
        out.append((ids[0].tolist(), gen[0, ids.shape[1] :].tolist()))
    del model
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("checkpoint")
    ap.add_argument("--prompt", action="append", required=True)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    refs = transformers_greedy(args.checkpoint, args.prompt, args.tokens)

    from stagedx.runtime import Generator

    ok = True
    with Generator(args.bundle, device="cpu", threads=args.threads) as gen:
        for prompt, (ids, ref) in zip(args.prompt, refs):
            row = {"prompt": prompt, "prompt_ids": len(ids), "transformers": gen.tokenizer.decode(ref)}
            for strategy in STRATEGIES:
                t0 = time.perf_counter()
                res = gen.generate(ids, max_new_tokens=args.tokens, strategy=strategy, ignore_eos=True)
                row[strategy] = {"equal": res.tokens == ref, "seconds": round(time.perf_counter() - t0, 2)}
                ok &= res.tokens == ref
            print(json.dumps(row), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
