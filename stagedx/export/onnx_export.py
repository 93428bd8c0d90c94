"""Write one graph-contract module to ONNX (opset 18, dynamic T and P, batch size 1).

We use the TorchScript exporter (``dynamo=False``): with torch 2.13 it exports our plain
module in a fraction of a second, keeps the names and dynamic axes we give it and needs no
onnxscript.

Memory: the exporter is asked for the graph *without* its weights (``export_params=False``:
they come out as extra graph inputs named like the module's parameters), and we then turn
those inputs into initializers ourselves, streaming each tensor from the module straight to
disk. Peak memory is the module's weights plus one small graph, never a second copy of the
weights in a protobuf. Graphs with at least ``EXTERNAL_FROM`` bytes of weights keep them in one
external data file ``<name>.onnx.data`` next to the graph (files are created with the
process umask, like every other bundle file); smaller graphs stay one self-contained file.
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..errors import StagedxError
from ..manifest import DEFAULT_IO, ArchDims, GraphIO
from .head import to_right_operand

OPSET = 18
EXTERNAL_FROM = 1 << 28  # 256 MiB: bigger graphs keep their weights in an external data file
ALIGN = 64  # byte alignment of each tensor in the external data file
EXPORT_T, EXPORT_P = 3, 2  # dummy sizes, both >= 2 so the exporter keeps them symbolic


@dataclass(frozen=True)
class ExportedGraph:
    file: Path
    external_data: Path | None
    weight_bytes: int  # bytes of the graph's initializers (its weights as stored)
    n_params: int  # parameters of the checkpoint (tied matrices counted once)


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    """Input and output names, in the positional order of the module's forward."""
    io = GraphIO.from_io(DEFAULT_IO, n_layers)
    return list(io.inputs), list(io.outputs)


def _dummy_inputs(dims: ArchDims, dtype):
    import torch

    t, p = EXPORT_T, EXPORT_P
    mask = torch.ones(t, p + t, dtype=torch.bool)  # [T, P+T]
    past = [
        torch.zeros(p, dims.n_kv_heads, dims.head_dim, dtype=dtype)  # [P, H, D]
        for _ in range(2 * dims.n_layers)
    ]
    return (torch.zeros(t, dtype=torch.long), torch.arange(p, p + t), mask, *past)


def _dynamic_axes(inputs: list[str], outputs: list[str]) -> dict:
    axes = {inputs[0]: {0: "T"}, inputs[1]: {0: "T"}, inputs[2]: {0: "T", 1: "P_plus_T"}}
    axes.update({name: {0: "P"} for name in inputs[3:]})
    axes.update({name: {0: "T"} for name in outputs})
    return axes


def _unique_parameters(module) -> dict:
    """name -> tensor, each shared (tied) parameter once under its first name."""
    return {name: p.detach() for name, p in module.named_parameters()}


def _initializer(name: str, tensor, data_file, offset: int):
    """A TensorProto for ``tensor``: inline raw bytes, or (``data_file`` open) a reference to
    bytes appended to the external data file at ``offset``; returns (proto, bytes written)."""
    from onnx import TensorProto, helper

    array = tensor.contiguous().numpy()
    proto = TensorProto(name=name, dims=list(array.shape), data_type=helper.np_dtype_to_tensor_dtype(array.dtype))
    if data_file is None:
        proto.raw_data = array.tobytes()
        return proto, 0
    pad = -offset % ALIGN
    data_file.write(b"\0" * pad)
    data_file.write(memoryview(array.reshape(-1)).cast("B"))
    proto.data_location = TensorProto.EXTERNAL
    for key, value in (
        ("location", data_file.name_in_graph),
        ("offset", str(offset + pad)),
        ("length", str(array.nbytes)),
    ):
        entry = proto.external_data.add()
        entry.key, entry.value = key, value
    return proto, pad + array.nbytes


class _DataFile:
    """The external data file, written sequentially."""

    def __init__(self, path: Path):
        self.path, self.name_in_graph = path, path.name
        self._f = open(path, "wb")  # noqa: SIM115 - closed in close()

    def write(self, data) -> None:
        self._f.write(data)

    def close(self) -> None:
        self._f.close()


def _attach_weights(model, params: dict, external: Path | None) -> None:
    """Move the parameter inputs of ``model`` into initializers (inline or external)."""
    weight_inputs = [i for i in model.graph.input if i.name in params]
    for i in weight_inputs:
        model.graph.input.remove(i)
    data_file = _DataFile(external) if external is not None else None
    offset = 0
    try:
        for name in [i.name for i in weight_inputs]:
            proto, written = _initializer(name, params[name], data_file, offset)
            offset += written
            model.graph.initializer.append(proto)
    finally:
        if data_file is not None:
            data_file.close()


def export_graph(module, dims: ArchDims, out_file: Path, work_dir: Path) -> ExportedGraph:
    """Export ``module`` (graph contract) to ``out_file``; ``work_dir`` is scratch space."""
    import onnx
    import torch

    params = _unique_parameters(module)
    dtype = next(iter(params.values())).dtype
    weight_bytes = sum(p.numel() * p.element_size() for p in params.values())
    n_params = sum(p.numel() for p in params.values())
    inputs, outputs = io_names(dims.n_layers)
    raw_dir = work_dir / out_file.stem
    raw_dir.mkdir(parents=True, exist_ok=True)
    raw = raw_dir / "model.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            _dummy_inputs(dims, dtype),
            str(raw),
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=_dynamic_axes(inputs, outputs),
            export_params=False,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(raw))  # the graph alone: its weights are still inputs
    shutil.rmtree(raw_dir, ignore_errors=True)
    missing = set(params) - {i.name for i in model.graph.input}
    if missing:  # a parameter the trace did not use, or renamed: never ship a graph without it
        raise StagedxError(
            f"{out_file.stem}: the ONNX trace merged or dropped parameters {sorted(missing)[:3]} "
            "(equal tensors are deduplicated by the exporter); nothing written"
        )
    to_right_operand(model.graph, params.__contains__)  # the LM head's fast form (head.py)
    external = out_file.with_name(out_file.name + ".data") if weight_bytes >= EXTERNAL_FROM else None
    _attach_weights(model, params, external)
    if external is None:
        onnx.checker.check_model(model)
    onnx.save_model(model, str(out_file))
    if external is not None:
        onnx.checker.check_model(str(out_file))
    return ExportedGraph(out_file, external, weight_bytes, n_params)
