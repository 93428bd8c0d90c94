"""Our own Llama forward pass for export (RoPE, RMSNorm, grouped-query attention, SwiGLU).

Same graph contract as :mod:`stagedx.export.gpt2` (``docs/design.md``): batch size 1, no batch
axis, K/V laid out ``[rows, H_kv, D]``, tree attention through an explicit ``[T, P+T]`` boolean
mask. Keys are cached *after* RoPE has been applied at their absolute position
(``position_ids``), so the runtime never re-rotates a cached row. The cache keeps ``H_kv``
heads; each is repeated ``H / H_kv`` times inside the graph (grouped-query attention) with
plain MatMul + Softmax. rope_scaling variants (llama3, linear, dynamic, yarn, ...) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import StagedxError
from .arch import check_rope, rope_theta
from .gpt2 import MASK_FILL


@dataclass(frozen=True)
class LlamaDims:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab_size: int
    eps: float
    theta: float
    attention_bias: bool
    mlp_bias: bool

    @staticmethod
    def from_config(cfg) -> "LlamaDims":
        raw = cfg.to_dict()
        check_rope(raw)
        if getattr(cfg, "hidden_act", "silu") != "silu":
            raise StagedxError(f"unsupported Llama hidden_act {cfg.hidden_act!r} (only silu)")
        heads = cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        if heads % kv_heads:
            raise StagedxError(f"Llama num_attention_heads={heads} not a multiple of "
                               f"num_key_value_heads={kv_heads}")
        return LlamaDims(
            n_layers=cfg.num_hidden_layers, n_heads=heads, n_kv_heads=kv_heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            hidden=cfg.hidden_size, intermediate=cfg.intermediate_size,
            vocab_size=cfg.vocab_size, eps=cfg.rms_norm_eps, theta=rope_theta(raw),
            attention_bias=bool(getattr(cfg, "attention_bias", False)),
            mlp_bias=bool(getattr(cfg, "mlp_bias", False)),
        )


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
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)  # [T, H, D]


def _optional(size: int, present: bool):
    return nn.Parameter(torch.zeros(size)) if present else None


class Block(nn.Module):
    """One pre-RMSNorm Llama block; Linear weights are stored [in, out] (q|k|v and gate|up fused)."""

    def __init__(self, dims: LlamaDims):
        super().__init__()
        e, d, f = dims.hidden, dims.head_dim, dims.intermediate
        self.n_heads, self.n_kv_heads, self.head_dim = dims.n_heads, dims.n_kv_heads, d
        self.q_size, self.kv_size = dims.n_heads * d, dims.n_kv_heads * d
        qkv = self.q_size + 2 * self.kv_size
        self.norm_1 = RMSNorm(e, dims.eps)
        self.norm_2 = RMSNorm(e, dims.eps)
        self.w_qkv = nn.Parameter(torch.empty(e, qkv))  # [E, (H+2H_kv)D]
        self.b_qkv = _optional(qkv, dims.attention_bias)  # [(H+2H_kv)D]
        self.w_o = nn.Parameter(torch.empty(self.q_size, e))  # [HD, E]
        self.b_o = _optional(e, dims.attention_bias)  # [E]
        self.w_gate_up = nn.Parameter(torch.empty(e, 2 * f))  # [E, 2F]
        self.b_gate_up = _optional(2 * f, dims.mlp_bias)  # [2F]
        self.w_down = nn.Parameter(torch.empty(f, e))  # [F, E]
        self.b_down = _optional(e, dims.mlp_bias)  # [E]
        self.scale = d ** -0.5

    def _repeat_kv(self, x):
        # x [S, H_kv, D] -> [S, H, D]: kv head j serves query heads j*n_rep .. (j+1)*n_rep - 1
        rep = self.n_heads // self.n_kv_heads
        if rep == 1:
            return x
        s = x.shape[0]
        x = x[:, :, None, :].expand(s, self.n_kv_heads, rep, self.head_dim)  # [S, H_kv, R, D]
        return x.reshape(s, self.n_heads, self.head_dim)  # [S, H, D]

    def forward(self, x, rope, mask_bias, past_k, past_v):
        # x [T, E]; rope = (cos, sin) each [T, 1, D]; mask_bias [T, P+T] (0 or MASK_FILL)
        # past_k / past_v [P, H_kv, D] (keys already rotated)
        t = x.shape[0]
        cos, sin = rope
        h = self.norm_1(x)  # [T, E]
        qkv = h @ self.w_qkv  # [T, (H+2H_kv)D]
        if self.b_qkv is not None:
            qkv = qkv + self.b_qkv  # [T, (H+2H_kv)D]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(t, self.n_heads, self.head_dim)  # [T, H, D]
        k = k.reshape(t, self.n_kv_heads, self.head_dim)  # [T, H_kv, D]
        v = v.reshape(t, self.n_kv_heads, self.head_dim)  # [T, H_kv, D]
        q = q * cos + _rotate_half(q) * sin  # [T, H, D]
        k = k * cos + _rotate_half(k) * sin  # [T, H_kv, D]
        keys = self._repeat_kv(torch.cat([past_k, k], dim=0))  # [P+T, H, D]
        values = self._repeat_kv(torch.cat([past_v, v], dim=0))  # [P+T, H, D]
        scores = q.transpose(0, 1) @ keys.permute(1, 2, 0)  # [H, T, P+T]
        scores = scores * self.scale + mask_bias  # [H, T, P+T]
        probs = torch.softmax(scores, dim=-1)  # [H, T, P+T]
        att = probs @ values.transpose(0, 1)  # [H, T, D]
        att = att.transpose(0, 1).reshape(t, -1) @ self.w_o  # [T, E]
        if self.b_o is not None:
            att = att + self.b_o  # [T, E]
        x = x + att  # [T, E]
        gu = self.norm_2(x) @ self.w_gate_up  # [T, 2F]
        if self.b_gate_up is not None:
            gu = gu + self.b_gate_up  # [T, 2F]
        gate, up = gu.chunk(2, dim=-1)  # 2 x [T, F]
        mlp = (torch.nn.functional.silu(gate) * up) @ self.w_down  # [T, E]
        if self.b_down is not None:
            mlp = mlp + self.b_down  # [T, E]
        return x + mlp, k, v


class LlamaGraph(nn.Module):
    """forward(input_ids, position_ids, tree_mask, past_key.0, past_value.0, ...) ->
    (logits, topk_values, topk_indices, new_key.0, new_value.0, ...)."""

    def __init__(self, dims: LlamaDims, topk: int, tied: bool):
        super().__init__()
        self.dims, self.topk = dims, topk
        self.embed = nn.Parameter(torch.empty(dims.vocab_size, dims.hidden))  # [V, E]
        self.blocks = nn.ModuleList(Block(dims) for _ in range(dims.n_layers))
        self.norm = RMSNorm(dims.hidden, dims.eps)
        self.lm_head = None if tied else nn.Parameter(torch.empty(dims.vocab_size, dims.hidden))
        # A plain attribute, not a buffer: `.to(fp16)` must not round the frequencies.
        d = dims.head_dim
        self.inv_freq = 1.0 / dims.theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d)

    def _rope(self, position_ids, dtype):
        # position_ids [T] int64 -> cos, sin [T, 1, D], computed in fp32 like transformers
        freqs = position_ids.float()[:, None] * self.inv_freq[None, :]  # [T, D/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [T, D]
        return emb.cos().to(dtype)[:, None, :], emb.sin().to(dtype)[:, None, :]  # [T, 1, D] x2

    def forward(self, input_ids, position_ids, tree_mask, *past):
        # input_ids [T] int64; position_ids [T] int64; tree_mask [T, P+T] bool
        # past: past_key.0 [P, H_kv, D], past_value.0 [P, H_kv, D], past_key.1, ...
        x = self.embed[input_ids]  # [T, E]
        rope = self._rope(position_ids, x.dtype)  # cos, sin [T, 1, D]
        mask_bias = (~tree_mask).to(x.dtype) * MASK_FILL[x.dtype]  # [T, P+T]: 0 or fill
        new_kv = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, rope, mask_bias, past[2 * i], past[2 * i + 1])  # k, v [T, H_kv, D]
            new_kv += [k, v]
        x = self.norm(x)  # [T, E]
        head = self.embed if self.lm_head is None else self.lm_head  # [V, E]
        logits = (head @ x.t()).t()  # [T, V] (weight-side product: no transposed copy of head)
        topk_values, topk_indices = torch.topk(logits, self.topk, dim=-1)  # [T, K], [T, K]
        return (logits, topk_values, topk_indices, *new_kv)


def _copy_block(block: Block, sd: dict, prefix: str) -> None:
    a, m = prefix + "self_attn.", prefix + "mlp."
    block.norm_1.weight.copy_(sd[prefix + "input_layernorm.weight"])
    block.norm_2.weight.copy_(sd[prefix + "post_attention_layernorm.weight"])
    qkv = [sd[f"{a}{n}_proj.weight"] for n in "qkv"]  # [out, in] each
    block.w_qkv.copy_(torch.cat(qkv, dim=0).t())  # [E, (H+2H_kv)D]
    block.w_o.copy_(sd[a + "o_proj.weight"].t())  # [HD, E]
    block.w_gate_up.copy_(torch.cat([sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"]]).t())
    block.w_down.copy_(sd[m + "down_proj.weight"].t())  # [F, E]
    if block.b_qkv is not None:
        block.b_qkv.copy_(torch.cat([sd[f"{a}{n}_proj.bias"] for n in "qkv"]))
        block.b_o.copy_(sd[a + "o_proj.bias"])
    if block.b_gate_up is not None:
        block.b_gate_up.copy_(torch.cat([sd[m + "gate_proj.bias"], sd[m + "up_proj.bias"]]))
        block.b_down.copy_(sd[m + "down_proj.bias"])


def build_llama_graph(hf_model, topk: int, dtype: torch.dtype) -> LlamaGraph:
    """Copy the weights of a transformers ``LlamaForCausalLM`` into a :class:`LlamaGraph`."""
    cfg = hf_model.config
    dims = LlamaDims.from_config(cfg)
    sd = {k.removeprefix("model."): v for k, v in hf_model.state_dict().items()}
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    graph = LlamaGraph(dims, min(topk, dims.vocab_size), tied=tied)
    hf_freq = getattr(getattr(hf_model.model, "rotary_emb", None), "inv_freq", None)
    if hf_freq is not None and not torch.allclose(hf_freq.float(), graph.inv_freq, rtol=1e-6):
        raise StagedxError("Llama rotary frequencies differ from transformers' (unsupported RoPE)")
    with torch.no_grad():
        graph.embed.copy_(sd["embed_tokens.weight"])
        graph.norm.weight.copy_(sd["norm.weight"])
        if not tied:
            graph.lm_head.copy_(hf_model.lm_head.weight)
        for i, block in enumerate(graph.blocks):
            _copy_block(block, sd, f"layers.{i}.")
    return graph.to(dtype).eval()
