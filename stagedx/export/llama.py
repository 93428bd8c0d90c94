"""Our own Llama forward pass for export (RoPE, RMSNorm, grouped-query attention, SwiGLU).

Same graph contract as :mod:`stagedx.export.gpt2` (``docs/design.md``): batch size 1, no batch
axis, K/V laid out ``[rows, H_kv, D]``, tree attention through an explicit ``[T, P+T]`` boolean
mask. Keys are cached *after* RoPE has been applied at their absolute position
(``position_ids``), so the runtime never re-rotates a cached row. The cache keeps ``H_kv``
heads; the ``H / H_kv`` query heads of each are served by one grouped matmul, the past read in
place (:func:`stagedx.export.attention.attend`: no Concat, no repeat of K/V). RoPE may be
plain or scaled (``linear``, ``llama3``: only the inverse frequencies change); other scalings
are refused in :mod:`stagedx.export.configs`.

The same forward serves Qwen2 (q/k/v bias without an o_proj bias: :mod:`.qwen2`), Mistral
(a sliding-window term in the mask: :mod:`.mistral`) and Phi-3 (Mistral's graph, fused
checkpoint tensors: :mod:`.phi3`); the flags live in :class:`DecoderDims`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import StagedxError
from .attention import attend, attention_bias, split_mask
from .configs import DecoderDims, Rope, decoder_dims
from .small_head import restrict_head, small_head_outputs


class RMSNorm(nn.Module):
    """transformers' LlamaRMSNorm: normalise in fp32, cast back, then scale."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))  # [E]
        self.eps = eps

    def forward(self, x):
        # x [T, E]
        h = x.float()  # [T, E]
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)  # [T, E]
        return self.weight * h.to(x.dtype)  # [T, E]


def _rotate_half(x):
    # x [T, H, D]
    half = int(x.shape[-1]) // 2  # D is fixed: a constant in the graph, no shape arithmetic
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # [T, H, D]


def _optional(size: int, present: bool):
    return nn.Parameter(torch.zeros(size)) if present else None


class Block(nn.Module):
    """One pre-RMSNorm Llama block; Linear weights are stored [in, out] (q|k|v and gate|up fused)."""

    def __init__(self, dims: DecoderDims):
        super().__init__()
        e, d, f = dims.hidden, dims.head_dim, dims.intermediate
        self.n_heads, self.n_kv_heads, self.head_dim = dims.n_heads, dims.n_kv_heads, d
        self.q_size, self.kv_size = dims.n_heads * d, dims.n_kv_heads * d
        qkv = self.q_size + 2 * self.kv_size
        self.norm_1 = RMSNorm(e, dims.eps)
        self.norm_2 = RMSNorm(e, dims.eps)
        self.w_qkv = nn.Parameter(torch.empty(e, qkv))  # [E, (H+2H_kv)D]
        self.b_qkv = _optional(qkv, dims.qkv_bias)  # [(H+2H_kv)D]
        self.w_o = nn.Parameter(torch.empty(self.q_size, e))  # [HD, E]
        self.b_o = _optional(e, dims.o_bias)  # [E]
        self.w_gate_up = nn.Parameter(torch.empty(e, 2 * f))  # [E, 2F]
        self.b_gate_up = _optional(2 * f, dims.mlp_bias)  # [2F]
        self.w_down = nn.Parameter(torch.empty(f, e))  # [F, E]
        self.b_down = _optional(e, dims.mlp_bias)  # [E]
        self.scale = d**-0.5
        self.intermediate = f

    def forward(self, x, rope, bias, past_k, past_v):
        # x [T, E]; rope = (cos, sin) each [T, 1, D]; bias = ([T, P], [T, T]) additive (0 or
        # MASK_FILL); past_k / past_v [P, H_kv, D] (keys already rotated)
        cos, sin = rope
        h = self.norm_1(x)  # [T, E]
        qkv = h @ self.w_qkv  # [T, (H+2H_kv)D]
        if self.b_qkv is not None:
            qkv = qkv + self.b_qkv  # [T, (H+2H_kv)D]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(-1, self.n_heads, self.head_dim)  # [T, H, D]
        k = k.reshape(-1, self.n_kv_heads, self.head_dim)  # [T, H_kv, D]
        v = v.reshape(-1, self.n_kv_heads, self.head_dim)  # [T, H_kv, D]
        q = q * cos + _rotate_half(q) * sin  # [T, H, D]
        k = k * cos + _rotate_half(k) * sin  # [T, H_kv, D]
        att = attend(q, k, v, (past_k, past_v), bias, self.scale) @ self.w_o  # [T, E]
        if self.b_o is not None:
            att = att + self.b_o  # [T, E]
        x = x + att  # [T, E]
        gu = self.norm_2(x) @ self.w_gate_up  # [T, 2F]
        if self.b_gate_up is not None:
            gu = gu + self.b_gate_up  # [T, 2F]
        gate, up = gu.split(self.intermediate, dim=-1)  # 2 x [T, F]
        mlp = (torch.nn.functional.silu(gate) * up) @ self.w_down  # [T, E]
        if self.b_down is not None:
            mlp = mlp + self.b_down  # [T, E]
        return x + mlp, k, v


def inverse_frequencies(rope: Rope, head_dim: int) -> torch.Tensor:
    """[D/2] fp32 RoPE inverse frequencies, with linear or llama3 scaling (as transformers)."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
    inv_freq = 1.0 / rope.theta**exponents  # [D/2]
    if rope.kind == "linear":
        return inv_freq / rope.factor  # [D/2]
    if rope.kind == "llama3":
        # long wavelengths are divided by factor, short ones kept, a smooth ramp in between
        low_wavelen = rope.original_max_positions / rope.low_freq_factor
        high_wavelen = rope.original_max_positions / rope.high_freq_factor
        wavelen = 2 * math.pi / inv_freq  # [D/2]
        scaled = torch.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)  # [D/2]
        smooth = (rope.original_max_positions / wavelen - rope.low_freq_factor) / (
            rope.high_freq_factor - rope.low_freq_factor
        )  # [D/2]
        ramp = (1 - smooth) * scaled / rope.factor + smooth * scaled  # [D/2]
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)  # [D/2]
        return torch.where(medium, ramp, scaled)  # [D/2]
    return inv_freq  # [D/2]


class LlamaGraph(nn.Module):
    """forward(input_ids, position_ids, tree_mask, past_key.0, past_value.0, ...) ->
    (logits, topk_values, topk_indices, new_key.0, new_value.0, ...)."""

    def __init__(self, dims: DecoderDims, topk: int):
        super().__init__()
        self.dims, self.topk = dims, topk
        self.embed = nn.Parameter(torch.empty(dims.vocab_size, dims.hidden))  # [V, E]
        self.blocks = nn.ModuleList(Block(dims) for _ in range(dims.n_layers))
        self.norm = RMSNorm(dims.hidden, dims.eps)
        self.lm_head = None if dims.tied else nn.Parameter(torch.empty(dims.vocab_size, dims.hidden))
        # A plain CPU attribute, not a buffer: `.to(fp16)` must not round the frequencies.
        self.inv_freq = inverse_frequencies(dims.rope, dims.head_dim)  # [D/2]
        self.head_rows = None  # a small-vocabulary head (restrict_head), else the full one

    def _rope(self, position_ids, dtype):
        # position_ids [T] int64 -> cos, sin [T, 1, D], computed in fp32 like transformers
        freqs = position_ids.float()[:, None] * self.inv_freq[None, :]  # [T, D/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [T, D]
        return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]  # [T, 1, D] x2

    def attention_mask(self, tree_mask, position_ids):
        """(past part [T, P], new part [T, T]) bool: which keys each new token may attend
        (Mistral adds its window)."""
        return split_mask(tree_mask)  # [T, P], [T, T]

    def forward(self, input_ids, position_ids, tree_mask, *past):
        # input_ids [T] int64; position_ids [T] int64; tree_mask [T, P+T] bool
        # past: past_key.0 [P, H_kv, D], past_value.0 [P, H_kv, D], past_key.1, ...
        x = self.embed[input_ids]  # [T, E]
        rope = self._rope(position_ids, x.dtype)  # cos, sin [T, 1, D]
        allowed_past, allowed_new = self.attention_mask(tree_mask, position_ids)  # [T, P], [T, T]
        groups = self.dims.n_heads // self.dims.n_kv_heads  # query heads per KV head
        bias = attention_bias(allowed_past, allowed_new, groups, x.dtype)  # [G*T, P], [G*T, T]
        new_kv = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, rope, bias, past[2 * i], past[2 * i + 1])  # k, v [T, H_kv, D]
            new_kv += [k, v]
        x = self.norm(x)  # [T, E]
        if self.head_rows is not None:
            return (*small_head_outputs(self, x), *new_kv)
        head = self.embed if self.lm_head is None else self.lm_head  # [V, E]
        logits = (head @ x.t()).t()  # [T, V] (weight-side product: no transposed copy of head)
        topk_values, topk_indices = torch.topk(logits, self.topk, dim=-1)  # [T, K], [T, K]
        return (logits, topk_values, topk_indices, *new_kv)

    def restrict_head(self, ids) -> None:
        """Score only the vocabulary ids ``ids`` ([N] int64 numpy, ascending): see
        :func:`small_head_outputs`."""
        restrict_head(self, ids)


def _put_block(block: Block, weights, prefix: str, dtype, fused: bool) -> None:
    """Weights of layer ``prefix`` into ``block``; ``fused``: the checkpoint stores q|k|v as
    one ``qkv_proj`` and gate|up as one ``gate_up_proj`` (Phi-3), in our order already."""
    from .weights import put

    a, m = prefix + "self_attn.", prefix + "mlp."
    put(block.norm_1, "weight", weights[prefix + "input_layernorm.weight"], dtype)
    put(block.norm_2, "weight", weights[prefix + "post_attention_layernorm.weight"], dtype)
    if fused:
        qkv = weights[a + "qkv_proj.weight"]  # [(H+2H_kv)D, E]
        gate_up = weights[m + "gate_up_proj.weight"]  # [2F, E]
    else:
        qkv = torch.cat([weights[f"{a}{n}_proj.weight"] for n in "qkv"])  # [(H+2H_kv)D, E]
        gate_up = torch.cat([weights[m + "gate_proj.weight"], weights[m + "up_proj.weight"]])  # [2F, E]
    put(block, "w_qkv", qkv.t(), dtype)  # [E, (H+2H_kv)D]
    put(block, "w_gate_up", gate_up.t(), dtype)  # [E, 2F]
    del qkv, gate_up
    put(block, "w_o", weights[a + "o_proj.weight"].t(), dtype)  # [HD, E]
    put(block, "w_down", weights[m + "down_proj.weight"].t(), dtype)  # [F, E]
    if block.b_qkv is not None:
        put(block, "b_qkv", torch.cat([weights[f"{a}{n}_proj.bias"] for n in "qkv"]), dtype)
    if block.b_o is not None:
        put(block, "b_o", weights[a + "o_proj.bias"], dtype)
    if block.b_gate_up is not None:
        put(block, "b_gate_up", torch.cat([weights[m + "gate_proj.bias"], weights[m + "up_proj.bias"]]), dtype)
        put(block, "b_down", weights[m + "down_proj.bias"], dtype)


def check_frequencies(graph: LlamaGraph, cfg: dict) -> None:
    """Our inverse frequencies must equal transformers' for this config (catches a RoPE
    variant read wrongly: at the few positions of the parity check it would hardly show)."""
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = transformers.AutoConfig.for_model(cfg["model_type"], **{k: v for k, v in cfg.items() if k != "model_type"})
    params = getattr(config, "rope_parameters", None) or {}
    kind = params.get("rope_type", "default")
    if kind != graph.dims.rope.kind:
        raise StagedxError(
            f"{graph.dims.family} RoPE type read as {graph.dims.rope.kind!r} but transformers reads {kind!r}"
        )
    if kind == "default":
        return
    theirs, factor = ROPE_INIT_FUNCTIONS[kind](config, "cpu")
    if factor != 1.0:
        raise StagedxError(f"unsupported RoPE attention factor {factor} for type {kind!r}")
    if not torch.allclose(theirs.float(), graph.inv_freq, rtol=1e-6, atol=0):
        raise StagedxError(f"{graph.dims.family} rotary frequencies differ from transformers' (RoPE type {kind!r})")


def build_decoder_graph(graph_cls, dims: DecoderDims, weights, topk: int, dtype, fused: bool = False) -> LlamaGraph:
    """A ``graph_cls`` (LlamaGraph or a subclass) in ``dtype`` holding ``weights`` (name ->
    tensor, names without ``model.``), read one tensor at a time; ``fused`` as for Phi-3."""
    from .weights import put

    with torch.device("meta"):  # no allocation until each weight is put in place
        graph = graph_cls(dims, min(topk, dims.vocab_size))
    put(graph, "embed", weights["embed_tokens.weight"], dtype)
    put(graph.norm, "weight", weights["norm.weight"], dtype)
    if not dims.tied:
        put(graph, "lm_head", weights["lm_head.weight"], dtype)
    for i, block in enumerate(graph.blocks):
        _put_block(block, weights, f"layers.{i}.", dtype, fused)
    return graph.eval()


def build_llama_graph(cfg: dict, weights, topk: int, dtype: torch.dtype) -> LlamaGraph:
    """The graph of a ``LlamaForCausalLM`` checkpoint (config.json dict + its weights)."""
    graph = build_decoder_graph(LlamaGraph, decoder_dims(cfg, "llama"), weights, topk, dtype)
    check_frequencies(graph, cfg)
    return graph
