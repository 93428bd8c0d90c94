"""An exported graph against transformers on random token trees with a long past (past the
sliding window of Mistral / Phi-3 / Gemma 3 local layers), at any vocabulary size.

transformers runs the past once, then each node's ancestor path over a copy of that cache,
keeping only the last logits: the export's own batched check would hold [T, L, V] fp32 logits
(6 GB for Gemma 3's 262k vocabulary at L = 600).

    python tools/long_past_parity.py CHECKPOINT BUNDLE/oracle.onnx --past 600 --past 1100
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np


def reference(hf, case, n_layers: int) -> tuple[dict, np.ndarray]:
    """(past K/V feeds [P, H_kv, D] per layer, logits [T, V]) from transformers."""
    import torch
    from transformers import DynamicCache

    from stagedx.export.verify import _cache_layer

    feeds = {}
    with torch.no_grad():
        cache = DynamicCache()  # keeps every row (the graph's past is the whole sequence)
        hf(torch.from_numpy(case.past_ids)[None], use_cache=True, cache=cache)
        for i in range(n_layers):
            k, v = _cache_layer(cache, i)  # [1, H_kv, P, D]
            feeds[f"past_key.{i}"] = np.ascontiguousarray(k[0].transpose(0, 1).numpy())  # [P, H_kv, D]
            feeds[f"past_value.{i}"] = np.ascontiguousarray(v[0].transpose(0, 1).numpy())  # [P, H_kv, D]
        logits = []
        for i in range(len(case.tokens)):
            path = torch.from_numpy(case.tokens[case.ancestors(i)])[None]  # [1, depth]
            out = hf(path, cache=copy.deepcopy(cache), use_cache=True, logits_to_keep=1)
            logits.append(out.logits[0, -1].float().numpy())  # [V]
    return feeds, np.stack(logits)  # [T, V]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("onnx_file")
    ap.add_argument("--past", type=int, action="append", help="past length (repeatable) [600]")
    ap.add_argument("--nodes", type=int, default=9)
    args = ap.parse_args()

    import torch

    from stagedx.export.arch import load_reference, open_checkpoint
    from stagedx.export.verify import random_tree, reference_inputs, run_onnx
    from stagedx.numerics import rel_error

    torch.set_num_threads(1)
    ckpt = open_checkpoint(args.checkpoint)
    dims, hf = ckpt.dims, load_reference(ckpt)
    for seed, n_past in enumerate(args.past or [600], start=1):
        case = random_tree(dims.vocab_size, n_past, args.nodes, seed)
        t0 = time.perf_counter()
        past, ref = reference(hf, case, dims.n_layers)
        t1 = time.perf_counter()
        out = run_onnx(args.onnx_file, reference_inputs(case, past, dims))["logits"]  # [T, V]
        top1 = float((out.argmax(1) == ref.argmax(1)).mean())
        print(
            f"past {n_past}, {args.nodes} nodes: max logit error {rel_error(out, ref):.2e} relative to "
            f"max|logit| {np.abs(ref).max():.3g}, top-1 equal on {top1:.0%} of nodes "
            f"[transformers {t1 - t0:.0f}s, ONNX Runtime {time.perf_counter() - t1:.0f}s]",
            flush=True,
        )


if __name__ == "__main__":
    main()
