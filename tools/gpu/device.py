"""The steps ``device_run.sh`` runs on the device machine (and on the CPU in a rehearsal).

Each step is one subcommand, writes one JSON file under the given folder, and fails alone:
``device_run.sh`` records its exit status and goes on with the next. Stdlib + stagedx only
(the device's image has NumPy; onnxruntime comes from the carried payload).

    python tools/gpu/device.py probe   --out DIR
    python tools/gpu/device.py stash   --carry gpu-carry --stash S
    python tools/gpu/device.py install --carry gpu-carry --stash S --payload ort-cp312
    python tools/gpu/device.py check-ort --device cuda --out DIR
    python tools/gpu/device.py export  --bundles B --dtypes fp32,fp16
    python tools/gpu/device.py parity  --bundles B --device cuda --reference REF --out DIR
    python tools/gpu/device.py kvcheck --bundle B/pair-fp16 --device cuda --out DIR
    python tools/gpu/device.py summary --out DIR
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import kvcheck as kvc  # noqa: E402  (tools/gpu/kvcheck.py)
import payload  # noqa: E402  (tools/gpu/payload.py, stdlib only)

PAIR = ROOT / "models" / "stdlib-code-pair"
PROMPTS = HERE / "prompts.jsonl"
STRATEGIES = ("baseline", "speculative", "staged")
PACKAGES = (
    "numpy",
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "onnx-ir",
    "transformers",
    "tokenizers",
    "safetensors",
    "click",
    "matplotlib",
    "polygraphy",
    "pytest",
    "tensorrt",
    "cuda-python",
    "cuda-bindings",
    "cupy-cuda13x",
)


def write(out: Path, name: str, obj) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    payload.write_json(path, obj)
    print(json.dumps(obj, indent=1, sort_keys=True)[:6000])
    return path


def _cmd(args: list[str], timeout: float = 30) -> str:
    try:
        res = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        return (res.stdout + res.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable: {exc}"


# -- probe -------------------------------------------------------------------------------------
def probe(out: Path) -> dict:
    """Python, GPU, driver, CUDA and the packages present: read before anything is installed."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    info = {
        "python": sys.version.split()[0],
        "python_tag": f"cp{sys.version_info.major}{sys.version_info.minor}",
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
        "nvidia_smi": _cmd(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"]
        ),
        "nvidia_smi_cuda": next((ln for ln in _cmd(["nvidia-smi"]).splitlines() if "CUDA Version" in ln), ""),
        "disk_free_gib": round(shutil.disk_usage(ROOT).free / 2**30, 1),
    }
    try:
        import torch

        info["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = {
                "name": p.name,
                "compute_capability": f"{p.major}.{p.minor}",
                "memory_gib": p.total_memory / 2**30,
            }
    except Exception as exc:  # noqa: BLE001 - report, do not fail the probe
        info["torch_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import onnxruntime as ort

        info["onnxruntime"] = {
            "version": ort.__version__,
            "file": ort.__file__,
            "providers": ort.get_available_providers(),
        }
    except Exception as exc:  # noqa: BLE001
        info["onnxruntime"] = {"error": f"{type(exc).__name__}: {exc}"}
    return info


# -- stash and install -----------------------------------------------------------------------
def stash(carry: Path, stash_dir: Path) -> dict:
    """Copy every carried payload part into the stash (outside the repo, kept while warm)."""
    report = {}
    for spec in sorted(carry.glob(f"*/{payload.PAYLOAD_JSON}")):
        name = spec.parent.name
        have = payload.stash_parts(spec.parent, stash_dir / name)
        report[name] = {"stashed": have, "missing": payload.missing_parts(stash_dir / name)}
    return report


def install(carry: Path, stash_dir: Path, name: str) -> dict:
    """Join, verify and unpack payload ``name`` into ``stash/site``; add the carried
    pure-Python wheels (``carry/small/*.whl``). Idempotent: a verified site is kept."""
    stash(carry, stash_dir)
    site = stash_dir / "site"
    where = stash_dir / name
    spec = json.loads((where / payload.PAYLOAD_JSON).read_text())
    marker = site / f".{name}.installed"
    t0 = time.perf_counter()
    if not marker.is_file() or marker.read_text() != spec["archive_sha256"]:
        archive = payload.join_parts(where)
        checked = payload.unpack(archive, spec, site)
        archive.unlink()
        marker.write_text(spec["archive_sha256"])
    else:
        checked = "already installed"
    wheels = []
    for whl in sorted((carry / "small").glob("*-py3-none-any.whl")) + sorted((carry / "small").glob("*-py2.py3-*.whl")):
        import zipfile

        with zipfile.ZipFile(whl) as zf:
            zf.extractall(site)
        wheels.append(whl.name)
    return {
        "payload": name,
        "site": str(site),
        "files_checked": checked,
        "wheels": wheels,
        "seconds": time.perf_counter() - t0,
    }


def cuda_library_dirs() -> list[str]:
    """Folders holding the CUDA 13 libraries onnxruntime-gpu needs (from the image's nvidia
    pip packages, which PyTorch uses), for LD_LIBRARY_PATH."""
    wanted = ("libcublas.so.13", "libcublasLt.so.13", "libcudart.so.13", "libcurand.so.10", "libcufft.so.12")
    wanted += ("libcudnn.so.9",)
    roots = [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    roots += [Path("/usr/local/cuda/lib64"), Path("/usr/local/cuda/targets/x86_64-linux/lib")]
    found: dict[str, str] = {}
    for root in roots:
        base = root / "nvidia" if (root / "nvidia").is_dir() else root
        for lib in wanted:
            if lib in found:
                continue
            hits = sorted(base.rglob(lib)) if base.is_dir() else []
            if hits:
                found[lib] = str(hits[0].parent)
    return sorted(set(found.values()))


# -- ONNX Runtime on the device ----------------------------------------------------------------
def check_ort(device: str) -> dict:
    """The carried onnxruntime: version, providers, preload_dlls, and one tiny graph whose
    session must really use the requested provider (stagedx's own KV gather graph)."""
    import numpy as np
    import onnxruntime as ort

    from stagedx.runtime.backends.ort_device import gather_model
    from stagedx.runtime.device import resolve_device

    info = {"version": ort.__version__, "file": ort.__file__, "providers": ort.get_available_providers()}
    info["ld_library_path"] = os.environ.get("LD_LIBRARY_PATH", "")
    if device != "cpu" and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
            info["preload_dlls"] = "ok"
        except Exception as exc:  # noqa: BLE001
            info["preload_dlls"] = f"{type(exc).__name__}: {exc}"
    choice = resolve_device(device)
    model = gather_model(1, np.float16, (3, 4))
    sess = ort.InferenceSession(model, providers=list(choice.providers))
    info["session_providers"] = sess.get_providers()
    src = np.arange(24, dtype=np.float16).reshape(2, 3, 4)  # [T, H, D]
    (got,) = sess.run(None, {"src.0": src, "rows": np.array([1, 0], np.int64)})
    info["gather_ok"] = bool(np.array_equal(got, src[[1, 0]]))
    info["device_used"] = sess.get_providers()[0]
    info["ok"] = info["gather_ok"] and (device == "cpu" or info["device_used"] == "CUDAExecutionProvider")
    return info


def export(bundles: Path, dtypes: list[str]) -> dict:
    """Export the vendored pair once per dtype (kept when already there)."""
    report = {}
    for dt in dtypes:
        dst = bundles / f"pair-{dt}"
        if (dst / "manifest.json").is_file():
            report[dt] = {"bundle": str(dst), "exported": "kept"}
            continue
        t0 = time.perf_counter()
        args = [sys.executable, "-m", "stagedx", "export", str(PAIR / "oracle"), "--draft", str(PAIR / "draft")]
        args += ["--draft2", "prompt-lookup", "--dtype", dt, "-o", str(dst), "--force"]
        res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
        report[dt] = {"bundle": str(dst), "rc": res.returncode, "seconds": time.perf_counter() - t0}
        report[dt]["log"] = (res.stdout + res.stderr)[-3000:]
        if res.returncode:  # e.g. the image's transformers disagrees with the parity check: keep
            # the run going without the reference (validate then fails alone; parity and bench run)
            res = subprocess.run([*args, "--no-verify"], capture_output=True, text=True, cwd=ROOT)
            report[dt]["retry_no_verify"] = {"rc": res.returncode, "log": (res.stdout + res.stderr)[-3000:]}
    return report


def bundle_digest(bundle: Path) -> dict:
    """sha256 of the graph files (equal digests: the same graphs as the reference's)."""
    m = json.loads((bundle / "manifest.json").read_text())
    return {e["file"]: e.get("sha256") for e in m["models"].values()} if isinstance(m.get("models"), dict) else {}


def greedy_outputs(bundle: Path, device: str, n_prompts: int, max_new_tokens: int) -> dict:
    """Greedy tokens of baseline / speculative / staged on the first prompts of prompts.jsonl."""
    from stagedx.bench.prompts import load_jsonl
    from stagedx.runtime import Generator

    prompts = load_jsonl(PROMPTS)[:n_prompts]
    out = {"device": device, "digests": bundle_digest(bundle), "prompts": [p.id for p in prompts], "tokens": {}}
    out["max_new_tokens"] = max_new_tokens
    with Generator(bundle, device=device, strategy="staged") as gen:
        out["device_used"] = gen.device
        for strategy in STRATEGIES:
            out["tokens"][strategy] = [
                gen.generate(p.text, max_new_tokens=max_new_tokens, strategy=strategy, ignore_eos=True).tokens
                for p in prompts
            ]
    return out


def compare_tokens(a: list[list[int]], b: list[list[int]]) -> dict:
    """Prompts whose token lists are equal, and the first differing position of the others."""
    first = []
    for x, y in zip(a, b):
        n = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), None)
        first.append(n if n is not None or len(x) == len(y) else min(len(x), len(y)))
    return {"identical": sum(f is None for f in first), "of": len(first), "first_difference": first}


def parity(bundles: Path, device: str, reference: dict | None, limits: tuple[int, int]) -> dict:
    """Per bundle: device strategies vs each other, device vs this machine's CPU EP, and device
    vs the reference computed on the CPU where the bundles were prepared."""
    report = {}
    for bundle in sorted(p for p in bundles.glob("pair-*") if (p / "manifest.json").is_file()):
        dt = bundle.name.split("-", 1)[1]
        entry: dict = {}
        ref = (reference or {}).get(dt)
        n_prompts, max_new = (len(ref["prompts"]), ref["max_new_tokens"]) if ref else limits  # as the reference
        try:
            dev = greedy_outputs(bundle, device, n_prompts, max_new)
            entry["device_used"] = dev["device_used"]
            entry["strategies_agree"] = {
                s: compare_tokens(dev["tokens"]["baseline"], dev["tokens"][s]) for s in STRATEGIES[1:]
            }
            cpu = greedy_outputs(bundle, "cpu", n_prompts, max_new) if device != "cpu" else dev
            entry["vs_cpu_here"] = {s: compare_tokens(cpu["tokens"][s], dev["tokens"][s]) for s in STRATEGIES}
            if ref:
                entry["same_graphs_as_reference"] = ref["digests"] == dev["digests"]
                entry["vs_reference"] = {s: compare_tokens(ref["tokens"][s], dev["tokens"][s]) for s in STRATEGIES}
            entry["tokens"] = dev["tokens"]
        except Exception as exc:  # noqa: BLE001 - one bundle failing does not lose the other
            entry["error"] = f"{type(exc).__name__}: {exc}"
        report[dt] = entry
    return report


def reference(bundles: Path, limits: tuple[int, int]) -> dict:
    """The CPU reference carried to the device (computed where the bundles were prepared)."""
    out = {}
    for bundle in sorted(p for p in bundles.glob("pair-*") if (p / "manifest.json").is_file()):
        out[bundle.name.split("-", 1)[1]] = greedy_outputs(bundle, "cpu", *limits)
    return out


# -- summary -----------------------------------------------------------------------------------
def summary(out: Path) -> str:
    """summary.md from the step JSONs and steps.tsv (whatever is there: partial runs too)."""

    def load(name):
        p = out / name
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    lines = ["# stagedx on the device: summary", ""]
    steps = out / "steps.tsv"
    if steps.is_file():
        lines += ["| step | rc | seconds |", "|---|---|---|"]
        lines += [f"| {' | '.join(r.split(chr(9)))} |" for r in steps.read_text().splitlines() if r.strip()]
        lines.append("")
    env = load("probe.json") or {}
    if env:
        lines.append(
            f"- Python {env.get('python')}, {env.get('nvidia_smi', '')}, {env.get('nvidia_smi_cuda', '').strip()}"
        )
        lines.append(f"- GPU (torch): {env.get('gpu')}, torch CUDA {env.get('torch_cuda')}")
    ortc = load("check_ort.json") or {}
    if ortc:
        lines.append(
            f"- onnxruntime {ortc.get('version')}: providers {ortc.get('providers')}, "
            f"session used {ortc.get('device_used')}"
        )
    par = load("parity.json") or {}
    for dt, e in par.items():
        if "error" in e:
            lines.append(f"- parity {dt}: ERROR {e['error']}")
            continue
        agree = {s: f"{v['identical']}/{v['of']}" for s, v in e.get("strategies_agree", {}).items()}
        cpu = {s: f"{v['identical']}/{v['of']}" for s, v in e.get("vs_cpu_here", {}).items()}
        ref = {s: f"{v['identical']}/{v['of']}" for s, v in e.get("vs_reference", {}).items()}
        lines.append(
            f"- parity {dt} on {e.get('device_used')}: strategies vs baseline {agree}; vs CPU EP here {cpu}; "
            f"vs prepared CPU reference {ref} (same graphs: {e.get('same_graphs_as_reference')})"
        )
    kv = load("kvcheck.json") or {}
    if kv:
        lines.append(
            f"- KV store {kv.get('kv_store')} on {kv.get('kv_ortvalue_device', 'host')}; "
            f"T=16 / T=1 call time {kv.get('t16_over_t1', 0):.2f}"
        )
        for p, v in (kv.get("time_vs_past_T1") or {}).items():
            lines.append(
                f"  - past {p}: runner {v['runner_s'] * 1e3:.3f} ms, "
                f"host round trip {v['host_round_trip_s'] * 1e3:.3f} ms"
            )
        prof = kv.get("profile") or {}
        lines.append(
            f"  - profiled nodes by provider {prof.get('node_events_by_provider')}, "
            f"CPU ops {prof.get('cpu_ops')}, memcpy {prof.get('memcpy_nodes')}"
        )
    for name in sorted(p.name for p in out.glob("bench-*")):
        txt = out / name / "bench.txt"
        if txt.is_file():
            lines += ["", f"## {name}", "", "```", txt.read_text().rstrip(), "```"]
    val = sorted(out.glob("validate-*.txt"))
    for v in val:
        lines += ["", f"## {v.stem}", "", "```", v.read_text().rstrip(), "```"]
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("step")
    ap.add_argument("--out", type=Path, default=Path("out"))
    ap.add_argument("--carry", type=Path, default=ROOT / "gpu-carry")
    ap.add_argument("--stash", type=Path)
    ap.add_argument("--payload")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--bundles", type=Path)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--dtypes", default="fp32,fp16")
    ap.add_argument("--reference", type=Path)
    ap.add_argument("--prompts", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=20, help="timed calls per point (kvcheck)")
    ap.add_argument("--past", default="16,128,512,960", help="committed past lengths timed (kvcheck)")
    args = ap.parse_args(argv)
    limits = (args.prompts, args.max_new_tokens)
    if args.step == "probe":
        write(args.out, "probe.json", probe(args.out))
    elif args.step == "stash":
        write(args.out, "stash.json", stash(args.carry, args.stash))
    elif args.step == "install":
        write(args.out, "install.json", install(args.carry, args.stash, args.payload))
    elif args.step == "libdirs":
        print(":".join(cuda_library_dirs()))
    elif args.step == "check-ort":
        info = write(args.out, "check_ort.json", check_ort(args.device))
        return 0 if json.loads(info.read_text())["ok"] else 1
    elif args.step == "export":
        rep = export(args.bundles, [d for d in args.dtypes.split(",") if d])
        write(args.out, "export.json", rep)
        return 0 if all(v.get("rc", 0) == 0 for v in rep.values()) else 1  # a retry still counts as a failure
    elif args.step == "reference":
        write(args.out, "cpu_reference.json", reference(args.bundles, limits))
    elif args.step == "parity":
        ref = json.loads(args.reference.read_text()) if args.reference and args.reference.is_file() else None
        rep = parity(args.bundles, args.device, ref, limits)
        write(args.out, "parity.json", rep)
        return 0 if rep and all("error" not in v for v in rep.values()) else 1
    elif args.step == "kvcheck":
        write(
            args.out,
            "kvcheck.json",
            kvc.kvcheck(args.bundle, args.device, args.out, args.repeats, tuple(int(p) for p in args.past.split(","))),
        )
    elif args.step == "summary":
        print(summary(args.out))
    else:
        ap.error(f"unknown step {args.step!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
