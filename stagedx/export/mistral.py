"""Mistral for export: the Llama forward of :mod:`.llama` plus sliding-window attention.

A token at position ``q`` attends a key at position ``k`` only when ``q - k < window``
(transformers' ``sliding_window_overlay``). The window is applied inside the graph, from
positions, so the runtime's mask and cache stay as for every other family:

- a new token's position is ``position_ids[t]``;
- the past rows are the committed sequence, contiguous and ending right before the first new
  token, whose position is ``min(position_ids)`` (the tree's root continues the past). Past row
  ``r`` of ``P`` therefore sits at position ``r - P + min(position_ids)``. Rows the runtime
  reserves in front of the committed ones (TensorRT's dummy row) get negative positions here;
  the tree mask already hides them.

Checkpoints with ``sliding_window: null`` (Mistral 7B v0.2 and later) attend everything.
"""

from __future__ import annotations

import torch

from .configs import decoder_dims
from .llama import LlamaGraph, build_decoder_graph, check_frequencies


def window_mask(tree_mask, position_ids, window: int):
    """``tree_mask`` with the keys ``window`` or more positions back masked out."""
    # tree_mask [T, P+T] bool; position_ids [T] int64
    t = position_ids.shape[0]
    columns = torch.arange(tree_mask.shape[1], device=position_ids.device)  # [P+T]
    past = tree_mask.shape[1] - t  # P
    row_pos = columns - past + position_ids.min()  # [P+T]: right for the past columns
    key_pos = torch.cat([row_pos[:past], position_ids])  # [P+T]
    near = (position_ids[:, None] - key_pos[None, :]) < window  # [T, P+T]
    return tree_mask & near  # [T, P+T]


class MistralGraph(LlamaGraph):
    """LlamaGraph whose attention also masks keys outside the sliding window."""

    def attention_mask(self, tree_mask, position_ids):
        if self.dims.window is None:
            return tree_mask  # [T, P+T]
        return window_mask(tree_mask, position_ids, self.dims.window)  # [T, P+T]


def build_mistral_graph(cfg: dict, weights, topk: int, dtype: torch.dtype) -> MistralGraph:
    """The graph of a ``MistralForCausalLM`` checkpoint (config.json dict + its weights)."""
    graph = build_decoder_graph(MistralGraph, decoder_dims(cfg, "mistral"), weights, topk, dtype)
    check_frequencies(graph, cfg)
    return graph
