"""Class 5: ``--force`` replaces only a bundle or an empty folder, never a user's files; an
export killed by SIGTERM leaves nothing behind, and temporaries of runs that died are
removed by the next export into the same place."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stagedx.errors import StagedxError
from stagedx.files import AtomicFolder, remove_stale_temporaries
from stagedx.manifest import load_manifest
from tests.reliability._util import assert_one_line_error, run_cli

ROOT = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _export_args(tiny_pair, out):
    return ["export", tiny_pair.oracle, "--draft", tiny_pair.draft, "-o", out, "--no-verify", "--topk", "4"]


@pytest.mark.parametrize("make", ["user folder", "file", "folder with a non-bundle manifest"])
def test_force_never_deletes_what_is_not_a_bundle(tiny_pair, tmp_path, capsys, make):
    out = tmp_path / "out"
    if make == "file":
        out.write_text("my notes")
    else:
        out.mkdir()
        (out / "thesis.tex").write_text("years of work")
        if make.startswith("folder with"):
            (out / "manifest.json").write_text('{"name": "my web app"}')
    before = sorted(p.name for p in tmp_path.rglob("*"))
    code, _, err = run_cli(capsys, _export_args(tiny_pair, out) + ["--force"])
    assert_one_line_error(code, err, "--force replaces only a stagedx bundle", str(out))
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (out.read_text() if out.is_file() else (out / "thesis.tex").read_text()) in ("my notes", "years of work")


def test_force_replaces_a_bundle_and_an_empty_folder(tiny_pair, tiny_bundle, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, _export_args(tiny_pair, empty) + ["--force"])
    assert code == 0, err
    load_manifest(empty)
    code, _, err = run_cli(capsys, _export_args(tiny_pair, empty) + ["--force", "--topk", "5"])
    assert code == 0, err
    assert load_manifest(empty).oracle.topk == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]  # no .tmp-* / .old-* left


def test_stale_temporaries_of_dead_runs_are_removed_live_ones_kept(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    names = [f".b.tmp-{dead}-abc", f".b.old-{dead}", f".b.tmp-{alive}-xyz", ".c.tmp-1-zzz", "b.tmp-1-q"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_text("x")
    removed = remove_stale_temporaries(tmp_path / "b")
    assert sorted(p.name for p in removed) == sorted(names[:2])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])
    with AtomicFolder(tmp_path / "b") as tmp:
        (tmp / "f").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:] + ["b"])


def test_pidless_temporaries_of_older_versions_are_removed_once_old(tmp_path):
    old, recent = tmp_path / ".b.tmp-ab12_xyz", tmp_path / ".b.tmp-qwertyui"
    for path in (old, recent):
        path.mkdir()
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    assert remove_stale_temporaries(tmp_path / "b") == [old]
    assert [p.name for p in tmp_path.iterdir()] == [recent.name]


def test_atomic_folder_turns_a_full_disk_into_one_error_and_leaves_nothing(tmp_path):
    import errno

    full = pytest.raises(StagedxError, match="No space left on device.*nothing was written")
    with full, AtomicFolder(tmp_path / "b") as tmp:
        (tmp / "half").write_text("x")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "half"))
    assert list(tmp_path.iterdir()) == []


def test_export_disk_full_is_one_line(tiny_pair, tmp_path, capsys, monkeypatch):
    import errno
    import shutil

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfile", full)  # the tokenizer copy, after both graphs are written
    code, _, err = run_cli(capsys, _export_args(tiny_pair, tmp_path / "b"))
    assert_one_line_error(code, err, "No space left on device", progress=True)
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_export_leaves_nothing_behind(tiny_pair, tmp_path):
    out_parent = tmp_path / "exports"
    out_parent.mkdir()
    (out_parent / "keep.txt").write_text("mine")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "stagedx", *map(str, _export_args(tiny_pair, out_parent / "b"))]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".b.tmp-") for p in out_parent.iterdir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1] == "terminated"
    assert "Traceback" not in err
    assert sorted(p.name for p in out_parent.iterdir()) == ["keep.txt"]


def test_two_writers_racing_to_one_output_first_wins_second_fails(tmp_path):
    out = tmp_path / "out"
    first, second = AtomicFolder(out), AtomicFolder(out)  # both saw no output when they began
    a, b = first.__enter__(), second.__enter__()
    (a / "manifest.json").write_text("first")
    (b / "manifest.json").write_text("second")
    first.__exit__(None, None, None)
    with pytest.raises(StagedxError, match="output appeared while this run was writing it"):
        second.__exit__(None, None, None)
    assert (out / "manifest.json").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the loser's temporary is gone


def test_racing_export_exits_2_and_leaves_the_first(tiny_pair, tiny_bundle, tmp_path, capsys, monkeypatch):
    import shutil

    import stagedx.export.bundle as bundle_module

    out = tmp_path / "out"

    class Raced(AtomicFolder):
        def __enter__(self):
            tmp = super().__enter__()
            shutil.copytree(tiny_bundle, out)  # another export finishes first
            return tmp

    monkeypatch.setattr(bundle_module, "AtomicFolder", Raced)
    code, _, err = run_cli(capsys, _export_args(tiny_pair, out))
    assert_one_line_error(code, err, "output appeared while this run was writing it", str(out), progress=True)
    assert load_manifest(out).oracle.topk == load_manifest(tiny_bundle).oracle.topk  # the first, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
