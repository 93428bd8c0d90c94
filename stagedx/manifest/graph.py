"""The graph contract: the one ordered list of a model graph's inputs and outputs, the
precisions a bundle may hold and how each stage names them, and the parity tolerance.

Every neural model, batch size 1:
  inputs  input_ids [T] int64, position_ids [T] int64, tree_mask [T, P+T] bool (True = may
          attend), past_key.{i} / past_value.{i} [P, H_kv, D] (model dtype)
  outputs logits [T, V] and topk_values [T, K] in the model dtype (an fp16 bundle returns
          fp16 logits; ModelEntry.dtype says which), topk_indices [T, K] int64,
          new_key.{i} / new_value.{i} [T, H_kv, D] for the new tokens only.
Stdlib only, like the rest of ``stagedx.manifest``.
"""

from __future__ import annotations

from dataclasses import dataclass

DTYPES = ("fp32", "fp16")
NUMPY_DTYPE = {"fp32": "float32", "fp16": "float16"}  # np.dtype(NUMPY_DTYPE[entry.dtype])
ORT_TYPE = {"fp32": "tensor(float)", "fp16": "tensor(float16)"}  # ONNX Runtime's type strings
# relative logit tolerance (max|ours - ref| / max|ref|) per precision. int8 / int4 (export
# --quantize): the reference is ONNX Runtime CPU's own run of the quantized graph, and its
# int8-activation kernels turn 1e-7 upstream rounding into ~1e-3 jumps
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8": 2e-2, "int4": 2e-2}
KV_KEYS = ("past_key", "past_value", "new_key", "new_value")  # per-layer io names ({i})

DEFAULT_IO = {
    "input_ids": "input_ids",
    "position_ids": "position_ids",
    "tree_mask": "tree_mask",
    "past_key": "past_key.{i}",
    "past_value": "past_value.{i}",
    "logits": "logits",
    "topk_values": "topk_values",
    "topk_indices": "topk_indices",
    "new_key": "new_key.{i}",
    "new_value": "new_value.{i}",
}


@dataclass(frozen=True)
class GraphIO:
    """Every graph input and output name of a model, resolved; ``inputs`` / ``outputs`` are in
    the positional order of the exported module's forward (the one ordered I/O list)."""

    input_ids: str
    position_ids: str
    tree_mask: str
    logits: str
    topk_values: str
    topk_indices: str
    past_key: tuple[str, ...]  # one name per layer
    past_value: tuple[str, ...]
    new_key: tuple[str, ...]
    new_value: tuple[str, ...]

    @staticmethod
    def from_io(io: dict, n_layers: int) -> GraphIO:
        """From a ``ModelEntry.io`` map (``DEFAULT_IO`` for a fresh export)."""
        scalars = {k: io[k] for k in DEFAULT_IO if k not in KV_KEYS}
        per_layer = {k: tuple(io[k].format(i=i) for i in range(n_layers)) for k in KV_KEYS}
        return GraphIO(**scalars, **per_layer)

    @property
    def past(self) -> tuple[str, ...]:
        """past_key.0, past_value.0, past_key.1, ..."""
        return tuple(n for pair in zip(self.past_key, self.past_value) for n in pair)

    @property
    def new(self) -> tuple[str, ...]:
        """new_key.0, new_value.0, new_key.1, ..."""
        return tuple(n for pair in zip(self.new_key, self.new_value) for n in pair)

    @property
    def inputs(self) -> tuple[str, ...]:
        return (self.input_ids, self.position_ids, self.tree_mask, *self.past)

    @property
    def outputs(self) -> tuple[str, ...]:
        return (self.logits, self.topk_values, self.topk_indices, *self.new)
