"""Helpers of the reliability suite: run the CLI in-process, check one-line
errors, copy a bundle and rewrite its manifest."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from stagedx.cli import main
from stagedx.files import sha256_file
from stagedx.manifest import MANIFEST_NAME


def run_cli(capsys, args, stdin: bytes | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """``stagedx ARGS`` in this process: (exit code, stdout, stderr)."""
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str, progress: bool = False) -> str:
    """Exit 2, exactly one non-empty stderr line starting with ``error:`` and holding every
    needle (with ``progress``, after the command's own progress lines)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if progress:
        assert not [ln for ln in lines[:-1] if "error" in ln.lower()], err
        lines = lines[-1:]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def read_manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST_NAME).read_text())


def write_manifest_dict(bundle: Path, data) -> None:
    (bundle / MANIFEST_NAME).write_text(json.dumps(data, indent=1))


def edit_manifest(bundle: Path, change) -> dict:
    """``change(data)`` edits the parsed manifest in place; it is written back as is."""
    data = read_manifest(bundle)
    change(data)
    write_manifest_dict(bundle, data)
    return data


def replace_file(bundle: Path, name: str, content: bytes, entry: dict) -> None:
    """Overwrite ``bundle/name`` and update ``entry["sha256"]`` (a tamperer who fixes the hash)."""
    (bundle / name).write_bytes(content)
    entry["sha256"] = sha256_file(bundle / name)
