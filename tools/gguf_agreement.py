"""Greedy agreement of quantized variants of an exported fp32 oracle with that fp32 graph.

    python tools/gguf_agreement.py BUNDLE MODEL.gguf [--heldout PATH ...] [--tokens N]

BUNDLE holds the fp32 oracle exported from MODEL.gguf (``stagedx export MODEL.gguf ...``).
Each variant is built from BUNDLE/oracle.onnx into a temporary folder and compared with it
teacher-forced on held-out text (``stagedx.export.quantize.measure``: argmax agreement and the
max logit error relative to max|logit|): the GGUF blocks carried (``--quantize gguf``) at
accuracy levels 0 and 4, and ONNX Runtime's requantization (``--quantize int4``) with the
embedding Gather quantized or not, accuracy level 0 or 4, block 32 or 128.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from stagedx.export.gguf_blocks import carry_graph
from stagedx.export.quantize import QuantizeOptions, heldout_text, measure, quantize_graph, quantized_ops
from stagedx.manifest import load_manifest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--heldout", action="append", default=[])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--only", default=None, help="comma-separated variant names")
    args = ap.parse_args()
    m = load_manifest(args.bundle, check_files=False)
    entry = m.models["oracle"]
    src = args.bundle / entry.file
    opts = QuantizeOptions(heldout=tuple(args.heldout), heldout_tokens=args.tokens)
    held = heldout_text(opts, args.bundle / m.tokenizer.file)
    variants = {
        "gguf-acc0": ("gguf", 0, 32, True),
        "gguf-acc4": ("gguf", 4, 32, True),
        "int4-b32-acc4": ("int4", 4, 32, True),  # export's --quantize int4 defaults
        "int4-b32-acc0": ("int4", 0, 32, True),
        "int4-b32-acc4-fp32gather": ("int4", 4, 32, False),
        "int4-b32-acc0-fp32gather": ("int4", 0, 32, False),
        "int4-b128-acc4": ("int4", 4, 128, True),
        "int8-b32-acc4": ("int8", 4, 32, True),
    }
    only = set(args.only.split(",")) if args.only else set(variants)
    for name, (kind, level, block, gather) in variants.items():
        if name not in only:
            continue
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / "oracle.onnx"
            if kind == "gguf":
                quantize_graph_bytes, _, _ = carry_graph(src, dst, args.gguf, level)
            else:
                bits = 4 if kind == "int4" else 8
                q = QuantizeOptions(block_size=block, accuracy_level=level)
                import stagedx.export.quantize as qz

                ops = quantized_ops(bits) if gather else ("MatMul",)
                saved = qz.quantized_ops
                qz.quantized_ops = lambda _bits, ops=ops: ops
                try:
                    quantize_graph_bytes, _ = quantize_graph(src, dst, bits, q)
                finally:
                    qz.quantized_ops = saved
            agr = measure(src, dst, entry.arch, list(held.chunks))
        row = {
            "variant": name,
            "agreement": round(agr.agreement, 4),
            "max_rel_error": float(f"{agr.max_rel_error:.3g}"),
            "n_tokens": agr.n_tokens,
            "weight_mb": round(quantize_graph_bytes / 1e6, 1),
            "heldout": held.description,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
