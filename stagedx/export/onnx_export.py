"""Write one graph-contract module to ONNX (opset 18, dynamic T and P, batch size 1).

We use the TorchScript exporter (``dynamo=False``): with torch 2.13 it exports our plain
module in a fraction of a second, keeps the names and dynamic axes we give it and needs no
onnxscript. Graphs whose weights pass 2 GB are re-saved with one external data file
``<name>.onnx.data`` next to the graph.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..manifest import DEFAULT_IO, ArchDims

OPSET = 18
PROTO_LIMIT = 2**31  # protobuf's hard limit on one serialised message
EXPORT_T, EXPORT_P = 3, 2  # dummy sizes, both >= 2 so the exporter keeps them symbolic


@dataclass(frozen=True)
class ExportedGraph:
    file: Path
    external_data: Path | None
    weight_bytes: int  # bytes of the graph's initializers (its weights as stored)
    n_params: int  # parameters of the checkpoint (tied matrices counted once)


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    """Input and output names, in the positional order of the module's forward."""
    io = DEFAULT_IO
    kv_in, kv_out = [], []
    for i in range(n_layers):
        kv_in += [io["past_key"].format(i=i), io["past_value"].format(i=i)]
        kv_out += [io["new_key"].format(i=i), io["new_value"].format(i=i)]
    inputs = [io["input_ids"], io["position_ids"], io["tree_mask"], *kv_in]
    outputs = [io["logits"], io["topk_values"], io["topk_indices"], *kv_out]
    return inputs, outputs


def _dummy_inputs(dims: ArchDims, dtype):
    import torch

    t, p = EXPORT_T, EXPORT_P
    mask = torch.ones(t, p + t, dtype=torch.bool)  # [T, P+T]
    past = [torch.zeros(p, dims.n_kv_heads, dims.head_dim, dtype=dtype)  # [P, H, D]
            for _ in range(2 * dims.n_layers)]
    return (torch.zeros(t, dtype=torch.long), torch.arange(p, p + t), mask, *past)


def _dynamic_axes(inputs: list[str], outputs: list[str]) -> dict:
    axes = {inputs[0]: {0: "T"}, inputs[1]: {0: "T"}, inputs[2]: {0: "T", 1: "P_plus_T"}}
    axes.update({name: {0: "P"} for name in inputs[3:]})
    axes.update({name: {0: "T"} for name in outputs})
    return axes


def _initializer_bytes(model) -> int:
    import numpy as np
    from onnx import helper

    total = 0
    for t in model.graph.initializer:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
        total += int(np.prod(t.dims, dtype=np.int64)) * itemsize
    return total


def export_graph(module, dims: ArchDims, out_file: Path, work_dir: Path) -> ExportedGraph:
    """Export ``module`` (graph contract) to ``out_file``; ``work_dir`` is scratch space."""
    import onnx
    import torch

    dtype = next(module.parameters()).dtype
    inputs, outputs = io_names(dims.n_layers)
    raw_dir = work_dir / out_file.stem
    raw_dir.mkdir(parents=True, exist_ok=True)
    raw = raw_dir / "model.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, _dummy_inputs(dims, dtype), str(raw),
            input_names=inputs, output_names=outputs,
            dynamic_axes=_dynamic_axes(inputs, outputs),
            opset_version=OPSET, do_constant_folding=True, dynamo=False,
        )
    model = onnx.load(str(raw))  # pulls in any external tensors the exporter wrote
    weight_bytes = _initializer_bytes(model)
    external = None
    if weight_bytes + (64 << 20) >= PROTO_LIMIT:
        external = out_file.with_name(out_file.name + ".data")
        onnx.save_model(model, str(out_file), save_as_external_data=True,
                        all_tensors_to_one_file=True, location=external.name, size_threshold=1024)
        onnx.checker.check_model(str(out_file))
    else:
        onnx.checker.check_model(model)
        onnx.save_model(model, str(out_file))
    shutil.rmtree(raw_dir, ignore_errors=True)
    seen, n_params = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n_params += p.numel()
    return ExportedGraph(out_file, external, weight_bytes, n_params)
