"""Corpus files for the n-gram fit, distillation and quantization's held-out text: folders of
``*.py`` files, single files, or ``stdlib`` (this interpreter's standard library), minus the
files a model card's ``val_files.json`` lists (``--exclude-from``)."""

from __future__ import annotations

import json
import os
import sysconfig
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import StagedxError

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _walk_py(root: Path, skip: set[str]) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(filenames):
            if name.endswith(".py"):
                yield Path(dirpath) / name


def is_excluded(path: Path, rel_root: Path, exclude: frozenset[str]) -> bool:
    """True when the path relative to ``rel_root``, or any trailing part of it, is listed."""
    try:
        rel = path.relative_to(rel_root).as_posix()
        if rel in exclude:
            return True
    except ValueError:
        pass
    parts = path.parts
    return any("/".join(parts[i:]) in exclude for i in range(len(parts)))


def read_exclude_list(path: Path | None, option: str = "--exclude-from") -> tuple[str, ...]:
    """The JSON list of stdlib-relative paths in ``path`` (a model card's ``val_files.json``)."""
    if path is None:
        return ()
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise StagedxError(f"cannot read {option} {path}: {exc}") from exc
    if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
        raise StagedxError(f"{option} {path} must hold a JSON list of relative paths")
    return tuple(data)


def resolve_corpus(paths: Sequence[str | Path], exclude: Sequence[str] = ()) -> list[Path]:
    """Expand corpus arguments into a sorted list of files.

    A folder contributes its ``*.py`` files recursively; a file is taken as given (any text);
    the word ``stdlib`` means the running interpreter's standard library without
    site-packages. ``exclude`` holds paths relative to the stdlib root (as in the model card's
    ``val_files.json``) or path suffixes.
    """
    excl = frozenset(str(e).strip("/") for e in exclude)
    root = stdlib_root()
    files: dict[Path, None] = {}
    for arg in paths:
        if str(arg) == "stdlib":
            found: Iterable[Path] = _walk_py(root, _SKIP_DIRS)
        else:
            p = Path(arg)
            if p.is_dir():
                found = _walk_py(p, {"__pycache__"})
            elif p.is_file():
                found = [p]
            else:
                raise StagedxError(f"corpus path not found: {p}")
        for f in found:
            if not is_excluded(f, root, excl):
                files.setdefault(f.resolve(), None)
    if not files:
        raise StagedxError(f"corpus is empty: no files found in {', '.join(map(str, paths))}")
    return sorted(files)
