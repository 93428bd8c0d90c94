"""A draft graph whose LM head scores only a small vocabulary (FR-Spec), with outputs in the
full vocabulary's id space so the graph contract and the runtime stay as they are.

``restrict_head`` gives the graph three extra parameters: ``head_rows`` [N, E] (the head's rows
for the ids, stored once: the full [V, E] embedding is still needed for the input side),
``head_ids`` [N] int64 and ``head_slot`` [V] int64 (each id's row, N for the rest). The
forward then computes
    small = x @ head_rows^T                      [T, N]
    logits = concat(small, fill)[:, head_slot]   [T, V]  (fill = MASK_FILL: q is 0 outside)
    topk_values, pos = topk(small, K); topk_indices = head_ids[pos]
so its cost is N/V of the full head's product plus one gather, and the top-k never leaves the
head's ids. ``fill`` is at or below ``numerics.OUT_OF_HEAD``, which the parity measure uses to
compare only the scored ids.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import StagedxError
from .gpt2 import MASK_FILL


def restrict_head(graph, ids) -> None:
    """Give ``graph`` (a LlamaGraph, weights in place) a head over the ids ``ids`` only."""
    head = graph.embed if graph.lm_head is None else graph.lm_head  # [V, E]
    vocab = head.shape[0]
    ids_t = torch.as_tensor(ids, dtype=torch.long)  # [N]
    if graph.topk > len(ids_t):
        raise StagedxError(f"the draft's head has {len(ids_t)} ids, fewer than the bundle's top-k {graph.topk}")
    slot = torch.full((vocab,), len(ids_t), dtype=torch.long)  # [V]
    slot[ids_t] = torch.arange(len(ids_t))
    graph.head_rows = nn.Parameter(head.detach()[ids_t].clone(), requires_grad=False)  # [N, E]
    graph.head_ids = nn.Parameter(ids_t, requires_grad=False)  # [N]
    graph.head_slot = nn.Parameter(slot, requires_grad=False)  # [V]


def small_head_outputs(graph, x):
    """(logits [T, V], topk_values [T, K], topk_indices [T, K]) of normed hidden states x [T, E]."""
    small = (graph.head_rows @ x.t()).t()  # [T, N] (weight-side product, as for the full head)
    fill = torch.full_like(small[:, :1], MASK_FILL[x.dtype])  # [T, 1]
    logits = torch.cat([small, fill], dim=-1)[:, graph.head_slot]  # [T, V]
    values, pos = torch.topk(small, graph.topk, dim=-1)  # [T, K], [T, K]
    return logits, values, graph.head_ids[pos]  # [T, V], [T, K], [T, K]
