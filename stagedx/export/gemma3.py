"""Our own Gemma 3 (text) forward pass for export.

Same graph contract as the other families (``docs/design.md``): batch size 1, K/V laid out
``[rows, H_kv, D]``, tree attention through an explicit ``[T, P+T]`` boolean mask, keys cached
after their norm and RoPE. Where Gemma 3 differs from Llama (:mod:`.llama`):

- RMSNorm scales by ``1 + w`` and multiplies before the cast back (``Gemma3RMSNorm``);
- the embedding is multiplied by ``sqrt(hidden)`` rounded to the model's dtype;
- q and k go through their own RMSNorm (over the head dimension) before RoPE;
- attention scores are scaled by ``query_pre_attn_scalar ** -0.5``, not ``head_dim ** -0.5``;
- the attention output and the MLP output are normed before their residual adds (four norms
  per layer: input, post-attention, pre-feedforward, post-feedforward);
- the MLP is gated tanh-GELU;
- layers are sliding-window (local) or global (:mod:`.gemma3_config`): local layers mask keys
  ``window`` or more positions back (from positions, as :mod:`.mistral` does, combined with
  the tree's ancestry) and rotate with their own RoPE base; global layers see the whole past
  and use ``rope_theta`` with the optional scaling;
- optional final logit softcapping ``c * tanh(logits / c)`` (monotone: top-k unchanged).

The runtime's cache keeps every row for every layer (a local layer just masks the old ones),
so the bundle's KV layout is the one every family has.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import StagedxError
from .attention import attend, attention_bias, split_mask
from .gemma3_config import FULL, SLIDING, Gemma3Dims, gemma3_dims, text_config
from .llama import _rotate_half, inverse_frequencies
from .mistral import window_masks


class GemmaRMSNorm(nn.Module):
    """transformers' Gemma3RMSNorm: normalise in fp32, scale by (1 + w) in fp32, cast back.

    ``gain`` holds ``1 + w`` computed in fp32 at build time (:func:`put_gain`), stored in fp32
    whatever the export dtype: the same numbers transformers multiplies by, and a parameter the
    ONNX exporter cannot fold away (``1 + w`` traced would become an unnamed constant)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(size))  # [E] fp32
        self.eps = eps

    def forward(self, x):
        # x [..., E]
        h = x.float()  # [..., E]
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)  # [..., E]
        return (h * self.gain).to(x.dtype)  # [..., E]


def put_gain(norm: GemmaRMSNorm, weight: torch.Tensor) -> None:
    """A checkpoint's Gemma RMSNorm ``weight`` into ``norm`` as its fp32 gain ``1 + w``."""
    from .weights import put

    put(norm, "gain", 1.0 + weight.float(), torch.float32)


class Gemma3Block(nn.Module):
    """One Gemma 3 decoder layer; Linear weights stored [in, out] (q|k|v and gate|up fused)."""

    def __init__(self, dims: Gemma3Dims):
        super().__init__()
        e, d, f = dims.hidden, dims.head_dim, dims.intermediate
        self.n_heads, self.n_kv_heads, self.head_dim = dims.n_heads, dims.n_kv_heads, d
        self.q_size, self.kv_size = dims.n_heads * d, dims.n_kv_heads * d
        self.norm_in = GemmaRMSNorm(e, dims.eps)
        self.norm_post_attn = GemmaRMSNorm(e, dims.eps)
        self.norm_pre_mlp = GemmaRMSNorm(e, dims.eps)
        self.norm_post_mlp = GemmaRMSNorm(e, dims.eps)
        self.q_norm = GemmaRMSNorm(d, dims.eps)
        self.k_norm = GemmaRMSNorm(d, dims.eps)
        self.w_qkv = nn.Parameter(torch.empty(e, self.q_size + 2 * self.kv_size))  # [E, (H+2H_kv)D]
        self.w_o = nn.Parameter(torch.empty(self.q_size, e))  # [HD, E]
        self.w_gate_up = nn.Parameter(torch.empty(e, 2 * f))  # [E, 2F]
        self.w_down = nn.Parameter(torch.empty(f, e))  # [F, E]
        self.scale = dims.query_scale

    def _attention(self, h, rope, bias, past_k, past_v):
        # h [T, E]; rope = (cos, sin) each [T, 1, D]; bias = ([G*T, P], [G*T, T]); past [P, H_kv, D]
        t = h.shape[0]
        cos, sin = rope
        q, k, v = (h @ self.w_qkv).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self.q_norm(q.reshape(t, self.n_heads, self.head_dim))  # [T, H, D]
        k = self.k_norm(k.reshape(t, self.n_kv_heads, self.head_dim))  # [T, H_kv, D]
        v = v.reshape(t, self.n_kv_heads, self.head_dim)  # [T, H_kv, D]
        q = q * cos + _rotate_half(q) * sin  # [T, H, D]
        k = k * cos + _rotate_half(k) * sin  # [T, H_kv, D]
        att = attend(q, k, v, (past_k, past_v), bias, self.scale)  # [T, H*D], past read in place
        return att @ self.w_o, k, v  # [T, E], [T, H_kv, D] x2

    def forward(self, x, rope, bias, past_k, past_v):
        # x [T, E]
        att, k, v = self._attention(self.norm_in(x), rope, bias, past_k, past_v)  # [T, E]
        x = x + self.norm_post_attn(att)  # [T, E]
        gate, up = (self.norm_pre_mlp(x) @ self.w_gate_up).chunk(2, dim=-1)  # 2 x [T, F]
        mlp = (nn.functional.gelu(gate, approximate="tanh") * up) @ self.w_down  # [T, E]
        return x + self.norm_post_mlp(mlp), k, v  # [T, E]


class Gemma3Graph(nn.Module):
    """forward(input_ids, position_ids, tree_mask, past_key.0, past_value.0, ...) ->
    (logits, topk_values, topk_indices, new_key.0, new_value.0, ...)."""

    def __init__(self, dims: Gemma3Dims, topk: int):
        super().__init__()
        self.dims, self.topk = dims, topk
        self.embed = nn.Parameter(torch.empty(dims.vocab_size, dims.hidden))  # [V, E]
        self.blocks = nn.ModuleList(Gemma3Block(dims) for _ in range(dims.n_layers))
        self.norm = GemmaRMSNorm(dims.hidden, dims.eps)
        self.lm_head = None if dims.tied else nn.Parameter(torch.empty(dims.vocab_size, dims.hidden))
        # plain CPU attributes, not buffers: `.to(fp16)` must not round the frequencies
        self.inv_freq = {
            SLIDING: inverse_frequencies(dims.rope_local, dims.head_dim),  # [D/2]
            FULL: inverse_frequencies(dims.rope_global, dims.head_dim),  # [D/2]
        }

    def _rope(self, kind: str, position_ids, dtype):
        # position_ids [T] int64 -> cos, sin [T, 1, D], computed in fp32 like transformers
        freqs = position_ids.float()[:, None] * self.inv_freq[kind][None, :]  # [T, D/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [T, D]
        return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]  # [T, 1, D] x2

    def forward(self, input_ids, position_ids, tree_mask, *past):
        # input_ids [T] int64; position_ids [T] int64; tree_mask [T, P+T] bool
        # past: past_key.0 [P, H_kv, D], past_value.0 [P, H_kv, D], past_key.1, ...
        dtype = self.embed.dtype
        x = self.embed[input_ids] * torch.tensor(self.dims.hidden**0.5, dtype=dtype)  # [T, E]
        kinds = [SLIDING if s else FULL for s in self.dims.sliding]
        ropes = {k: self._rope(k, position_ids, dtype) for k in set(kinds)}  # cos, sin [T, 1, D]
        parts = split_mask(tree_mask)  # [T, P], [T, T]
        allowed = {FULL: parts}
        if SLIDING in ropes:
            allowed[SLIDING] = window_masks(*parts, position_ids, self.dims.window)  # [T, P], [T, T]
        groups = self.dims.n_heads // self.dims.n_kv_heads
        bias = {k: attention_bias(*m, groups, dtype) for k, m in allowed.items()}  # [G*T, P], [G*T, T]
        new_kv = []
        for i, (block, kind) in enumerate(zip(self.blocks, kinds)):
            x, k, v = block(x, ropes[kind], bias[kind], past[2 * i], past[2 * i + 1])  # k, v [T, H_kv, D]
            new_kv += [k, v]
        x = self.norm(x)  # [T, E]
        head = self.embed if self.lm_head is None else self.lm_head  # [V, E]
        logits = (head @ x.t()).t()  # [T, V] (weight-side product: see head.py)
        if self.dims.final_softcap is not None:
            cap = self.dims.final_softcap
            logits = torch.tanh(logits / cap) * cap  # [T, V]
        topk_values, topk_indices = torch.topk(logits, self.topk, dim=-1)  # [T, K], [T, K]
        return (logits, topk_values, topk_indices, *new_kv)


def _put_block(block: Gemma3Block, weights, prefix: str, dtype) -> None:
    """Weights of layer ``prefix`` (``layers.<i>.``) into ``block``."""
    from .weights import put

    a, m = prefix + "self_attn.", prefix + "mlp."
    for ours, theirs in (
        ("norm_in", "input_layernorm"),
        ("norm_post_attn", "post_attention_layernorm"),
        ("norm_pre_mlp", "pre_feedforward_layernorm"),
        ("norm_post_mlp", "post_feedforward_layernorm"),
    ):
        put_gain(getattr(block, ours), weights[f"{prefix}{theirs}.weight"])
    put_gain(block.q_norm, weights[a + "q_norm.weight"])
    put_gain(block.k_norm, weights[a + "k_norm.weight"])
    qkv = torch.cat([weights[f"{a}{n}_proj.weight"] for n in "qkv"])  # [(H+2H_kv)D, E]
    put(block, "w_qkv", qkv.t(), dtype)  # [E, (H+2H_kv)D]
    del qkv
    gate_up = torch.cat([weights[m + "gate_proj.weight"], weights[m + "up_proj.weight"]])  # [2F, E]
    put(block, "w_gate_up", gate_up.t(), dtype)  # [E, 2F]
    del gate_up
    put(block, "w_o", weights[a + "o_proj.weight"].t(), dtype)  # [HD, E]
    put(block, "w_down", weights[m + "down_proj.weight"].t(), dtype)  # [F, E]


def check_frequencies(graph: Gemma3Graph, cfg: dict) -> None:
    """Both RoPE frequency sets must equal transformers' for this config (a RoPE variant read
    wrongly would hardly show at the few positions of the parity check)."""
    import transformers

    text = text_config(cfg)
    config = transformers.Gemma3TextConfig(**{k: v for k, v in text.items() if k != "model_type"})
    rotary = transformers.models.gemma3.modeling_gemma3.Gemma3RotaryEmbedding(config)
    for kind, ours in graph.inv_freq.items():
        if kind not in rotary.rope_type:
            continue
        theirs = getattr(rotary, f"{kind}_inv_freq")
        if getattr(rotary, f"{kind}_attention_scaling") != 1.0:
            raise StagedxError(f"unsupported gemma3 RoPE attention factor on {kind} layers")
        if not torch.allclose(theirs.float(), ours, rtol=1e-6, atol=0):
            raise StagedxError(f"gemma3 rotary frequencies of the {kind} layers differ from transformers'")


def build_gemma3_graph(cfg: dict, weights, topk: int, dtype: torch.dtype) -> Gemma3Graph:
    """The graph of a ``Gemma3ForCausalLM`` checkpoint, or of the text model of a ``gemma3``
    one (config.json dict + its weights, whose names :mod:`.weights` reads as the text
    model's), read one tensor at a time."""
    from .weights import put

    dims = gemma3_dims(cfg)
    with torch.device("meta"):  # no allocation until each weight is put in place
        graph = Gemma3Graph(dims, min(topk, dims.vocab_size))
    put(graph, "embed", weights["embed_tokens.weight"], dtype)
    put_gain(graph.norm, weights["norm.weight"])
    if not dims.tied:
        put(graph, "lm_head", weights["lm_head.weight"], dtype)
    for i, block in enumerate(graph.blocks):
        _put_block(block, weights, f"layers.{i}.", dtype)
    check_frequencies(graph, cfg)
    return graph.eval()
