"""File-system helpers every stage uses: hashing, atomic writes, atomic output folders and the
removal of temporaries a killed run left behind. Standard library only, like ``stagedx.manifest``."""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from .errors import StagedxError

# The file that makes a folder a stagedx bundle (``stagedx.manifest`` reads and writes it): the
# only kind of non-empty folder ``AtomicFolder`` may replace.
MANIFEST_NAME = "manifest.json"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder + rename: a
    reader sees the old file or the new one, never half of one; a failure leaves nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; bundles and results are shared
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # disk full, read-only: one line; the old file is intact
            raise StagedxError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise
    return path


class AtomicFolder:
    """Build a folder under a temporary name next to ``target`` and rename it at the end.

    ``with AtomicFolder(target, force) as tmp: ...write into tmp...``; on any exception
    (SIGTERM included, which the CLI turns into KeyboardInterrupt) the temporary folder is
    removed and ``target`` is untouched. ``force`` replaces only an empty folder or a stagedx
    bundle (a folder holding a manifest): never a file or a folder of the user's. Temporaries
    left by an earlier run that was killed (``.NAME.tmp-PID-*``, ``.NAME.old-PID``, whose PID is
    no longer running) are removed on entry.
    """

    def __init__(self, target: str | os.PathLike, force: bool = False):
        self.target = Path(target)
        self.force = force
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.target.exists() or self.target.is_symlink():
            if not self.force:
                raise StagedxError(f"output exists: {self.target} (use --force to replace it)")
            _check_replaceable(self.target)
        parent = self.target.parent if str(self.target.parent) else Path(".")
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StagedxError(f"cannot create the output's parent folder {parent}: {exc.strerror}") from exc
        if not os.access(parent, os.W_OK):
            raise StagedxError(f"output location is not writable: {parent}")
        remove_stale_temporaries(self.target)
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-{os.getpid()}-", dir=parent))
            os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        except OSError as exc:
            raise StagedxError(f"cannot create a folder in {parent}: {exc}") from exc
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError):  # disk full, permissions: one line, nothing left behind
                where = f" ({exc.filename})" if exc.filename else ""
                raise StagedxError(
                    f"writing {self.target} failed: {exc.strerror or exc}{where}; nothing was written"
                ) from exc
            return False
        try:
            if not self.force:
                self._claim()
            elif self.target.exists() or self.target.is_symlink():
                old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
                os.replace(self.target, old)
                try:
                    os.replace(self.tmp, self.target)
                except BaseException:
                    os.replace(old, self.target)
                    raise
                _remove(old)
            else:
                os.replace(self.tmp, self.target)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return False

    def _claim(self) -> None:
        """Without ``force``: rename the temporary onto a target that must still be absent. Another
        run may have written the same output meanwhile; rename(2) of a folder fails onto a file or a
        non-empty folder, so the first writer's result stays and this run fails with one line."""
        assert self.tmp is not None
        if self.target.is_symlink():
            raise StagedxError(f"output appeared while this run was writing it: {self.target}; nothing was replaced")
        try:
            os.rename(self.tmp, self.target)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
                raise StagedxError(
                    f"output appeared while this run was writing it (another run?): {self.target}; it was left "
                    "as it is and this run's result discarded (use --force to replace it)"
                ) from None
            raise


def _check_replaceable(target: Path) -> None:
    """``--force`` may replace an empty folder or a stagedx bundle, nothing else."""
    if target.is_dir() and not target.is_symlink():
        names = {p.name for p in target.iterdir()}
        if not names or _holds_manifest(target):
            return
    raise StagedxError(
        f"--force replaces only a stagedx bundle (a folder with {MANIFEST_NAME}) or an empty folder; "
        f"{target} is neither, so nothing was replaced: choose another output or remove it yourself"
    )


def _holds_manifest(folder: Path) -> bool:
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" in data and "models" in data


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


PIDLESS_STALE_S = 3600.0  # a temporary without a PID is taken as abandoned after an hour


def remove_stale_temporaries(target: str | os.PathLike) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID`` next to ``target`` whose process is gone,
    and ``.NAME.tmp-XXXXXXXX`` (no PID: earlier stagedx versions) older than ``PIDLESS_STALE_S``."""
    target = Path(target)
    parent = target.parent if str(target.parent) else Path(".")
    removed = []
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:tmp-(\d+)-.+|old-(\d+)|tmp-([a-z0-9_]{{8}}))")
    try:
        siblings = list(parent.iterdir())
    except OSError:
        return removed
    for path in siblings:
        m = pattern.fullmatch(path.name)
        if m is None or path.is_symlink() or not path.is_dir():
            continue
        if m.group(3) is not None:
            stale = time.time() - path.stat().st_mtime > PIDLESS_STALE_S
        else:
            stale = not _pid_alive(int(m.group(1) or m.group(2)))
        if stale:
            _remove(path)
            removed.append(path)
    return removed


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)
