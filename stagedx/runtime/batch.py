"""One batched draft call: a chain of rows the draft's cache lacks, then draft2's candidate
subtree below the chain's end, scored together under a tree mask. Shared by the greedy draft
stage (``staged.py``) and the sampled lookahead chain (``sampled.py``)."""

from __future__ import annotations

import numpy as np

from .draft2 import Draft2
from .runner import FETCH_TOPK, Runner
from .tree import ancestor_mask


def chain_batch(chain: np.ndarray, cand_tokens: np.ndarray, cand_parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local arrays for one draft call: the chain then draft2's candidates under its end."""
    m = len(chain)
    parents = np.concatenate([np.arange(-1, m - 1), np.where(cand_parents < 0, m - 1, cand_parents + m)])  # [T]
    return np.concatenate([chain, cand_tokens]).astype(np.int64), parents.astype(np.int32)  # [T], [T]


def batch_room(draft: Runner, draft_batch: int, m: int) -> int:
    """draft2 candidates one draft call can carry beside ``m`` chain rows."""
    return max(0, min(draft_batch, draft.max_context - draft.length) - m)


def candidates(draft2: Draft2, context: np.ndarray, fanouts: tuple, room: int) -> tuple[np.ndarray, np.ndarray]:
    """draft2's candidate tree below ``context[-1]`` (``Draft2.propose_tree``), cut to ``room``
    nodes (a prefix keeps parents before children): tokens [C] int64, parents [C] int32."""
    if not fanouts or room <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int32)
    cand, cpar = draft2.propose_tree(context, fanouts)  # [C], [C]
    return cand[:room], cpar[:room]


def run_batch(draft: Runner, chain: np.ndarray, cand: np.ndarray, cpar: np.ndarray, fetch=(FETCH_TOPK,)):
    """One draft call over ``chain`` then the candidates below its end, under a tree mask, at
    positions by depth. Returns (tokens [T], local parents [T], RunOutput)."""
    tokens, parents = chain_batch(chain, cand, cpar)  # [T], [T]
    mask = ancestor_mask(parents)  # [T, T]
    positions = draft.length + mask.sum(axis=1) - 1  # [T] depth = ancestors in the batch
    return tokens, parents, draft.run(tokens, positions, mask, fetch)
