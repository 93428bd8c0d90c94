"""Parity of an exported graph with transformers' fp32 model on a random token tree.

The reference for tree node i is transformers run on the *linear* sequence
``past + ancestors(i) + i`` (all nodes in one right-padded batch): no 4-D mask support is
needed from transformers, and a graph that
lets a node see anything but its ancestors (a sibling, a cousin) is caught. The error measure
is ``max|ours - ref| / max|ref|`` over every logit of every node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import StagedxError
from ..manifest import NUMPY_DTYPE, TOLERANCE, ArchDims, ModelEntry
from ..numerics import OUT_OF_HEAD, rel_error


@dataclass(frozen=True)
class TreeCase:
    """A past of P tokens and a tree of T nodes (parents before children; -1 = root)."""

    past_ids: np.ndarray  # [P] int64
    tokens: np.ndarray  # [T] int64
    parents: np.ndarray  # [T] int64

    @property
    def n_past(self) -> int:
        return len(self.past_ids)

    def ancestors(self, i: int) -> list[int]:
        """Tree indices on the path root -> i, i included."""
        path = []
        while i >= 0:
            path.append(i)
            i = int(self.parents[i])
        return path[::-1]

    def position_ids(self) -> np.ndarray:
        return np.array(
            [self.n_past + len(self.ancestors(i)) - 1 for i in range(len(self.tokens))], dtype=np.int64
        )  # [T]

    def tree_mask(self) -> np.ndarray:
        t, p = len(self.tokens), self.n_past
        mask = np.zeros((t, p + t), dtype=bool)  # [T, P+T]
        mask[:, :p] = True
        for i in range(t):
            mask[i, [p + j for j in self.ancestors(i)]] = True
        return mask


def random_tree(vocab_size: int, n_past: int, n_nodes: int, seed: int = 0) -> TreeCase:
    """Random tokens and a random tree in which nodes 1 and 2 are always siblings."""
    rng = np.random.default_rng(seed)
    parents = np.array([-1] + [int(rng.integers(-1, i)) for i in range(1, n_nodes)], dtype=np.int64)
    if n_nodes >= 3:
        parents[1] = parents[2] = 0
    return TreeCase(
        past_ids=rng.integers(0, vocab_size, n_past, dtype=np.int64),
        tokens=rng.integers(0, vocab_size, n_nodes, dtype=np.int64),
        parents=parents,
    )


def _cache_layer(cache, i: int):
    if hasattr(cache, "layers"):  # transformers >= 4.56 Cache objects
        return cache.layers[i].keys, cache.layers[i].values
    return cache[i][0], cache[i][1]  # legacy tuple of (key, value) [1, H, P, D]


def reference_outputs(hf_model, case: TreeCase, n_layers: int) -> dict:
    """transformers fp32 logits per node [T, V] and the past K/V [P, H, D] per layer.

    One batched forward: row i is node i's sequence ``past + ancestors(i) + i``, right-padded.
    With causal attention no token sees the padding after it, so each row equals its sequence
    run alone. The past K/V (the prefix every row shares) is read from row 0 of the cache.
    """
    import inspect

    import torch
    from transformers import DynamicCache

    seqs = [np.concatenate([case.past_ids, case.tokens[case.ancestors(i)]]) for i in range(len(case.tokens))]
    batch = np.zeros((len(seqs), max(len(s) for s in seqs)), dtype=np.int64)  # [T, L], pad id 0
    for row, seq in enumerate(seqs):
        batch[row, : len(seq)] = seq
    # a plain cache keeps every row (a sliding-window model's default cache drops the rows
    # outside its window, but the graph's past is the whole committed sequence)
    cache = DynamicCache()
    key = "cache" if "cache" in inspect.signature(hf_model.forward).parameters else "past_key_values"
    with torch.no_grad():
        logits = hf_model(torch.from_numpy(batch), use_cache=True, **{key: cache}).logits  # [T, L, V]
    last = torch.tensor([len(s) - 1 for s in seqs])  # [T]
    out = {"logits": logits[torch.arange(len(seqs)), last].float().numpy()}  # [T, V]
    for i in range(n_layers if case.n_past else 0):
        k, v = _cache_layer(cache, i)  # [T, H, L, D]
        out[f"past_key.{i}"] = np.ascontiguousarray(k[0, :, : case.n_past].transpose(0, 1).float().numpy())  # [P, H, D]
        out[f"past_value.{i}"] = np.ascontiguousarray(
            v[0, :, : case.n_past].transpose(0, 1).float().numpy()
        )  # [P, H, D]
    return out


def reference_inputs(case: TreeCase, ref: dict, dims: ArchDims) -> dict:
    """Graph feeds in fp32 (as saved in reference.npz); an empty past when P = 0."""
    feeds = {"input_ids": case.tokens, "position_ids": case.position_ids(), "tree_mask": case.tree_mask()}
    for i in range(dims.n_layers):
        for kind in ("key", "value"):
            name = f"past_{kind}.{i}"
            empty = np.zeros((0, dims.n_kv_heads, dims.head_dim), dtype=np.float32)  # [0, H, D]
            feeds[name] = ref.get(name, empty)
    return feeds


def run_onnx(onnx_file, feeds: dict, dtype: str = "fp32") -> dict:
    """Run a graph with ONNX Runtime on CPU; float feeds are cast to the graph's dtype."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    # Memory, not speed: no graph optimisation (it would fold fp16 -> fp32 casts of every
    # weight into a second, fp32 copy of the model), no arena (it keeps every transient), and
    # the priority order (the default one runs all weight casts first and holds them together).
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.enable_cpu_mem_arena = False
    opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    sess = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    cast = {k: (v.astype(NUMPY_DTYPE[dtype]) if v.dtype.kind == "f" else v) for k, v in feeds.items()}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, cast)))


def check_outputs(outputs: dict, ref_logits: np.ndarray, topk: int) -> None:
    """Shape / consistency checks every graph must pass besides the logit error."""
    logits, values, indices = outputs["logits"], outputs["topk_values"], outputs["topk_indices"]
    t = ref_logits.shape[0]
    if logits.shape != ref_logits.shape or values.shape != (t, topk) or indices.shape != (t, topk):
        raise StagedxError(
            f"exported graph returned wrong shapes: logits {logits.shape}, "
            f"topk {values.shape}/{indices.shape}, expected {ref_logits.shape}/K={topk}"
        )
    gathered = np.take_along_axis(logits, indices, axis=1)  # [T, K]
    if not np.array_equal(gathered, values):
        raise StagedxError("exported graph's topk_values disagree with its logits")


def verify_graph(ref: dict, entry: ModelEntry, onnx_file, case: TreeCase) -> tuple[dict, dict]:
    """Compare the ONNX graph with transformers' outputs ``ref`` (:func:`reference_outputs`,
    computed before the export so that the transformers model is freed by now) on ``case``.

    Returns (the ``verify`` record for the manifest, the reference arrays for reference.npz);
    raises StagedxError above the dtype's tolerance.
    """
    feeds = reference_inputs(case, ref, entry.arch)
    outputs = run_onnx(onnx_file, feeds, entry.dtype)
    check_outputs(outputs, ref["logits"], entry.topk)
    err = rel_error(outputs["logits"], ref["logits"])
    tol = TOLERANCE[entry.dtype]
    record = {
        "max_rel_error": err,
        "tolerance": tol,
        "max_abs_logit": float(np.abs(ref["logits"][ref["logits"] > OUT_OF_HEAD]).max(initial=0.0)),
        "n_past": case.n_past,
        "n_nodes": int(len(case.tokens)),
    }
    if not err <= tol:  # also catches NaN
        raise StagedxError(
            f"{entry.role} failed verification: max logit error {err:.3g} relative to max|logit| "
            f"exceeds the {entry.dtype} tolerance {tol:g} (--no-verify skips this check)"
        )
    arrays = {**feeds, "logits": ref["logits"]}
    return record, arrays
