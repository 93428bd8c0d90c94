"""Per-call cost of exported graphs in ONNX Runtime (CPU, the runtime's session options).

    python docs/results/smoldraft/time_calls.py ORACLE.onnx DRAFT.onnx [DRAFT2.onnx ...] \
        [--threads 2] [--past 128] [--tokens 1] [--rounds 200]

Each graph gets ``--tokens`` new tokens on top of ``--past`` random cached rows (a chain draft
call is 1 token). The graphs are called in turn, round after round (so a change in machine load
hits all of them alike), and the median milliseconds per call are printed, with each graph's
median as a percentage of the first one's. Run it under ``flock /work/timing.lock``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort


def _session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def _feeds(sess: ort.InferenceSession, past: int, tokens: int) -> dict:
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in sess.get_inputs():
        if inp.name == "input_ids":
            feeds[inp.name] = rng.integers(0, 1000, tokens).astype(np.int64)  # [T]
        elif inp.name == "position_ids":
            feeds[inp.name] = np.arange(past, past + tokens, dtype=np.int64)  # [T]
        elif inp.name == "tree_mask":
            feeds[inp.name] = np.tril(np.ones((tokens, past + tokens), bool), k=past)  # [T, P+T]
        else:  # past_key.i / past_value.i [P, H_kv, D]
            h, d = inp.shape[1], inp.shape[2]
            dtype = np.float16 if "float16" in inp.type else np.float32
            feeds[inp.name] = rng.standard_normal((past, h, d)).astype(dtype)
    return feeds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graphs", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--past", type=int, default=128)
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    sessions = [_session(g, args.threads) for g in args.graphs]
    feeds = [_feeds(s, args.past, args.tokens) for s in sessions]
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(args.rounds + 10):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            t = time.perf_counter()
            s.run(None, f)
            if r >= 10:  # warm-up rounds
                times[i].append(time.perf_counter() - t)
    base = statistics.median(times[0])
    for g, ts in zip(args.graphs, times):
        med = statistics.median(ts)
        print(f"{med * 1e3:8.3f} ms/call  {100 * med / base:6.1f}%  {g}")


if __name__ == "__main__":
    main()
