"""Which ONNX nodes read the bound past (past_key.* / past_value.*) in a bundle's oracle graph,
as exported and after ONNX Runtime's CPU optimizations; plus Concat / Expand / Tile counts.
Usage: python past_readers.py BUNDLE [BUNDLE ...]"""

import collections
import sys
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort


def readers(graph) -> collections.Counter:
    past = {i.name for i in graph.input if i.name.startswith("past_")}
    return collections.Counter(n.op_type for n in graph.node if past & set(n.input))


for bundle in sys.argv[1:]:
    path = Path(bundle) / "oracle.onnx"
    raw = onnx.load(str(path), load_external_data=False).graph
    copies = collections.Counter(n.op_type for n in raw.node if n.op_type in ("Concat", "Expand", "Tile"))
    with tempfile.TemporaryDirectory() as tmp:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        opts.add_session_config_entry("session.optimized_model_external_initializers_file_name", "opt.data")
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        opt = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph
    print(f"{bundle}: {len(raw.node)} nodes exported, {len(opt.node)} after ORT CPU optimization")
    print(f"  Concat / Expand / Tile nodes exported: {dict(copies)}")
    print(f"  readers of past_* as exported: {dict(readers(raw))}")
    print(f"  readers of past_* after optimization: {dict(readers(opt))}")
