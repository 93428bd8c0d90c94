"""A frequency-ranked small vocabulary for a draft's LM head (FR-Spec, Zhao et al. 2025).

Most of a small draft's cost is its head (SmolLM2: 28M of a 2-layer draft's 35M parameters
are the 49,152 x 576 tied matrix). An FR-Spec draft scores only the N most frequent tokens of
its training text; every other token gets the logit ``OUT_OF_HEAD`` (the draft's q is zero
there), so verification stays exact: the oracle still decides every token.

A checkpoint carries its head vocabulary in ``head_vocab.json`` ({"ids": [...], ...}) next to
an ordinary tied-embedding checkpoint; transformers ignores the file (the checkpoint alone is a
full-vocabulary model), ``stagedx export`` reads it and builds a graph whose logits and top-k
still come back in the full vocabulary's id space, so the runtime needs no change.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import StagedxError

HEAD_VOCAB_FILE = "head_vocab.json"


def rank_by_frequency(counts: np.ndarray, n: int, always: tuple[int, ...] = ()) -> np.ndarray:
    """The ``n`` most frequent token ids of ``counts`` [V] (ties: lower id first) plus
    ``always`` (special tokens), sorted ascending: [n'] int64."""
    if n < 1:
        raise StagedxError(f"head vocabulary size must be at least 1, got {n}")
    order = np.lexsort((np.arange(len(counts)), -counts))  # [V] by count desc, then id
    ids = set(order[: min(n, len(counts))].tolist()) | {int(a) for a in always if 0 <= a < len(counts)}
    return np.array(sorted(ids), dtype=np.int64)


def write_head_vocab(folder: Path, ids: np.ndarray, source: str) -> None:
    (Path(folder) / HEAD_VOCAB_FILE).write_text(
        json.dumps({"source": source, "n": len(ids), "ids": ids.tolist()}) + "\n"
    )


def read_head_vocab(folder: Path, vocab_size: int) -> np.ndarray | None:
    """The checkpoint's head vocabulary ([N] int64, ascending, unique, within the vocabulary)
    or None when it has none; a malformed file is an error naming it."""
    path = Path(folder) / HEAD_VOCAB_FILE
    if not path.is_file():
        return None
    try:
        ids = json.loads(path.read_text())["ids"]
        arr = np.asarray(ids, dtype=np.int64)  # [N]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StagedxError(f"unreadable {path}: {exc}") from exc
    if arr.ndim != 1 or not len(arr) or arr.min() < 0 or arr.max() >= vocab_size or np.any(np.diff(arr) <= 0):
        raise StagedxError(f"{path}: 'ids' must be a non-empty ascending list of distinct ids below {vocab_size}")
    return arr


def inverse_table(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """[V] int64: the head position of each vocabulary id, ``len(ids)`` where it has none."""
    inv = np.full(vocab_size, len(ids), dtype=np.int64)  # [V]
    inv[ids] = np.arange(len(ids))
    return inv


def outside_head(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Reference logits [T, V] as a small-head graph returns them: the fp32 fill (-1e9, at or
    below ``numerics.OUT_OF_HEAD``) for every id outside the head."""
    out = np.full_like(logits, -1.0e9)  # [T, V]
    out[:, ids] = logits[:, ids]
    return out
