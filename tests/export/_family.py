"""Shared by the family test modules (llama / qwen2 / mistral): export a pair of tiny
checkpoints, compare a graph with transformers on a token tree, and decode greedily."""

from __future__ import annotations

import numpy as np

from stagedx.export.verify import random_tree, reference_inputs, reference_outputs, run_onnx
from stagedx.manifest import TOLERANCE
from stagedx.numerics import rel_error


def export_pair(oracle, draft, out, **options):
    """A verified fp32 bundle of ``oracle`` + ``draft`` (export raises above the tolerance)."""
    from stagedx.export.bundle import ExportConfig, export_bundle

    return export_bundle(
        ExportConfig(oracle=str(oracle), draft=str(draft), output=out, draft2="prompt-lookup", **options)
    )


def reference_model(path):
    """(transformers fp32 model, ArchDims) of a checkpoint folder."""
    from stagedx.export.arch import load_reference, open_checkpoint

    ckpt = open_checkpoint(str(path))
    return load_reference(ckpt), ckpt.dims


def tree_error(model, dims, onnx_file, n_past: int, n_nodes: int, seed: int) -> float:
    """max|ours - transformers| / max|transformers| over a random tree's logits."""
    case = random_tree(dims.vocab_size, n_past, n_nodes, seed)
    ref = reference_outputs(model, case, dims.n_layers)
    out = run_onnx(onnx_file, reference_inputs(case, ref, dims))
    assert np.abs(ref["logits"]).max() > 3.0  # weights are scaled: logits are not tiny
    assert out["new_key.0"].shape == (n_nodes, dims.n_kv_heads, dims.head_dim)  # [T, H_kv, D]
    np.testing.assert_array_equal(out["topk_indices"][:, 0], out["logits"].argmax(1))
    return rel_error(out["logits"], ref["logits"])


def assert_greedy_exact(bundle, n_tokens: int = 24) -> None:
    """Greedy speculative and staged decoding give exactly the baseline's tokens."""
    from stagedx.runtime import Generator

    gen = Generator(bundle, device="cpu", threads=1)
    for prompt in ("def add(a, b):\n    return", "import os\nimport sys\n\n\ndef main():\n"):
        base = gen.generate(prompt, max_new_tokens=n_tokens, strategy="baseline", ignore_eos=True)
        assert len(base.tokens) == n_tokens
        for strategy in ("speculative", "staged"):
            res = gen.generate(prompt, max_new_tokens=n_tokens, strategy=strategy, ignore_eos=True)
            assert res.tokens == base.tokens, (strategy, prompt)


FP32_TOLERANCE = TOLERANCE["fp32"]
