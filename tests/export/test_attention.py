"""Attention that reads the bound past in place (export/attention.py): the same numbers as
concat + repeat + softmax, and every family's exported graph (fp32, int8 and int4, and the
GGUF-carried blocks) free of a Concat over the past, of a repeat of K/V, and of any copy of the
past on ONNX Runtime's CPU EP."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests._models import make_decoder_checkpoint, make_llama_checkpoint

P, T = 101, 5  # a past and a call size no model dimension of the tiny checkpoints equals
COPIES = ("Concat", "Expand", "Tile")


# -- the helper against the plain formula ------------------------------------------------------
def _reference_attention(q, k, v, past_k, past_v, allowed, scale):
    """The formula attend() replaces: concat past and new, repeat K/V per group, one softmax."""
    import torch

    h, hkv = q.shape[1], k.shape[1]
    keys = torch.cat([past_k, k]).repeat_interleave(h // hkv, dim=1)  # [P+T, H, D]
    values = torch.cat([past_v, v]).repeat_interleave(h // hkv, dim=1)  # [P+T, H, D]
    scores = q.transpose(0, 1) @ keys.permute(1, 2, 0) * scale  # [H, T, P+T]
    scores = scores.masked_fill(~allowed, float("-inf"))  # [H, T, P+T]
    out = torch.softmax(scores, -1) @ values.transpose(0, 1)  # [H, T, D]
    return out.transpose(0, 1).reshape(q.shape[0], -1)  # [T, H*D]


# (an empty past, P = 0, is a prefill: torch's eager amax refuses it, the exported graph
# reduces it to -inf; test_parity checks the graph there)
@pytest.mark.parametrize("heads,kv_heads,n_past", [(4, 4, 6), (6, 2, 6), (6, 3, 1), (4, 1, 9)])
def test_attend_equals_concat_repeat_softmax(heads, kv_heads, n_past):
    import torch

    from stagedx.export.attention import attend, attention_bias, split_mask

    gen = torch.Generator().manual_seed(heads * 10 + n_past)
    t, d = 4, 8
    q = torch.randn(t, heads, d, generator=gen)  # [T, H, D]
    k, v, past_k, past_v = (torch.randn(n, kv_heads, d, generator=gen) for n in (t, t, n_past, n_past))
    allowed = torch.rand(t, n_past + t, generator=gen) < 0.6  # [T, P+T] an arbitrary pattern
    allowed[:, n_past:] |= torch.eye(t, dtype=torch.bool)  # each token sees itself
    bias = attention_bias(*split_mask(allowed), heads // kv_heads, torch.float32)
    ours = attend(q, k, v, (past_k, past_v), bias, 0.3)  # [T, H*D]
    ref = _reference_attention(q, k, v, past_k, past_v, allowed, 0.3)
    assert ours.shape == (t, heads * d)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


# -- inspecting exported graphs ------------------------------------------------------------------
def _feeds(dims) -> dict:
    from stagedx.manifest import DEFAULT_IO, GraphIO

    rng = np.random.default_rng(0)
    io = GraphIO.from_io(DEFAULT_IO, dims.n_layers)
    mask = np.ones((T, P + T), dtype=bool)  # [T, P+T]
    mask[:, P:] = np.tril(mask[:, P:])
    feeds = {
        io.input_ids: rng.integers(0, dims.vocab_size, T).astype(np.int64),
        io.position_ids: np.arange(P, P + T, dtype=np.int64),
        io.tree_mask: mask,
    }
    for name in io.past:
        feeds[name] = rng.standard_normal((P, dims.n_kv_heads, dims.head_dim)).astype(np.float32)
    return feeds


def copies_of_the_past(onnx_file, feeds: dict) -> list[str]:
    """Nodes of the graph (run on ``feeds``, every value kept) that copy the past: a Concat
    whose output has an axis of P or P+T rows, or any Expand / Tile of float data (a repeat
    of K/V over query heads)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_file))
    nodes = [n for n in model.graph.node if n.op_type in COPIES]
    declared = {o.name for o in model.graph.output}
    for n in nodes:
        model.graph.output.extend(onnx.ValueInfoProto(name=o) for o in n.output if o not in declared)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    values = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    p = next(iter(v for k, v in feeds.items() if k.startswith("past_key"))).shape[0]
    t = feeds["input_ids"].shape[0]
    found = []
    for n in nodes:
        out = values[n.output[0]]
        if n.op_type == "Concat" and ({p, p + t} & set(out.shape)):
            found.append(f"{n.name}: Concat -> {out.shape}")
        elif n.op_type != "Concat" and out.dtype.kind == "f":
            found.append(f"{n.name}: {n.op_type} -> {out.shape}")
    return found


def past_readers_on_cpu(onnx_file, tmp_path) -> set[str]:
    """Op types that read a ``past_*`` input once ONNX Runtime (CPU EP, all optimizations) has
    optimized the graph: matmuls only means the bound past is read in place."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    graph = onnx.load(opts.optimized_model_filepath).graph
    past = {i.name for i in graph.input if i.name.startswith("past_")}
    return {n.op_type for n in graph.node if past & set(n.input)}


def _checkpoint(family: str, root, tiny_pair):
    if family == "gpt2":
        return tiny_pair.oracle
    if family == "llama":  # grouped-query: 4 query heads over 2 KV heads
        return make_llama_checkpoint(root / family, seed=11)
    if family == "llama-mqa":  # one KV head for all query heads
        return make_llama_checkpoint(root / family, seed=12, n_kv_heads=1, head_dim=16)
    windows = {
        "mistral": {"sliding_window": 7},
        "phi3": {"sliding_window": 5},
        "qwen2": {},
        "gemma3": {"n_heads": 4, "n_kv_heads": 2, "head_dim": 16, "sliding_window": 5, "sliding_window_pattern": 2},
    }
    return make_decoder_checkpoint(root / family, family, seed=13, **windows[family])


def _export(family: str, tmp_path, tiny_pair):
    return _export_checkpoint(_checkpoint(family, tmp_path, tiny_pair), tmp_path / f"{family}.onnx")


def _export_checkpoint(checkpoint, out):
    import torch

    from stagedx.export.arch import open_checkpoint
    from stagedx.export.onnx_export import export_graph
    from stagedx.export.weights import Weights

    torch.set_num_threads(1)
    ckpt = open_checkpoint(str(checkpoint))
    graph = ckpt.spec.build_graph(ckpt.config, Weights(ckpt.path), 8, torch.float32)
    export_graph(graph, ckpt.dims, out, out.parent / "work")
    return out, ckpt.dims


FAMILIES = ("gpt2", "llama", "llama-mqa", "qwen2", "mistral", "phi3", "gemma3")


@pytest.mark.parametrize("family", FAMILIES)
def test_exported_graph_never_copies_the_past(family, tmp_path, tiny_pair):
    onnx_file, dims = _export(family, tmp_path, tiny_pair)
    assert copies_of_the_past(onnx_file, _feeds(dims)) == []
    assert past_readers_on_cpu(onnx_file, tmp_path) <= {"FusedMatMul", "MatMul"}


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_graph_never_copies_the_past(family, bits, tmp_path, tiny_pair):
    """Weight-only quantization rewrites the weight MatMuls (MatMulNBits); attention over the
    past must stay as exported, for every family."""
    from stagedx.export.quantize import QuantizeOptions, quantize_graph

    onnx_file, dims = _export(family, tmp_path, tiny_pair)
    quantized = tmp_path / "quantized.onnx"
    quantize_graph(onnx_file, quantized, bits, QuantizeOptions(block_size=16))
    assert "MatMulNBits" in _op_types(quantized)  # the weights really are quantized
    assert copies_of_the_past(quantized, _feeds(dims)) == []
    assert past_readers_on_cpu(quantized, tmp_path) <= {"FusedMatMul", "MatMul"}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_gguf_carried_graph_never_copies_the_past(arch, tmp_path):
    """``--quantize gguf``: the file's Q4_1 / Q8_0 blocks carried into MatMulNBits (plus the
    block-offset ReduceSum / Gemm); attention over the past stays as exported."""
    pytest.importorskip("gguf")
    from stagedx.export.gguf import materialize
    from stagedx.export.gguf_blocks import carry_graph
    from tests.export._gguf import write_tiny_llama

    src = write_tiny_llama(tmp_path / "tiny.gguf", "Q4_1", embed_type="Q8_0", arch=arch)
    materialize(src, tmp_path / "hf")
    onnx_file, dims = _export_checkpoint(tmp_path / "hf", tmp_path / "fp32.onnx")
    carried = tmp_path / "carried.onnx"
    carry_graph(onnx_file, carried, src, 0)
    assert "MatMulNBits" in _op_types(carried)
    assert copies_of_the_past(carried, _feeds(dims)) == []
    assert past_readers_on_cpu(carried, tmp_path) <= {"FusedMatMul", "MatMul"}


def _op_types(onnx_file) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(onnx_file), load_external_data=False).graph.node}


def test_the_inspection_finds_a_concat_and_a_repeat(tmp_path):
    """Negative control: the formula attend() replaced, exported, is caught on both counts."""
    import torch

    class ConcatRepeat(torch.nn.Module):
        def forward(self, input_ids, q, past_key, k):
            keys = torch.cat([past_key, k])  # [P+T, H_kv, D]
            keys = keys[:, :, None, :].expand(-1, -1, 2, -1).reshape(keys.shape[0], -1, 4)  # [P+T, H, D]
            return q.transpose(0, 1) @ keys.permute(1, 2, 0) + input_ids[0]  # [H, T, P+T]

    path = tmp_path / "concat_repeat.onnx"
    args = (torch.zeros(3, dtype=torch.long), torch.zeros(3, 4, 4), torch.zeros(2, 2, 4), torch.zeros(3, 2, 4))
    names = ["input_ids", "q", "past_key.0", "k"]
    axes = {"input_ids": {0: "T"}, "q": {0: "T"}, "past_key.0": {0: "P"}, "k": {0: "T"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        torch.onnx.export(
            ConcatRepeat(), args, str(path), input_names=names, dynamic_axes=axes, opset_version=18, dynamo=False
        )
    rng = np.random.default_rng(1)
    feeds = {
        "input_ids": np.zeros(T, np.int64),
        "q": rng.standard_normal((T, 4, 4)).astype(np.float32),
        "past_key.0": rng.standard_normal((P, 2, 4)).astype(np.float32),
        "k": rng.standard_normal((T, 2, 4)).astype(np.float32),
    }
    found = copies_of_the_past(path, feeds)
    assert any("Concat" in f for f in found) and any("Expand" in f for f in found), found
    assert "Concat" in past_readers_on_cpu(path, tmp_path)
