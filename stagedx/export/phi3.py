"""Phi-3 (mini / medium, 4k variants) for export: Mistral's graph (:mod:`.mistral`, Llama forward
plus sliding window) read from fused checkpoint tensors.

Phi-3 stores q|k|v as one ``qkv_proj`` and gate|up as one ``gate_up_proj``, in the order our
graph fuses them anyway, so only the weight mapping differs. Phi-3-mini-4k has
``sliding_window: 2047``. The 128k variants (``rope_scaling`` type ``longrope``) and a
``partial_rotary_factor`` below 1 (Phi-4-mini) are refused in :mod:`.configs`.
"""

from __future__ import annotations

import torch

from .configs import decoder_dims
from .llama import build_decoder_graph, check_frequencies
from .mistral import MistralGraph


def build_phi3_graph(cfg: dict, weights, topk: int, dtype: torch.dtype) -> MistralGraph:
    """The graph of a ``Phi3ForCausalLM`` checkpoint (config.json dict + its weights)."""
    dims = decoder_dims(cfg, "phi3")
    graph = build_decoder_graph(MistralGraph, dims, weights, topk, dtype, fused=True)
    check_frequencies(graph, cfg)
    return graph
