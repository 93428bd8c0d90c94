"""Shared by the parity tests of every architecture: score a chain in one call, and again in
two calls with the first call's K/V fed back as the past."""

from __future__ import annotations

import numpy as np

from stagedx.export.verify import run_onnx


def chain_feeds(tokens: np.ndarray, start: int, past: dict, n_layers: int, kv_shape: tuple) -> dict:
    """Graph inputs for a causal chain at positions ``start..``, after ``past`` (layer -> (k, v));
    ``kv_shape`` is (H_kv, D)."""
    t = len(tokens)
    empty = np.zeros((0, *kv_shape), np.float32)  # [0, H_kv, D]
    mask = np.concatenate([np.ones((t, start), bool), np.tril(np.ones((t, t), bool))], 1)  # [T, P+T]
    f = {"input_ids": tokens, "position_ids": np.arange(start, start + t), "tree_mask": mask}
    for i in range(n_layers):
        f[f"past_key.{i}"], f[f"past_value.{i}"] = past.get(i, (empty, empty))
    return f


def whole_and_split(onnx_file, ids: np.ndarray, n_layers: int, kv_shape: tuple, cut: int) -> tuple[dict, dict]:
    """Outputs of one call over ``ids``, and of the second of two calls split at ``cut``."""
    whole = run_onnx(onnx_file, chain_feeds(ids, 0, {}, n_layers, kv_shape))
    first = run_onnx(onnx_file, chain_feeds(ids[:cut], 0, {}, n_layers, kv_shape))
    past = {i: (first[f"new_key.{i}"], first[f"new_value.{i}"]) for i in range(n_layers)}
    return whole, run_onnx(onnx_file, chain_feeds(ids[cut:], cut, past, n_layers, kv_shape))
