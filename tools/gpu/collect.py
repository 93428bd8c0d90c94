"""Copy what the device run returned into docs/results/gpu-<device>/ (run here, after the run).

    .venv/bin/python tools/gpu/collect.py FILES_AT [--name gpu-h200]

FILES_AT is the folder the device tool put the last call's files in. Copies summary.md,
steps.tsv, results.json, bench-*.json and figure1-*.png; from work.tar.gz takes the step logs,
the validate tables and each bench's bench.txt / bench.png (not the tarball itself); writes
command.txt from gpu-carry/calls.md (the calls as prepared) and the probe's versions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KEEP = (".log", ".txt", "bench.png")


def collect(src: Path, dst: Path) -> list[str]:
    dst.mkdir(parents=True, exist_ok=True)
    wrote = []
    for pattern in ("summary.md", "steps.tsv", "results.json", "bench-*.json", "figure1-*.png"):
        for f in sorted(src.glob(pattern)):
            shutil.copyfile(f, dst / f.name)
            wrote.append(f.name)
    tar_path = src / "work.tar.gz"
    if tar_path.is_file():
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                parts = Path(m.name).parts  # work/x.log or work/bench-fp16/bench.txt
                if not m.isfile() or ".." in parts or not m.name.endswith(KEEP):
                    continue
                name = "-".join(parts[1:]) if len(parts) > 2 else parts[-1]
                with tar.extractfile(m) as f:
                    (dst / name).write_bytes(f.read())
                wrote.append(name)
    calls = ROOT / "gpu-carry" / "calls.md"
    lines = [calls.read_text() if calls.is_file() else "(gpu-carry/calls.md missing)\n"]
    results = src / "results.json"
    if results.is_file():
        probe = json.loads(results.read_text()).get("probe", {})
        keys = ("python", "nvidia_smi", "nvidia_smi_cuda", "gpu", "torch_cuda", "onnxruntime")
        lines.append("probe: " + json.dumps({k: probe.get(k) for k in keys}, sort_keys=True) + "\n")
    (dst / "command.txt").write_text("\n".join(lines))
    wrote.append("command.txt")
    return wrote


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files_at", type=Path)
    ap.add_argument("--name", default="gpu-h200")
    args = ap.parse_args(argv)
    if not args.files_at.is_dir():
        print(f"error: {args.files_at} is not a folder", file=sys.stderr)
        return 2
    wrote = collect(args.files_at, ROOT / "docs" / "results" / args.name)
    print(f"docs/results/{args.name}: {', '.join(wrote)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
