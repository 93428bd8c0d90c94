"""Where an oracle call's time goes, by op type, at a short and a long past (ORT's profiler).

For each graph, call size T and past P: ONNX Runtime's CPU EP (all optimizations, 2 intra-op
threads, as the bench runs it), a random past, a causal tree mask; warm-up, then N profiled
calls. Prints ms per call by op type and the total of the kernels (sum of node times, which
excludes the session's own per-call overhead), plus the wall time per call.

usage: python profile_calls.py OUT.json GRAPH.onnx[=label] ... [--past 128,2048] [--t 1,17] [--n 30]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time
from collections import defaultdict

import numpy as np
import onnxruntime as ort


def feeds_for(sess, p: int, t: int) -> dict:
    rng = np.random.default_rng(0)
    feeds = {}
    for i in sess.get_inputs():
        if i.name.startswith("past_"):
            _, h, d = i.shape
            feeds[i.name] = rng.standard_normal((p, h, d)).astype(np.float32)
        elif i.name == "input_ids":
            feeds[i.name] = rng.integers(0, 1000, t).astype(np.int64)
        elif i.name == "position_ids":
            feeds[i.name] = np.arange(p, p + t, dtype=np.int64)
        elif i.name == "tree_mask":
            mask = np.ones((t, p + t), dtype=bool)
            mask[:, p:] = np.tril(mask[:, p:])
            feeds[i.name] = mask
    return feeds


def profile(graph: str, p: int, t: int, n: int) -> dict:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    work = tempfile.mkdtemp()
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(work, "prof")
    sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs() if o.name.startswith(("topk", "new_"))]
    feeds = feeds_for(sess, p, t)
    for _ in range(5):
        sess.run(outs, feeds)
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        sess.run(outs, feeds)
        walls.append(time.perf_counter() - t0)
    sess.end_profiling()
    (path,) = glob.glob(os.path.join(work, "prof*.json"))
    with open(path) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("name") == "model_run"]
    keep = {id(e) for e in runs[-n:]}
    start = min(e["ts"] for e in runs if id(e) in keep)
    by_op = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            by_op[e["args"]["op_name"]] += e["dur"] / 1e3 / n  # ms per call
    return {
        "wall_ms_median": 1e3 * float(np.median(walls)),
        "wall_ms_min": 1e3 * float(np.min(walls)),
        "kernels_ms": sum(by_op.values()),
        "by_op_ms": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("graphs", nargs="+")
    ap.add_argument("--past", default="128,2048")
    ap.add_argument("--t", default="1,17")
    ap.add_argument("--n", type=int, default=30)
    a = ap.parse_args()
    result = {}
    for g in a.graphs:
        path, _, label = g.partition("=")
        for t in (int(x) for x in a.t.split(",")):
            for p in (int(x) for x in a.past.split(",")):
                r = profile(path, p, t, a.n)
                key = f"{label or path} T={t} P={p}"
                result[key] = r
                top = ", ".join(f"{k} {v:.2f}" for k, v in list(r["by_op_ms"].items())[:7])
                print(
                    f"{key}: wall {r['wall_ms_median']:.2f} ms (min {r['wall_ms_min']:.2f}), "
                    f"kernels {r['kernels_ms']:.2f}: {top}"
                )
    with open(a.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
