"""Attention over a bound past, read in place: the one attention every family exports.

A call scores T new tokens against P cached rows. The past is never copied: there is no Concat
of past and new rows (which would write the whole past once per call) and no repeat of K/V
over the query heads of a grouped-query model (which would write it again H / H_kv times).
Instead the scores come in two blocks, softmaxed jointly:

- past block ``S_p = Q K_pastᵀ`` ``[H_kv, G*T, P]`` and new block ``S_n = Q K_newᵀ``
  ``[H_kv, G*T, T]``, with the G = H / H_kv query heads of each KV head stacked along the
  rows (a grouped matmul: query head ``j*G + g`` reads KV head ``j``, as transformers'
  ``repeat_kv``);
- one softmax over both blocks: ``m = max(max S_p, max S_n)``, ``E = exp(S - m)``,
  ``out = (E_p V_past + E_n V_new) / (sum E_p + sum E_n)``.

In ONNX the past enters each of its two matmuls through a Transpose that only moves the head
axis in front (``[P, H_kv, D] -> [H_kv, D, P]`` / ``[H_kv, P, D]``); ONNX Runtime fuses it into
the matmul (``FusedMatMul`` with ``transBatchB``, strided GEMM), so on its CPU EP the bound
past is only ever read by two matmuls. The graph's K/V outputs stay the new rows alone: the
runtime commits the accepted ones into its cache (``runtime/kv.py``).

ONNX Runtime's fused attention operators were considered and not used: the contrib
``GroupQueryAttention`` / ``MultiHeadAttention`` and the ONNX ``Attention`` op (opset 23) take
their past head-major (``[B, H_kv, P, D]``) and return a present that holds past + new (a copy,
unless the past / present share a max-length buffer, which ``GroupQueryAttention`` supports
only with its own causal / sequence-length masking). Our cache keeps ``[rows, H_kv, D]`` so that
the live prefix is one contiguous view; a tree mask is an arbitrary ``[T, P+T]`` pattern. This
plain-ops graph is the reference and runs on every backend (CPU, CUDA, TensorRT).

Masks come in as additive biases, ``0`` where a query may attend and ``MASK_FILL`` (large,
finite) where it may not; each row sees at least itself, so no row is fully masked.
"""

from __future__ import annotations

import torch

# Masked scores get a large negative *finite* value (never -inf): softmax stays NaN-free and
# TensorRT / fp16 handle it. Each row always sees itself, so no row is fully masked.
MASK_FILL = {torch.float32: -1.0e9, torch.float16: -3.0e4}


def split_mask(tree_mask):
    """``[T, P+T]`` (past columns first) -> (past part ``[T, P]``, new part ``[T, T]``)."""
    t = tree_mask.shape[0]
    p = tree_mask.shape[1] - t
    return tree_mask[:, :p], tree_mask[:, p:]  # [T, P], [T, T]


def attention_bias(allowed_past, allowed_new, groups: int, dtype):
    """The additive biases :func:`attend` takes, built once per graph call: 0 where a query may
    attend, ``MASK_FILL`` where not, each row repeated for the ``groups`` query heads that share
    a KV head (rows ``g*T + t``: head ``g`` of the group, token ``t``).

    allowed_past ``[T, P]`` / allowed_new ``[T, T]`` bool -> ``[G*T, P]``, ``[G*T, T]``."""
    t = allowed_new.shape[0]
    fill = MASK_FILL[dtype]
    past = (~allowed_past).to(dtype) * fill  # [T, P]
    new = (~allowed_new).to(dtype) * fill  # [T, T]
    if groups == 1:
        return past, new
    rows = torch.arange(groups * t, device=allowed_new.device) % t  # [G*T]: token of each row
    return past[rows], new[rows]  # [G*T, P], [G*T, T] (a gather: P never appears in a shape)


def attend(q, k, v, past, bias, scale: float):
    """Attention of the new tokens over the bound past and themselves.

    q ``[T, H, D]``; k, v ``[T, H_kv, D]`` (the new rows); ``past`` = (past_k, past_v), each
    ``[P, H_kv, D]``, read in place; ``bias`` = (past part ``[G*T, P]``, new part ``[G*T, T]``)
    from :func:`attention_bias`; ``scale`` multiplies the scores. Returns ``[T, H*D]``, heads
    in order (query head ``j*G + g`` on KV head ``j``). No reshape here has P in its target
    shape: ONNX reads a 0 there as "keep this axis", so a prefill (P = 0) would break.
    """
    past_k, past_v = past
    bias_past, bias_new = bias
    # head counts and sizes as Python ints, T as -1: the reshapes get constant shapes (no
    # Shape / Gather / Concat nodes per layer)
    h, d, hkv = int(q.shape[1]), int(q.shape[2]), int(k.shape[1])
    g = h // hkv
    qg = q.reshape(-1, hkv, g, d).permute(1, 2, 0, 3).reshape(hkv, -1, d)  # [H_kv, G*T, D]
    s_past = (qg @ past_k.permute(1, 2, 0)) * scale + bias_past  # [H_kv, G*T, P]
    s_new = (qg @ k.permute(1, 2, 0)) * scale + bias_new  # [H_kv, G*T, T]
    # joint max: an empty past (P = 0) reduces to -inf, and the new block always has a
    # finite score (each row sees itself)
    top = torch.maximum(s_past.amax(-1, keepdim=True), s_new.amax(-1, keepdim=True))  # [H_kv, G*T, 1]
    e_past = torch.exp(s_past - top)  # [H_kv, G*T, P]
    e_new = torch.exp(s_new - top)  # [H_kv, G*T, T]
    total = e_past.sum(-1, keepdim=True) + e_new.sum(-1, keepdim=True)  # [H_kv, G*T, 1]
    out = e_past @ past_v.transpose(0, 1) + e_new @ v.transpose(0, 1)  # [H_kv, G*T, D]
    out = (out / total).reshape(hkv, g, -1, d)  # [H_kv, G, T, D]
    return out.permute(2, 0, 1, 3).reshape(-1, h * d)  # [T, H*D]
