"""Carry a Python wheel to the device machine in parts (stdlib only: it also runs there).

A payload is a wheel's files repacked as one ``.tar.xz`` (files nobody imports left out, and
optionally the CUDA kernels for other GPU generations blanked: see ``prune_fatbins``), split
into parts that each fit one device call's carry. ``payload.json`` beside the parts records
every sha256: each part, the whole archive, and each unpacked file against the wheel's own
RECORD (the one file pruning changed is checked against the pruned digest recorded here).

Pruning. ``libonnxruntime_providers_cuda.so`` is 284 MB, 218 MB of it CUDA fatbins holding one
cubin per GPU generation (sm_75 ... sm_120). A GPU loads only the cubin of its own major
generation (SASS is not portable across majors), so for an H200 (sm_90) every other cubin's
body can be zeroed: headers, sizes and offsets stay as they were, and the zeros compress to
nothing (the payload goes from ~200 MB to ~65 MB). Fatbins without an entry for the kept
generation are left whole.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import lzma
import os
import shutil
import struct
import subprocess
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

FATBIN_MAGIC = 0xBA55ED50
PAYLOAD_JSON = "payload.json"
CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def record_digest(data: bytes) -> str:
    """The digest form of a wheel's RECORD: ``sha256=`` + urlsafe base64 without padding."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


# -- fatbin pruning ----------------------------------------------------------------------------
def elf_section(data: bytes | bytearray, name: str) -> tuple[int, int] | None:
    """(file offset, size) of section ``name`` in a little-endian ELF64 file, or None."""
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not an ELF64 file")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    str_off = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 0x18)[0]
    for i in range(shnum):
        base = shoff + i * shentsize
        name_off = struct.unpack_from("<I", data, base)[0]
        end = data.index(b"\0", str_off + name_off)
        if bytes(data[str_off + name_off : end]).decode() == name:
            off, size = struct.unpack_from("<QQ", data, base + 0x18)
            return off, size
    return None


@dataclass(frozen=True)
class PruneReport:
    fatbins: int
    kept_whole: int  # fatbins without an entry for the kept generation
    zeroed_bytes: int
    entries_by_sm: dict


def prune_fatbins(data: bytearray, keep_sm: int) -> PruneReport:
    """Zero, in place, the payload of every fatbin entry whose SM major differs from
    ``keep_sm``'s, in fatbins that hold at least one entry of ``keep_sm``'s major."""
    sec = elf_section(data, ".nv_fatbin")
    if sec is None:
        return PruneReport(0, 0, 0, {})
    pos, end_sec = sec[0], sec[0] + sec[1]
    keep_major = keep_sm // 10
    fatbins = kept_whole = zeroed = 0
    by_sm: dict = {}
    while pos + 16 <= end_sec:
        magic, _ver, hsize, fsize = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8  # fatbins are 8-byte aligned; skip padding
            continue
        fatbins += 1
        entries, p, end = [], pos + hsize, pos + hsize + fsize
        while p < end:
            _kind, _ever, ehsize, padded = struct.unpack_from("<HHII", data, p)
            sm = struct.unpack_from("<I", data, p + 28)[0]
            entries.append((p + ehsize, padded, sm))
            by_sm[sm] = by_sm.get(sm, 0) + 1
            p += ehsize + padded
        if not any(sm // 10 == keep_major for _, _, sm in entries):
            kept_whole += 1
        else:
            for body, size, sm in entries:
                if sm // 10 != keep_major:
                    data[body : body + size] = bytes(size)
                    zeroed += size
        pos = end
    return PruneReport(fatbins, kept_whole, zeroed, {str(k): v for k, v in sorted(by_sm.items())})


# -- building --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PayloadConfig:
    wheel: Path
    out_dir: Path  # gets NAME.tar.xz and payload.json
    name: str  # e.g. "ort-cp312"
    drop: tuple[str, ...] = ()  # wheel members left out (never imported)
    prune: dict | None = None  # {member: keep_sm}


def _xz(src: Path, dst: Path) -> None:
    """xz the tar (the xz program with threads when present; else Python's lzma)."""
    xz = shutil.which("xz")
    if xz:
        with open(dst, "wb") as out:
            subprocess.run([xz, "-6", "-T0", "-c", str(src)], stdout=out, check=True)
        return
    with open(src, "rb") as f, lzma.open(dst, "wb", preset=6) as out:
        shutil.copyfileobj(f, out, CHUNK)


def build_payload(cfg: PayloadConfig) -> dict:
    """Repack ``cfg.wheel`` as ``out_dir/NAME.tar.xz``; return (and write) its payload.json
    (without parts: ``split`` adds them)."""
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    tar_path = cfg.out_dir / f"{cfg.name}.tar"
    pruned, files = {}, 0
    with zipfile.ZipFile(cfg.wheel) as zf, tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info in zf.infolist():
            if info.is_dir() or info.filename in cfg.drop:
                continue
            data = zf.read(info)
            keep_sm = (cfg.prune or {}).get(info.filename)
            if keep_sm is not None:
                buf = bytearray(data)
                report = prune_fatbins(buf, int(keep_sm))
                data = bytes(buf)
                pruned[info.filename] = {"keep_sm": int(keep_sm), "digest": record_digest(data), **report.__dict__}
            ti = tarfile.TarInfo(info.filename)
            ti.size, ti.mode = len(data), (0o755 if info.filename.endswith(".so") or ".so." in info.filename else 0o644)
            tar.addfile(ti, io.BytesIO(data))
            files += 1
    archive = cfg.out_dir / f"{cfg.name}.tar.xz"
    _xz(tar_path, archive)
    tar_path.unlink()
    spec = {
        "name": cfg.name,
        "wheel": cfg.wheel.name,
        "wheel_sha256": sha256_file(cfg.wheel),
        "archive": archive.name,
        "archive_sha256": sha256_file(archive),
        "archive_bytes": archive.stat().st_size,
        "files": files,
        "dropped": sorted(cfg.drop),
        "pruned": pruned,
    }
    write_json(cfg.out_dir / PAYLOAD_JSON, spec)
    return spec


def split(archive: Path, spec: dict, part_bytes: int, parts_dir: Path) -> dict:
    """Cut ``archive`` into ``parts_dir/part-NN`` of at most ``part_bytes``; old parts removed."""
    if part_bytes < CHUNK:
        raise ValueError(f"part size {part_bytes} bytes is below 1 MiB: the carry budget is used up")
    parts_dir.mkdir(parents=True, exist_ok=True)
    for old in parts_dir.glob("part-*"):
        old.unlink()
    parts = []
    with open(archive, "rb") as f:
        for i in range(10_000):
            data = f.read(part_bytes)
            if not data:
                break
            path = parts_dir / f"part-{i:02d}"
            path.write_bytes(data)
            parts.append({"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    spec = {**spec, "part_bytes": part_bytes, "parts": parts}
    write_json(parts_dir / PAYLOAD_JSON, spec)
    return spec


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# -- on the receiving side -------------------------------------------------------------------
def stash_parts(carried: Path, stash: Path) -> list[str]:
    """Move every carried part whose sha256 matches payload.json into ``stash`` (idempotent:
    parts already stashed are kept; a part that does not match is refused). Returns the
    names of the parts now stashed."""
    spec = json.loads((carried / PAYLOAD_JSON).read_text())
    stash.mkdir(parents=True, exist_ok=True)
    write_json(stash / PAYLOAD_JSON, spec)
    want = {p["file"]: p for p in spec["parts"]}
    for path in sorted(carried.glob("part-*")):
        entry = want.get(path.name)
        if entry is None or sha256_file(path) != entry["sha256"]:
            raise ValueError(f"{path} does not match {PAYLOAD_JSON} (stale part from another prepare?)")
        shutil.copyfile(path, stash / path.name)
    return [n for n in want if (stash / n).is_file() and sha256_file(stash / n) == want[n]["sha256"]]


def missing_parts(stash: Path) -> list[str]:
    spec = json.loads((stash / PAYLOAD_JSON).read_text())
    return [p["file"] for p in spec["parts"] if not (stash / p["file"]).is_file()]


def join_parts(stash: Path) -> Path:
    """Concatenate the stashed parts into the archive, checking every sha256."""
    spec = json.loads((stash / PAYLOAD_JSON).read_text())
    missing = missing_parts(stash)
    if missing:
        raise ValueError(f"parts not carried yet: {', '.join(missing)}")
    archive = stash / spec["archive"]
    h = hashlib.sha256()
    with open(archive, "wb") as out:
        for p in spec["parts"]:
            data = (stash / p["file"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != p["sha256"]:
                raise ValueError(f"{p['file']}: sha256 mismatch")
            h.update(data)
            out.write(data)
    if h.hexdigest() != spec["archive_sha256"]:
        raise ValueError(f"{archive.name}: sha256 {h.hexdigest()} != {spec['archive_sha256']}")
    return archive


def unpack(archive: Path, spec: dict, site: Path) -> int:
    """Unpack into ``site`` and check every file against the wheel's RECORD (the pruned file
    against its recorded pruned digest). Returns the number of files checked."""
    site.mkdir(parents=True, exist_ok=True)
    with lzma.open(archive) as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
        for member in tar:
            target = (site / member.name).resolve()
            if not member.isfile() or site.resolve() not in target.parents:
                raise ValueError(f"refusing archive member {member.name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            os.chmod(target, member.mode)
    records = list(site.glob("*.dist-info/RECORD"))
    record_file = next((r for r in records if spec["wheel"].split("-")[0] in r.parent.name), None)
    if record_file is None:
        raise ValueError(f"no RECORD for {spec['wheel']} in {site}")
    checked = 0
    for row in csv.reader(record_file.read_text().splitlines()):
        name, digest = row[0], row[1] if len(row) > 1 else ""
        if not digest or name in spec["dropped"]:
            continue
        want = spec["pruned"].get(name, {}).get("digest", digest)
        if record_digest((site / name).read_bytes()) != want:
            raise ValueError(f"{name}: digest differs from the wheel's RECORD")
        checked += 1
    return checked
