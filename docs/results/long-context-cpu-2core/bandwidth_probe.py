"""Is the floor's bandwidth sound? Several ways to measure what 2 cores can stream, side by side.

- copy 1 thread: ``roofline.measure_bandwidth`` as the context bench uses it (np.copyto, read +
  write counted), at 256 MiB and at 1 GiB (beyond the last-level cache);
- copy 2 threads: the same copy split over two Python threads (np.copyto releases the GIL);
- read 2 threads (ORT): a MatMul of one row by a weight matrix of SIZE bytes (a GEMV: what a
  decode call does to every weight) on ONNX Runtime's CPU EP with 2 intra-op threads; bytes of
  the weight over the best time;
- read 2 threads (ORT, 16 rows): the same with 16 rows (a staged oracle call's size).

usage: python bandwidth_probe.py [OUT.json]
"""

from __future__ import annotations

import json
import sys
import threading
import time

import numpy as np

from stagedx.bench.roofline import measure_bandwidth


def copy_threads(mib: int, threads: int, repeats: int = 5) -> float:
    n = mib * (1 << 20) // 8
    src = np.ones(n, np.float64)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    parts = np.array_split(np.arange(n), threads)
    bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts]
    best = float("inf")
    for _ in range(repeats):
        ts = [threading.Thread(target=np.copyto, args=(dst[a:b], src[a:b])) for a, b in bounds]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def ort_gemv(weight_mb: int, rows: int, threads: int = 2, repeats: int = 10) -> float:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    k = 576
    n = weight_mb * 1_000_000 // (4 * k)
    w = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32) * 0.01
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", n])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    del w
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    raw = model.SerializeToString() if weight_mb < 1900 else None
    if raw is None:
        raise SystemExit("weight too large for one protobuf")
    sess = ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"])
    x = np.ones((rows, k), np.float32)
    sess.run(None, {"x": x})
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        best = min(best, time.perf_counter() - t0)
    return 4 * k * n / best


def main() -> None:
    out = {
        "copy_1thread_256MiB (bench floor)": measure_bandwidth(),
        "copy_1thread_1GiB": measure_bandwidth(1024),
        "copy_2threads_256MiB": copy_threads(256, 2),
        "copy_2threads_1GiB": copy_threads(1024, 2),
    }
    for mb in (538, 1500):
        for rows in (1, 16):
            out[f"ort_matmul_read_2threads_{mb}MB_T{rows}"] = ort_gemv(mb, rows)
    for k, v in out.items():
        print(f"{k:40s} {v / 1e9:6.2f} GB/s")
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            json.dump({k: v / 1e9 for k, v in out.items()}, f, indent=1)


if __name__ == "__main__":
    main()
