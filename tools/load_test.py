#!/usr/bin/env python3
"""Bounded load test of ``stagedx serve`` on loopback: C concurrent streaming clients x R
requests each, against a server this script starts and stops.

Every response must be complete (``data: [DONE]``, a finish_reason, usage) and correct: a
prompt decoded under load must give exactly the text it gave alone (greedy, or sampled with
a fixed seed). Reports requests/s, p50/p99 time to first token, tokens/s and the server's
RSS before and after. Bounded in count (C x R) and time (--max-seconds, then it fails).

    flock /tmp/stagedx-timing.lock python tools/load_test.py /work/bundles/stdlib-code-pair
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    "def fibonacci(n):\n",
    "import os\n\ndef list_files(path):\n",
    "class Stack:\n    def __init__(self):\n",
    "def read_json(path):\n    with open(path) as f:\n",
    "for i in range(10):\n",
    "def is_prime(n):\n    if n < 2:\n",
    "import re\n\nPATTERN = re.compile(",
    "def merge(a, b):\n    result = []\n",
]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(bundle: str, threads: int | None, max_queue: int) -> tuple[subprocess.Popen, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [
        sys.executable,
        "-m",
        "stagedx",
        "serve",
        bundle,
        "--port",
        "0",
        "--max-queue",
        str(max_queue),
        "--model-name",
        "load",
    ]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", proc.stdout.readline() if ready else "")
    if not match:
        proc.kill()
        raise SystemExit("the server did not start")
    return proc, int(match.group(1))


def stream_once(port: int, body: dict) -> dict:
    """One streaming completion: text, time to first text, usage, finish_reason, stagedx."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    t0 = time.perf_counter()
    conn.request(
        "POST",
        "/v1/completions",
        body=json.dumps({**body, "stream": True}),
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    if resp.status != 200:
        return {"error": f"HTTP {resp.status}: {resp.read()[:200]!r}"}
    out = {"text": "", "ttft": None, "done": False, "finish": None, "usage": None, "stagedx": None}
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            out["done"] = True
            break
        chunk = json.loads(line[6:])
        if "error" in chunk:
            return {"error": chunk["error"]["message"]}
        piece = chunk["choices"][0]["text"]
        if piece and out["ttft"] is None:
            out["ttft"] = time.perf_counter() - t0
        out["text"] += piece
        out["finish"] = chunk["choices"][0]["finish_reason"] or out["finish"]
        out["usage"] = chunk.get("usage") or out["usage"]
        out["stagedx"] = chunk.get("stagedx") or out["stagedx"]
    conn.close()
    out["latency"] = time.perf_counter() - t0
    return out


def request_body(i: int, max_tokens: int) -> dict:
    """Even i: greedy; odd i: sampled (T=0.8, top-k 40) with a fixed seed per prompt."""
    prompt = PROMPTS[i % len(PROMPTS)]
    if (i // len(PROMPTS)) % 2 == 0:
        return {"model": "load", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    return {
        "model": "load",
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "top_k": 40,
        "seed": i % 97,
    }


def percentile(values: list, q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=20, help="per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-seconds", type=float, default=900.0)
    ap.add_argument("--threads", type=int, default=None, help="server's ONNX Runtime threads")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    proc, port = start_server(args.bundle, args.threads, max_queue=args.clients)
    try:
        kinds = 2 * len(PROMPTS)  # distinct request bodies
        reference = {i: stream_once(port, request_body(i, args.max_tokens)) for i in range(kinds)}  # alone
        bad = {i: r for i, r in reference.items() if "error" in r}
        if bad:
            raise SystemExit(f"reference requests failed: {bad}")
        rss_before = rss_mib(proc.pid)
        results, lock = [], threading.Lock()
        deadline = time.monotonic() + args.max_seconds

        def client(c: int) -> None:
            for r in range(args.requests):
                if time.monotonic() > deadline:
                    return
                i = (c * args.requests + r) % kinds
                res = stream_once(port, request_body(i, args.max_tokens))
                with lock:
                    results.append((i, res))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        rss_after = rss_mib(proc.pid)
    finally:
        proc.terminate()
        rc = proc.wait(60)

    want = args.clients * args.requests
    errors = [res["error"] for _, res in results if "error" in res]
    incomplete = [
        i for i, res in results if "error" not in res and not (res["done"] and res["finish"] and res["usage"])
    ]
    wrong = [i for i, res in results if "error" not in res and res["text"] != reference[i]["text"]]
    ok = [res for _, res in results if "error" not in res]
    tokens = sum(res["usage"]["completion_tokens"] for res in ok if res["usage"])
    ttft = [res["ttft"] for res in ok if res["ttft"] is not None]
    figures = {
        "bundle": args.bundle,
        "clients": args.clients,
        "requests": len(results),
        "expected": want,
        "errors": len(errors),
        "incomplete": len(incomplete),
        "wrong_text": len(wrong),
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(ok) / wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "completion_tokens": tokens,
        "ttft_p50_s": round(percentile(ttft, 0.5), 3) if ttft else None,
        "ttft_p99_s": round(percentile(ttft, 0.99), 3) if ttft else None,
        "latency_p50_s": round(percentile([r["latency"] for r in ok], 0.5), 3) if ok else None,
        "tokens_per_oracle_call": round(tokens / max(1, sum(r["stagedx"]["oracle_calls"] for r in ok)), 2),
        "server_rss_mib_before": round(rss_before, 1),
        "server_rss_mib_after": round(rss_after, 1),
        "server_exit_code": rc,
    }
    print(json.dumps(figures, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if errors or incomplete or wrong or len(results) != want or rc != 0:
        raise SystemExit(f"load test FAILED: {errors[:3]} incomplete={incomplete[:5]} wrong={wrong[:5]}")


if __name__ == "__main__":
    main()
