"""Our own GPT-2 forward pass for export (nanoGPT / gpt-fast style), built from a checkpoint.

One call scores T new tokens against a past of P cached rows, following the graph contract
of ``docs/design.md``: batch size 1, no batch axis anywhere, K/V laid out ``[rows, H, D]``,
tree attention through an explicit ``[T, P+T]`` boolean mask (True = may attend). Attention is
:func:`stagedx.export.attention.attend` (plain ops, the past read in place, TensorRT-friendly).
Nothing here touches
transformers' cache classes: the weights are read out of the loaded checkpoint once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .attention import MASK_FILL as MASK_FILL  # re-exported: other families import it from here
from .attention import attend, attention_bias, split_mask


@dataclass(frozen=True)
class GPT2Dims:
    n_layers: int
    n_heads: int
    hidden: int
    vocab_size: int
    max_positions: int
    eps: float
    activation: str
    scale_by_inverse_layer: bool
    scale_attn: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @staticmethod
    def from_config(cfg: dict) -> GPT2Dims:
        """From a config.json dict (transformers' GPT2Config defaults for absent keys)."""
        return GPT2Dims(
            n_layers=int(cfg["n_layer"]),
            n_heads=int(cfg["n_head"]),
            hidden=int(cfg["n_embd"]),
            vocab_size=int(cfg["vocab_size"]),
            max_positions=int(cfg["n_positions"]),
            eps=float(cfg.get("layer_norm_epsilon", 1e-5)),
            activation=str(cfg.get("activation_function", "gelu_new")),
            scale_by_inverse_layer=bool(cfg.get("scale_attn_by_inverse_layer_idx", False)),
            scale_attn=bool(cfg.get("scale_attn_weights", True)),
        )


def _activation(name: str):
    if name in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "relu":
        return F.relu
    raise ValueError(f"unsupported GPT-2 activation_function {name!r}")


class Block(nn.Module):
    """One pre-LayerNorm transformer block; Conv1D weights keep GPT-2's [in, out] layout."""

    def __init__(self, dims: GPT2Dims, layer: int):
        super().__init__()
        e = dims.hidden
        self.n_heads, self.head_dim = dims.n_heads, dims.head_dim
        self.ln_1 = nn.LayerNorm(e, eps=dims.eps)
        self.ln_2 = nn.LayerNorm(e, eps=dims.eps)
        self.w_qkv = nn.Parameter(torch.empty(e, 3 * e))  # [E, 3E]
        self.b_qkv = nn.Parameter(torch.empty(3 * e))  # [3E]
        self.w_o = nn.Parameter(torch.empty(e, e))  # [E, E]
        self.b_o = nn.Parameter(torch.empty(e))  # [E]
        self.w_fc = nn.Parameter(torch.empty(e, 4 * e))  # [E, F]
        self.b_fc = nn.Parameter(torch.empty(4 * e))  # [F]
        self.w_proj = nn.Parameter(torch.empty(4 * e, e))  # [F, E]
        self.b_proj = nn.Parameter(torch.empty(e))  # [E]
        scale = 1.0 / math.sqrt(self.head_dim) if dims.scale_attn else 1.0
        if dims.scale_by_inverse_layer:
            scale /= float(layer + 1)
        self.scale = scale
        self.act = _activation(dims.activation)

    def forward(self, x, bias, past_k, past_v):
        # x [T, E]; bias = ([T, P], [T, T]) additive (0 or MASK_FILL); past_k / past_v [P, H, D]
        h = self.ln_1(x)  # [T, E]
        qkv = h @ self.w_qkv + self.b_qkv  # [T, 3E]
        q, k, v = qkv.split(self.n_heads * self.head_dim, dim=-1)  # 3 x [T, E]
        q = q.reshape(-1, self.n_heads, self.head_dim)  # [T, H, D]
        k = k.reshape(-1, self.n_heads, self.head_dim)  # [T, H, D]
        v = v.reshape(-1, self.n_heads, self.head_dim)  # [T, H, D]
        att = attend(q, k, v, (past_k, past_v), bias, self.scale)  # [T, E]
        x = x + att @ self.w_o + self.b_o  # [T, E]
        h = self.ln_2(x)  # [T, E]
        x = x + self.act(h @ self.w_fc + self.b_fc) @ self.w_proj + self.b_proj  # [T, E]
        return x, k, v


class GPT2Graph(nn.Module):
    """forward(input_ids, position_ids, tree_mask, past_key.0, past_value.0, ...) ->
    (logits, topk_values, topk_indices, new_key.0, new_value.0, ...)."""

    def __init__(self, dims: GPT2Dims, topk: int, tied: bool = True):
        super().__init__()
        self.dims, self.topk = dims, topk
        self.wte = nn.Parameter(torch.empty(dims.vocab_size, dims.hidden))  # [V, E]
        self.wpe = nn.Parameter(torch.empty(dims.max_positions, dims.hidden))  # [N, E]
        self.blocks = nn.ModuleList(Block(dims, i) for i in range(dims.n_layers))
        self.ln_f = nn.LayerNorm(dims.hidden, eps=dims.eps)
        # GPT-2 ties the output projection to wte; an untied checkpoint gets its own.
        self.lm_head = None if tied else nn.Parameter(torch.empty(dims.vocab_size, dims.hidden))

    def forward(self, input_ids, position_ids, tree_mask, *past):
        # input_ids [T] int64; position_ids [T] int64; tree_mask [T, P+T] bool
        # past: past_key.0 [P, H, D], past_value.0 [P, H, D], past_key.1, ...
        x = self.wte[input_ids] + self.wpe[position_ids]  # [T, E]
        allowed_past, allowed_new = split_mask(tree_mask)  # [T, P], [T, T]
        bias = attention_bias(allowed_past, allowed_new, 1, x.dtype)  # [G*T, P], [G*T, T]
        new_kv = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, bias, past[2 * i], past[2 * i + 1])  # x [T, E]; k, v [T, H, D]
            new_kv += [k, v]
        x = self.ln_f(x)  # [T, E]
        head = self.wte if self.lm_head is None else self.lm_head  # [V, E]
        # Multiply on the weight's side: `x @ head.t()` would make constant folding store a
        # transposed second copy of the tied [V, E] matrix in the graph.
        logits = (head @ x.t()).t()  # [T, V]
        topk_values, topk_indices = torch.topk(logits, self.topk, dim=-1)  # [T, K], [T, K]
        return (logits, topk_values, topk_indices, *new_kv)


_BLOCK_WEIGHTS = (
    ("ln_1", "weight", "ln_1.weight"),
    ("ln_1", "bias", "ln_1.bias"),
    ("ln_2", "weight", "ln_2.weight"),
    ("ln_2", "bias", "ln_2.bias"),
    (None, "w_qkv", "attn.c_attn.weight"),
    (None, "b_qkv", "attn.c_attn.bias"),
    (None, "w_o", "attn.c_proj.weight"),
    (None, "b_o", "attn.c_proj.bias"),
    (None, "w_fc", "mlp.c_fc.weight"),
    (None, "b_fc", "mlp.c_fc.bias"),
    (None, "w_proj", "mlp.c_proj.weight"),
    (None, "b_proj", "mlp.c_proj.bias"),
)


def build_gpt2_graph(cfg: dict, weights, topk: int, dtype: torch.dtype) -> GPT2Graph:
    """A :class:`GPT2Graph` in ``dtype`` holding the tensors of ``weights`` (name -> tensor,
    names without the ``transformer.`` prefix), read one at a time."""
    from .weights import put

    dims = GPT2Dims.from_config(cfg)
    tied = bool(cfg.get("tie_word_embeddings", True))
    with torch.device("meta"):  # no allocation until each weight is put in place
        graph = GPT2Graph(dims, min(topk, dims.vocab_size), tied=tied)
    if not tied:
        put(graph, "lm_head", weights["lm_head.weight"], dtype)
    put(graph, "wte", weights["wte.weight"], dtype)
    put(graph, "wpe", weights["wpe.weight"], dtype)
    put(graph.ln_f, "weight", weights["ln_f.weight"], dtype)
    put(graph.ln_f, "bias", weights["ln_f.bias"], dtype)
    for i, block in enumerate(graph.blocks):
        for sub, ours, theirs in _BLOCK_WEIGHTS:
            put(getattr(block, sub) if sub else block, ours, weights[f"h.{i}.{theirs}"], dtype)
    return graph.eval()
