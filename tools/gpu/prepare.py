"""Build, here, everything a device session carries (into gpu-carry/, git-ignored).

    .venv/bin/python tools/gpu/prepare.py              # cp312 (the device image) + cp311 (this venv)
    .venv/bin/python tools/gpu/prepare.py --python 3.12 --no-reference

1. The carry budget of one device call: 64 MiB minus everything that travels anyway (tracked
   and untracked-not-ignored files of this checkout), minus a margin. Run prepare again right
   before a device session: the tree may have grown since.
2. onnxruntime-gpu wheels by name and version from PyPI (pip download), one per Python
   version, and the pure-Python wheels the device image lacks (polygraphy).
3. Per Python version, a payload (tools/gpu/payload.py): the wheel's files without the ones
   Python never loads, CUDA kernels of other GPU generations blanked (``--keep-sm``), xz'd
   and cut into parts of the budget: gpu-carry/ort-cpXY/part-NN + payload.json.
4. The vendored pair exported fp32 and fp16 into gpu-carry/bundles (used by the rehearsal;
   too big to carry next to the tree, so the device exports its own from the tracked
   checkpoints) and the CPU reference: greedy tokens of baseline / speculative / staged on
   tools/gpu/prompts.jsonl, in gpu-carry/small/cpu_reference.json (carried, small).
5. gpu-carry/calls.json and calls.md: the exact device-tool calls, in order.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import payload  # noqa: E402

ORT_VERSION = "1.31.1"  # built for CUDA 13 (libcublas.so.13), as the device image's PyTorch
CUDA_LIB = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
# Never loaded by `import onnxruntime` nor by the CUDA EP: the C API library (the Python
# binding links ORT statically) and the TensorRT EP (its libnvinfer cannot reach the device).
DROP = ("onnxruntime/capi/libonnxruntime.so.1.31.1", "onnxruntime/capi/libonnxruntime_providers_tensorrt.so")
SMALL_WHEELS = ("polygraphy==0.53.6",)  # as in the dev extra here
CALL_LIMIT = 64 * 2**20
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")


def travelling_bytes(root: Path) -> int:
    """Bytes of what every device call sends anyway: tracked and untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout
    total = 0
    for name in out.decode().split("\0"):
        p = root / name
        if name and p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    shared = root / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file())
    return total


def pip_download(spec: str, dest: Path, python: str | None) -> Path:
    """One wheel by name==version (no dependencies), for ``python`` (e.g. "3.12") or any."""
    dest.mkdir(parents=True, exist_ok=True)
    name, version = spec.split("==")
    stem = name.replace("-", "_")
    tag = f"cp{python.replace('.', '')}" if python else None
    have = [p for p in dest.glob(f"{stem}-{version}-*.whl") if tag is None or f"-{tag}-" in p.name]
    if have:
        return have[0]
    args = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), spec]
    if python:
        args += ["--python-version", python, "--implementation", "cp"]
        for plat in PLATFORMS:
            args += ["--platform", plat]
    subprocess.run(args, check=True)
    have = [p for p in dest.glob(f"{stem}-{version}-*.whl") if tag is None or f"-{tag}-" in p.name]
    if not have:
        raise SystemExit(f"pip saved no wheel for {spec} ({python or 'any python'})")
    return have[0]


def build(carry: Path, python: str, keep_sm: int | None, part_bytes: int) -> dict:
    """Payload ``ort-cpXY`` (cached by wheel digest and pruning), split into parts."""
    wheel = pip_download(f"onnxruntime-gpu=={ORT_VERSION}", carry / "cache", python)
    name = f"ort-cp{python.replace('.', '')}"
    cache = carry / "cache" / name
    spec_file = cache / payload.PAYLOAD_JSON
    prune = {CUDA_LIB: keep_sm} if keep_sm else None
    spec = json.loads(spec_file.read_text()) if spec_file.is_file() else None
    wanted_prune = {CUDA_LIB: keep_sm} if keep_sm else {}
    if (
        spec is None
        or spec["wheel_sha256"] != payload.sha256_file(wheel)
        or {k: v["keep_sm"] for k, v in spec["pruned"].items()} != wanted_prune
        or not (cache / spec["archive"]).is_file()
    ):
        print(f"building {name} from {wheel.name} (xz: a few minutes)", flush=True)
        spec = payload.build_payload(payload.PayloadConfig(wheel, cache, name, DROP, prune))
    return payload.split(cache / spec["archive"], spec, part_bytes, carry / name)


def calls(carry: Path, specs: dict[str, dict], first: str) -> list[dict]:
    """The device-tool calls: probe with part 0, one stash call per further part, then all
    (with the last part and the small files)."""
    parts = specs[first]["parts"]
    rel = f"gpu-carry/{first}"
    seq = []
    for i, p in enumerate(parts):
        carry = [f"{rel}/{payload.PAYLOAD_JSON}", f"{rel}/{p['file']}"]
        if i == 0:
            cmd = "bash tools/gpu/device_run.sh probe"
        elif i < len(parts) - 1:
            cmd = "bash tools/gpu/device_run.sh stash"
        else:
            carry.append("gpu-carry/small")
            cmd = "bash tools/gpu/device_run.sh all"
        seq.append({"carry": carry, "command": cmd, "timeout_s": 570 if cmd.endswith("all") else 120})
    if len(parts) == 1:
        seq.append({"carry": ["gpu-carry/small"], "command": "bash tools/gpu/device_run.sh all", "timeout_s": 570})
    return seq


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="prepare what a device session carries (gpu-carry/)")
    ap.add_argument("--python", action="append", help="device Python version(s) (default 3.12 and 3.11)")
    ap.add_argument("--keep-sm", type=int, default=90, help="GPU generation kept in the CUDA kernels (0: all)")
    ap.add_argument("--margin-mib", type=float, default=2.0, help="headroom left in each call's carry")
    ap.add_argument("--carry", type=Path, default=ROOT / "gpu-carry")
    ap.add_argument("--no-reference", action="store_true", help="skip the bundles and the CPU reference")
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args(argv)
    pythons = args.python or ["3.12", "3.11"]
    carry = args.carry
    small = carry / "small"
    small.mkdir(parents=True, exist_ok=True)
    for spec in SMALL_WHEELS:
        whl = pip_download(spec, carry / "cache", None)
        (small / whl.name).write_bytes(whl.read_bytes())
    tree = travelling_bytes(ROOT)
    small_bytes = sum(p.stat().st_size for p in small.iterdir()) + 512 * 1024  # + the reference JSON
    part_bytes = int(CALL_LIMIT - tree - small_bytes - args.margin_mib * 2**20 - 16 * 1024)
    print(f"tree {tree / 2**20:.1f} MiB travels with every call: {part_bytes / 2**20:.1f} MiB per part", flush=True)
    specs = {}
    for py in pythons:
        specs[f"ort-cp{py.replace('.', '')}"] = build(carry, py, args.keep_sm or None, part_bytes)
    if not args.no_reference:
        tool = [sys.executable, str(HERE / "device.py")]
        subprocess.run(
            [*tool, "export", "--bundles", str(carry / "bundles"), "--dtypes", "fp32,fp16", "--out", str(carry)],
            check=True,
        )
        lim = ["--prompts", str(args.prompts), "--max-new-tokens", str(args.max_new_tokens)]
        subprocess.run([*tool, "reference", "--bundles", str(carry / "bundles"), "--out", str(small), *lim], check=True)
    first = next(iter(specs))
    seq = calls(carry, specs, first)
    plan = {"tree_bytes": tree, "part_bytes": part_bytes, "payloads": specs, "calls": seq}
    payload.write_json(carry / "calls.json", plan)
    md = [f"# device calls for {first} (tree {tree / 2**20:.1f} MiB, parts {part_bytes / 2**20:.1f} MiB)", ""]
    for i, c in enumerate(seq, 1):
        md.append(
            f"{i}. run(carry={json.dumps(c['carry'])}, command={json.dumps(c['command'])}, timeout_s={c['timeout_s']})"
        )
    (carry / "calls.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
