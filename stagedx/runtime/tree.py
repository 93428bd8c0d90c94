"""Token trees as flat NumPy arrays: the tree one oracle call verifies (``OracleTree``), its
masks and depths, and best-first selection under a node budget. Pure NumPy, no model.

A tree of N nodes is ``tokens [N] int64`` and ``parents [N] int32`` with ``parents[i] < i``
(parents before children); ``-1`` marks a node whose parent is the last committed KV row
(the tree's root in the oracle call, the first chain token in a draft call).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Which stage proposed a tree node (``OracleTree.source``); -1 for the root.
SOURCE_DRAFT2 = 0
SOURCE_DRAFT = 1
SOURCE_GRAMMAR = 2  # a token the grammar forces (constrained decoding): a draft stage that costs nothing
STAGE_NAMES = {SOURCE_DRAFT2: "draft2", SOURCE_DRAFT: "draft", SOURCE_GRAMMAR: "grammar"}


def depths(parents: np.ndarray) -> np.ndarray:
    """[N] int: 0 for root-level nodes, depth(parent) + 1 otherwise."""
    out = np.zeros(len(parents), dtype=np.int64)
    for i, p in enumerate(parents):
        if p >= 0:
            out[i] = out[p] + 1
    return out


def ancestor_mask(parents: np.ndarray) -> np.ndarray:
    """[N, N] bool: row i is True at i and at every ancestor of i (the tree attention mask)."""
    n = len(parents)
    mask = np.eye(n, dtype=bool)
    for i, p in enumerate(parents):
        if p >= 0:
            mask[i] |= mask[p]
    return mask


def is_valid_tree(parents: np.ndarray) -> bool:
    idx = np.arange(len(parents))
    return bool(np.all((parents >= -1) & (parents < idx)))


@dataclass(frozen=True)
class Selection:
    """Nodes chosen for the oracle, in parents-before-children order (root excluded)."""

    index: np.ndarray  # [B] indices into the candidate pool
    parents: np.ndarray  # [B] parent positions in the oracle batch (0 = the root)


def select_best_first(
    logcum: np.ndarray,  # [M] cumulative ranking log-prob of each candidate
    parent: np.ndarray,  # [M] parent pool index, -1 = child of the root
    depth: np.ndarray,  # [M] depth below the root (>= 1)
    budget: int,
) -> Selection:
    """The ``budget`` most probable candidates whose ancestors are all chosen too.

    Cumulative probabilities never increase from parent to child, so the top set by
    ``(logcum desc, depth asc)`` is closed under ancestors; the closure pass below only
    guards against ``-inf`` parents and float ties. Returns the chosen pool indices ordered
    by depth and their parents re-indexed into the oracle batch (root = 0, node k = k + 1).
    """
    finite = np.flatnonzero(np.isfinite(logcum))
    if budget <= 0 or finite.size == 0:
        return Selection(np.zeros(0, np.int64), np.zeros(0, np.int32))
    order = finite[np.lexsort((depth[finite], -logcum[finite]))]
    chosen = np.zeros(len(logcum), dtype=bool)
    picked = []
    for i in order:  # best first; a node enters only after its parent
        p = parent[i]
        if p < 0 or chosen[p]:
            chosen[i] = True
            picked.append(i)
            if len(picked) == budget:
                break
    picked = np.asarray(picked, dtype=np.int64)
    picked = picked[np.argsort(depth[picked], kind="stable")]  # parents before children
    slot = np.full(len(logcum), -1, dtype=np.int64)
    slot[picked] = np.arange(1, len(picked) + 1)
    par = parent[picked]
    batch_parents = np.where(par < 0, 0, slot[np.maximum(par, 0)]).astype(np.int32)
    return Selection(picked, batch_parents)


@dataclass(frozen=True)
class OracleTree:
    """The tree one oracle call verifies; node 0 is the root (the pending token)."""

    tokens: np.ndarray  # [N] int64
    parents: np.ndarray  # [N] int32, -1 for the root
    depth: np.ndarray  # [N] int64
    source: np.ndarray  # [N] SOURCE_* of each node, -1 for the root

    def head(self, rows: int) -> OracleTree:
        """The first ``rows`` nodes (still a tree: parents come before children)."""
        if len(self.tokens) <= rows:
            return self
        return OracleTree(self.tokens[:rows], self.parents[:rows], self.depth[:rows], self.source[:rows])


def root_only(token: int) -> OracleTree:
    """No speculation: the oracle scores the pending token alone."""
    return OracleTree(
        np.asarray([token], np.int64), np.asarray([-1], np.int32), np.zeros(1, np.int64), np.asarray([-1], np.int64)
    )


def chain_tree(tokens: np.ndarray) -> OracleTree:
    """A linear chain root -> t1 -> ... (classic speculative decoding)."""
    n = len(tokens)
    src = np.full(n, SOURCE_DRAFT, np.int64)
    src[0] = -1
    return OracleTree(np.asarray(tokens, np.int64), np.arange(-1, n - 1, dtype=np.int32), np.arange(n), src)
