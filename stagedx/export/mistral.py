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

from .attention import split_mask
from .configs import decoder_dims
from .llama import LlamaGraph, build_decoder_graph, check_frequencies


def window_masks(past_allowed, new_allowed, position_ids, window: int):
    """The two parts of the tree mask (past ``[T, P]``, new ``[T, T]``) with the keys
    ``window`` or more positions back masked out; no [T, P+T] tensor is formed."""
    # past_allowed [T, P] bool; new_allowed [T, T] bool; position_ids [T] int64
    past = past_allowed.shape[1]  # P
    rows = torch.arange(past, device=position_ids.device)  # [P]
    past_pos = rows - past + position_ids.min()  # [P]: positions of the past rows
    near_past = (position_ids[:, None] - past_pos[None, :]) < window  # [T, P]
    near_new = (position_ids[:, None] - position_ids[None, :]) < window  # [T, T]
    return past_allowed & near_past, new_allowed & near_new  # [T, P], [T, T]


def window_mask(tree_mask, position_ids, window: int):
    """``tree_mask`` ``[T, P+T]`` with the keys ``window`` or more positions back masked out."""
    # tree_mask [T, P+T] bool; position_ids [T] int64
    past, new = window_masks(*split_mask(tree_mask), position_ids, window)  # [T, P], [T, T]
    return torch.cat([past, new], dim=1)  # [T, P+T]


class MistralGraph(LlamaGraph):
    """LlamaGraph whose attention also masks keys outside the sliding window."""

    def attention_mask(self, tree_mask, position_ids):
        parts = split_mask(tree_mask)  # [T, P], [T, T]
        if self.dims.window is None:
            return parts
        return window_masks(*parts, position_ids, self.dims.window)  # [T, P], [T, T]


def build_mistral_graph(cfg: dict, weights, topk: int, dtype: torch.dtype) -> MistralGraph:
    """The graph of a ``MistralForCausalLM`` checkpoint (config.json dict + its weights)."""
    graph = build_decoder_graph(MistralGraph, decoder_dims(cfg, "mistral"), weights, topk, dtype)
    check_frequencies(graph, cfg)
    return graph
