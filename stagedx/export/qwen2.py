"""Qwen2 / Qwen2.5 for export: the Llama forward of :mod:`.llama` with a bias on q/k/v only.

Qwen2's decoder differs from Llama's in its projections' biases alone: q_proj, k_proj and
v_proj carry one, o_proj and the MLP do not (``DecoderDims.qkv_bias`` / ``o_bias``). The head
is tied (0.5B, 1.5B, 3B) or not (7B and up). ``use_sliding_window: true`` is refused in
:mod:`.configs` (released checkpoints set it false; when true, transformers windows only the
layers from ``max_window_layers`` on).
"""

from __future__ import annotations

import torch

from .configs import decoder_dims
from .llama import LlamaGraph, build_decoder_graph, check_frequencies


def build_qwen2_graph(cfg: dict, weights, topk: int, dtype: torch.dtype) -> LlamaGraph:
    """The graph of a ``Qwen2ForCausalLM`` checkpoint (config.json dict + its weights)."""
    graph = build_decoder_graph(LlamaGraph, decoder_dims(cfg, "qwen2"), weights, topk, dtype)
    check_frequencies(graph, cfg)
    return graph
