"""tools/gpu: the payload carried to the device in parts (pruning, split, stash, join, RECORD
check) and the device script rehearsed end to end on the CPU with the device's call sequence."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools" / "gpu"))

import payload  # noqa: E402


# -- a synthetic ELF64 with CUDA fatbins -------------------------------------------------------
def _fatbin(entries: list[tuple[int, bytes]]) -> bytes:
    """A fatbin of ELF entries (kind 2) ``[(sm, body)]``, each with a 64-byte entry header."""
    body = b""
    for sm, data in entries:
        head = struct.pack("<HHII", 2, 0x101, 64, len(data)) + bytes(16) + struct.pack("<I", sm)  # sm at 28
        body += head + bytes(64 - len(head)) + data
    return struct.pack("<IHHQ", payload.FATBIN_MAGIC, 1, 16, len(body)) + body


def _elf(section: bytes) -> bytes:
    """ELF64 with sections: null, .nv_fatbin (``section``), .shstrtab."""
    names = b"\0.nv_fatbin\0.shstrtab\0"
    sec_off = 64
    str_off = sec_off + len(section)
    shoff = (str_off + len(names) + 7) // 8 * 8
    head = bytearray(64)
    head[:5] = b"\x7fELF\x02"
    struct.pack_into("<Q", head, 0x28, shoff)
    struct.pack_into("<HHH", head, 0x3A, 64, 3, 2)
    data = bytearray(head) + section + names
    data += bytes(shoff - len(data))
    for name_off, off, size in ((0, 0, 0), (1, sec_off, len(section)), (12, str_off, len(names))):
        sh = bytearray(64)
        struct.pack_into("<I", sh, 0, name_off)
        struct.pack_into("<QQ", sh, 0x18, off, size)
        data += sh
    return bytes(data)


def test_pruning_blanks_other_generations_and_keeps_fatbins_without_the_kept_one():
    sm80, sm90, sm90a, sm120, sm75 = (bytes([i]) * 40 for i in (1, 2, 3, 4, 5))
    first = _fatbin([(80, sm80), (90, sm90), (90, sm90a), (120, sm120)])
    only75 = _fatbin([(75, sm75)])
    elf = bytearray(_elf(first + only75))
    before = bytes(elf)
    report = payload.prune_fatbins(elf, 90)
    assert report.fatbins == 2 and report.kept_whole == 1 and report.zeroed_bytes == 80
    assert report.entries_by_sm == {"75": 1, "80": 1, "90": 2, "120": 1}
    assert len(elf) == len(before)
    assert sm80 not in elf and sm120 not in elf  # blanked
    assert sm90 in elf and sm90a in elf and sm75 in elf  # the kept generation; a fatbin without it
    changed = [i for i, (a, b) in enumerate(zip(before, elf)) if a != b]
    assert all(before[i] in (1, 4) for i in changed)  # nothing but the two bodies changed


# -- a wheel carried in parts -------------------------------------------------------------------
def _digest(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _wheel(path: Path, files: dict[str, bytes]) -> Path:
    name = path.name.split("-")[0]
    record = f"{name}-1.0.dist-info/RECORD"
    rows = [f"{n},{_digest(d)},{len(d)}" for n, d in files.items()] + [f"{record},,"]
    with zipfile.ZipFile(path, "w") as zf:
        for n, d in files.items():
            zf.writestr(n, d)
        zf.writestr(record, "\n".join(rows) + "\n")
    return path


@pytest.fixture
def carried(tmp_path) -> tuple[Path, dict]:
    """A wheel (2.5 MB incompressible + a fatbin library + a dropped file) as payload parts."""
    lib = _elf(_fatbin([(80, b"\1" * 64), (90, b"\2" * 64)]))
    files = {
        "probe_pkg/__init__.py": b"VALUE = 42\n",
        "probe_pkg/blob.bin": os.urandom(2_500_000),
        "probe_pkg/libcuda_kernels.so": lib,
        "probe_pkg/unused.so": b"never loaded",
        "probe_pkg-1.0.dist-info/METADATA": b"Name: probe-pkg\nVersion: 1.0\n",
    }
    wheel = _wheel(tmp_path / "probe_pkg-1.0-py3-none-any.whl", files)
    cfg = payload.PayloadConfig(
        wheel, tmp_path / "cache", "ort-test", ("probe_pkg/unused.so",), {"probe_pkg/libcuda_kernels.so": 90}
    )
    spec = payload.build_payload(cfg)
    spec = payload.split(tmp_path / "cache" / spec["archive"], spec, 1 << 20, tmp_path / "carry" / "ort-test")
    return tmp_path, spec


def test_parts_are_stashed_joined_and_checked_against_the_wheels_record(carried):
    root, spec = carried
    assert len(spec["parts"]) == 3 and all(p["bytes"] <= 1 << 20 for p in spec["parts"])
    parts = root / "carry" / "ort-test"
    stash = root / "stash" / "ort-test"
    later = root / "later"
    later.mkdir()
    for p in spec["parts"][1:]:  # only part 0 travels with the first call
        shutil.move(parts / p["file"], later / p["file"])
    assert payload.stash_parts(parts, stash) == ["part-00"]
    assert payload.missing_parts(stash) == ["part-01", "part-02"]
    with pytest.raises(ValueError, match="not carried yet"):
        payload.join_parts(stash)
    for p in spec["parts"][1:]:  # the next calls carry the others; part 0 is gone from the tree
        (parts / "part-00").unlink(missing_ok=True)
        shutil.move(later / p["file"], parts / p["file"])
        payload.stash_parts(parts, stash)
        (parts / p["file"]).unlink()
    assert payload.missing_parts(stash) == []
    archive = payload.join_parts(stash)
    site = root / "site"
    assert payload.unpack(archive, spec, site) == 4  # every kept file checked (pruned: its own digest)
    assert (site / "probe_pkg" / "__init__.py").read_text() == "VALUE = 42\n"
    assert not (site / "probe_pkg" / "unused.so").exists()
    assert b"\1" * 64 not in (site / "probe_pkg" / "libcuda_kernels.so").read_bytes()


def test_a_damaged_part_or_file_is_refused(carried):
    root, spec = carried
    parts = root / "carry" / "ort-test"
    data = bytearray((parts / "part-01").read_bytes())
    data[100] ^= 1
    (parts / "part-01").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match"):
        payload.stash_parts(parts, root / "stash")
    # a file that differs from the wheel's RECORD after unpacking
    bad = root / "bad.tar.xz"
    import lzma

    with lzma.open(bad, "wb") as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for name, body in (("probe_pkg/__init__.py", b"VALUE = 41\n"),):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            import io

            tar.addfile(info, io.BytesIO(body))
        record = zipfile.ZipFile(root / "probe_pkg-1.0-py3-none-any.whl").read("probe_pkg-1.0.dist-info/RECORD")
        info = tarfile.TarInfo("probe_pkg-1.0.dist-info/RECORD")
        info.size = len(record)
        tar.addfile(info, io.BytesIO(record))
    with pytest.raises(ValueError, match="differs from the wheel's RECORD"):
        payload.unpack(bad, {**spec, "dropped": [], "pruned": {}}, root / "site2")


# -- the rehearsal: the device's call sequence on the CPU ----------------------------------------
@pytest.mark.slow
def test_the_device_run_rehearsed_on_the_cpu(carried, pair_bundle, tmp_path):
    """probe (part 0) -> stash (part 1) -> all (part 2 + small files), as the device session
    calls them, with the CPU EP: every step runs, and $OUT holds what comes back."""
    root, spec = carried
    tag = f"ort-cp{sys.version_info.major}{sys.version_info.minor}"  # install picks this Python's payload
    carry = tmp_path / "gpu-carry"
    src = root / "carry" / "ort-test"
    (carry / tag).mkdir(parents=True)
    (carry / "small").mkdir()
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    (bundles / "pair-fp32").symlink_to(pair_bundle)
    env = {
        **os.environ,
        "STAGEDX_GPU_REHEARSE": "1",
        "STAGEDX_GPU_PYTHON": sys.executable,
        "STAGEDX_GPU_CARRY": str(carry),
        "STAGEDX_GPU_STASH": str(tmp_path / "stash"),
        "STAGEDX_GPU_BUNDLES": str(bundles),
        "STAGEDX_GPU_DTYPES": "fp32",
        "STAGEDX_GPU_PROMPTS": "2",
        "STAGEDX_GPU_NEW_TOKENS": "16",
        "STAGEDX_GPU_QUICK": "1",
        "STAGEDX_GPU_THREADS": "1",
    }
    # the CPU reference as prepare writes it (2 prompts, 16 tokens)
    ref = subprocess.run(
        [sys.executable, str(ROOT / "tools/gpu/device.py"), "reference", "--bundles", str(bundles)]
        + ["--out", str(carry / "small"), "--prompts", "2", "--max-new-tokens", "16"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    outs = []
    for i, stage in enumerate(("probe", "stash", "all")):
        for old in (carry / tag).glob("part-*"):
            old.unlink()  # each call carries its own part only
        shutil.copy(src / payload.PAYLOAD_JSON, carry / tag / payload.PAYLOAD_JSON)
        shutil.copy(src / f"part-{i:02d}", carry / tag / f"part-{i:02d}")
        out = tmp_path / f"out{i}"
        out.mkdir()
        res = subprocess.run(
            ["bash", str(ROOT / "tools/gpu/device_run.sh"), stage],
            env={**env, "OUT": str(out)},
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
        outs.append(out)
    probe = json.loads((outs[0] / "results.json").read_text())["probe"]
    assert probe["python_tag"] == tag.removeprefix("ort-")
    last = outs[2]
    names = sorted(p.name for p in last.iterdir())
    assert names == sorted(
        ["summary.md", "steps.tsv", "results.json", "bench-fp32.json", "figure1-fp32.png", "work.tar.gz"]
    )
    assert len(names) <= 8  # what the device tool returns
    steps = dict(line.split("\t")[:2] for line in (last / "steps.tsv").read_text().splitlines())
    assert set(steps) >= {"install", "check_ort", "export", "parity", "validate-fp32", "kvcheck", "bench-fp32"}
    assert all(rc == "0" for rc in steps.values()), steps
    res = json.loads((last / "results.json").read_text())
    assert res["install"]["files_checked"] == 4 and "polygraphy" not in json.dumps(res["install"]["wheels"])
    parity = res["parity"]["fp32"]
    assert parity["device_used"] == "cpu"
    assert all(
        v == {"identical": 2, "of": 2, "first_difference": [None, None]} for v in parity["vs_reference"].values()
    )
    assert parity["same_graphs_as_reference"] is True
    assert all(v["identical"] == 2 for v in parity["strategies_agree"].values())
    kv = res["kvcheck"]
    assert kv["kv_store"] == "HostKV" and set(kv["time_vs_tree_P128"]) == {"1", "2", "4", "8", "16", "32", "64"}
    assert kv["profile"]["node_events_by_provider"].get("CPUExecutionProvider", 0) > 0
    bench = json.loads((last / "bench-fp32.json").read_text())
    assert bench["environment"]["device"] == "cpu" and bench["cost_curve"]["latency_s"]
    summary = (last / "summary.md").read_text()
    assert "parity fp32 on cpu" in summary and "## bench-fp32" in summary
    import collect  # what the session commits under docs/results/gpu-<device>/

    kept = collect.collect(last, tmp_path / "results")
    assert {"summary.md", "results.json", "bench-fp32-bench.txt", "validate-fp32.txt", "command.txt"} <= set(kept)


def test_the_call_sequence_carries_one_part_per_call_and_the_small_files_last(tmp_path):
    import prepare

    spec = {"parts": [{"file": f"part-{i:02d}"} for i in range(3)]}
    seq = prepare.calls(tmp_path, {"ort-cp312": spec}, "ort-cp312")
    assert [c["command"].split()[-1] for c in seq] == ["probe", "stash", "all"]
    assert seq[0]["carry"] == ["gpu-carry/ort-cp312/payload.json", "gpu-carry/ort-cp312/part-00"]
    assert seq[2]["carry"][-1] == "gpu-carry/small" and seq[2]["timeout_s"] < 600
    assert all(len(c["carry"]) <= 8 for c in seq)
