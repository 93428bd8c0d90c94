"""Greedy agreement of quantized variants of an exported fp32 oracle with that fp32 graph.

    python tools/gguf_agreement.py BUNDLE MODEL.gguf [--heldout PATH ...] [--tokens N] [--only A,B]

BUNDLE holds the fp32 oracle exported from MODEL.gguf (``stagedx export MODEL.gguf ...``).
Each variant is built from BUNDLE/oracle.onnx in a temporary folder and compared with it
teacher-forced on held-out text (``stagedx.export.quantize.measure``: argmax agreement and the
max logit error relative to max|logit|; default held-out text: export's stdlib sample). One
JSON line per variant:

- ``gguf-accN``: the file's own blocks carried (``--quantize gguf``), accuracy level N;
- ``int4-bB-accN[-gather][-head]``: ONNX Runtime's MatMulNBitsQuantizer on the dequantized
  fp32 graph (what ``--quantize int4`` does), block B, accuracy level N, ``-gather``: the
  embedding Gather quantized too (``--quantize int4`` does this), ``-head``: the LM head
  MatMul quantized too (``--quantize int4`` does this);
- ``int8-b32-acc4``: ``--quantize int8``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from stagedx.export.gguf_blocks import carry_graph
from stagedx.export.quantize import (
    QuantizeOptions,
    _quantizer_class,
    heldout_text,
    measure,
    save_quantized,
    untie_head,
)
from stagedx.manifest import load_manifest


@dataclass(frozen=True)
class Variant:
    kind: str  # "gguf" | "int4" | "int8"
    level: int  # MatMulNBits accuracy_level
    block: int = 32
    gather: bool = False  # quantize the embedding Gather (int4 only)
    head: bool = True  # quantize the LM head MatMul


VARIANTS = {
    "gguf-acc0": Variant("gguf", 0),
    "gguf-acc4": Variant("gguf", 4),
    "int4-b32-acc4-gather-head": Variant("int4", 4, 32, True, True),  # = export --quantize int4
    "int4-b32-acc0-gather-head": Variant("int4", 0, 32, True, True),
    "int4-b32-acc4-head": Variant("int4", 4, 32, False, True),
    "int4-b32-acc4": Variant("int4", 4, 32, False, False),
    "int4-b32-acc0": Variant("int4", 0, 32, False, False),
    "int4-b128-acc4-gather-head": Variant("int4", 4, 128, True, True),
    "int8-b32-acc4": Variant("int8", 4, 32, False, True),
}


def requantize(src: Path, dst: Path, v: Variant) -> int:
    import onnx

    model = onnx.load(str(src))
    untie_head(model)
    inits = {t.name: t for t in model.graph.initializer}
    vocab = max(int(t.dims[-1]) for t in model.graph.initializer if len(t.dims) == 2)
    head = [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and n.input[1] in inits and int(inits[n.input[1]].dims[-1]) == vocab
    ]
    assert head and all(head), "the LM head MatMul must have a name"
    bits = 4 if v.kind == "int4" else 8
    q = _quantizer_class()(
        model,
        bits=bits,
        block_size=v.block,
        is_symmetric=False,
        accuracy_level=v.level,
        op_types_to_quantize=("MatMul", "Gather") if v.gather else ("MatMul",),
        nodes_to_exclude=None if v.head else head,
    )
    q.process()
    return save_quantized(q.model.model, dst)[0]


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
    names = args.only.split(",") if args.only else list(VARIANTS)
    for name in names:
        v = VARIANTS[name]
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / "oracle.onnx"
            size = carry_graph(src, dst, args.gguf, v.level)[0] if v.kind == "gguf" else requantize(src, dst, v)
            agr = measure(src, dst, entry.arch, list(held.chunks))
        row = {
            "variant": name,
            "agreement": round(agr.agreement, 4),
            "max_rel_error": float(f"{agr.max_rel_error:.3g}"),
            "n_tokens": agr.n_tokens,
            "weight_mb": round(size / 1e6, 1),
            "heldout": held.description,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    sys.exit(main())
