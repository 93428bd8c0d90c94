"""Is the KV really kept on the device? (``device.py kvcheck``)

Time per oracle call against the committed past and against the tree size, for the runner
(KV bound by pointer where it lives) and for a plain ``session.run`` that sends the past from
the host every call; then ONNX Runtime's profiler: nodes per execution provider, CPU ops and
Memcpy nodes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def kvcheck(bundle: Path, device: str, out: Path, repeats: int = 20, pasts: tuple = (16, 128, 512, 960)) -> dict:
    """Time per oracle call against the committed past P (T = 1) and against the tree size T,
    for the runner (KV bound by pointer where it lives) and for a plain ``session.run`` that
    sends the past from the host and fetches the new rows back every call. Then one profiled
    runner: the graph's nodes per execution provider and its Memcpy nodes."""
    import numpy as np

    from stagedx.runtime.backends import ort as ort_runner
    from stagedx.runtime.bundle import open_bundle
    from stagedx.runtime.runner import chain_mask

    bdir, manifest = open_bundle(bundle)
    entry = manifest.models["oracle"]
    runner = ort_runner.OrtRunner(bdir, entry, device=device, threads=None, max_context=1024, reserved_slots=0)
    kv = runner._kv
    info = {"device": runner.device, "kv_store": type(kv).__name__}
    if hasattr(kv, "keys"):
        info["kv_ortvalue_device"] = kv.keys.device_name()
    rng = np.random.default_rng(0)
    vocab = entry.arch.vocab_size

    def timed(fn) -> float:
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    def fill(p: int) -> None:
        runner.truncate(0)
        if p:
            toks = rng.integers(0, vocab, p).astype(np.int64)
            runner.run(toks, np.arange(p), chain_mask(p))
            runner.commit(np.arange(p))

    io, a = entry.graph_io, entry.arch
    dt = np.float16 if entry.dtype == "fp16" else np.float32
    by_past = {}
    for p in pasts:
        fill(p)
        tok = rng.integers(0, vocab, 1).astype(np.int64)
        bound = timed(lambda p=p, tok=tok: runner.run(tok, np.array([p]), chain_mask(1)))
        past = np.zeros((p, a.n_kv_heads, a.head_dim), dt)  # [P, H, D]
        feeds = {io.input_ids: tok, io.position_ids: np.array([p]), io.tree_mask: np.ones((1, p + 1), bool)}
        feeds.update(dict.fromkeys(io.past, past))
        fetch = [io.topk_indices, *io.new_key, *io.new_value]
        host = timed(lambda feeds=feeds, fetch=fetch: runner.session.run(fetch, feeds))
        by_past[p] = {"runner_s": bound, "host_round_trip_s": host}
    info["time_vs_past_T1"] = by_past
    fill(128)
    by_t = {}
    for t in (1, 2, 4, 8, 16, 32, 64):
        toks = rng.integers(0, vocab, t).astype(np.int64)
        by_t[t] = timed(lambda toks=toks, t=t: runner.run(toks, 128 + np.arange(t), chain_mask(t)))
    info["time_vs_tree_P128"] = by_t
    info["t16_over_t1"] = by_t[16] / by_t[1]
    runner.close()
    info["profile"] = _profile(bdir, entry, device, out)
    return info


def _profile(bdir: Path, entry, device: str, out: Path) -> dict:
    """Run the oracle runner with ONNX Runtime's profiler on; count node events per provider."""
    import numpy as np
    import onnxruntime as ort

    from stagedx.runtime.backends import ort as ort_runner
    from stagedx.runtime.runner import chain_mask

    orig = ort_runner.make_session
    out.mkdir(parents=True, exist_ok=True)
    prefix = str(out / "ort-profile")

    def profiled(path, choice, threads):
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.enable_profiling = True
        opts.profile_file_prefix = prefix
        return ort.InferenceSession(str(path), sess_options=opts, providers=list(choice.providers))

    ort_runner.make_session = profiled
    try:
        runner = ort_runner.OrtRunner(bdir, entry, device=device, max_context=256)
    finally:
        ort_runner.make_session = orig
    runner.run(np.arange(32, dtype=np.int64), np.arange(32), chain_mask(32))
    runner.commit(np.arange(32))
    for i in range(8):
        runner.run(np.arange(16, dtype=np.int64), 32 + i + np.arange(16), chain_mask(16))
        runner.commit(np.array([0]))
    path = Path(runner.session.end_profiling())
    runner.close()
    events = json.loads(path.read_text())
    nodes: dict[str, int] = {}
    cpu_nodes, memcpy = set(), {}
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        prov = ev.get("args", {}).get("provider", "?")
        nodes[prov] = nodes.get(prov, 0) + 1
        op = ev.get("args", {}).get("op_name", "")
        if prov == "CPUExecutionProvider":
            cpu_nodes.add(op)
        if "Memcpy" in op:
            memcpy[op] = memcpy.get(op, 0) + 1
    size = path.stat().st_size
    path.unlink()  # large; the counts are what matter
    return {
        "node_events_by_provider": nodes,
        "cpu_ops": sorted(cpu_nodes),
        "memcpy_nodes": memcpy,
        "profile_bytes": size,
    }
