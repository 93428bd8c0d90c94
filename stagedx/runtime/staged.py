"""The staged proposal: draft2 proposes branches, the draft scores them in tree-shaped calls,
and the most probable nodes form the tree the oracle verifies in one call.

One round of the draft stage (``grow_draft_tree``), one ``draft_call`` then one
``commit_greedy_path`` per draft call:
1. The batch is a chain (tokens the draft has not seen yet: catch-up rows and the root in the
   first call, then the draft's own greedy token ``g``) plus draft2's candidate subtree below
   the chain's end (``Draft2.propose_tree``: 12 successors, 7 of the best, then 4, 1, 1, 1).
2. One draft call scores the whole batch with a tree mask; every scored node now has the
   draft's top-K successors.
3. The chain rows and the draft's greedy path through the batch (as far as the batch covers
   it) are committed to the draft's KV cache speculatively; the next call starts below them.
   These rows survive the round when the oracle accepts the same tokens (see generator.py).
Then ``oracle_tree`` ranks every scored node and every top-K child of one by cumulative
ranking probability and keeps the ``budget`` best, ancestors first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .batch import batch_room, candidates, run_batch
from .draft2 import Draft2
from .proposal import DraftCost
from .runner import Runner
from .shapes import TreeConfig
from .tree import SOURCE_DRAFT, SOURCE_DRAFT2, OracleTree, depths, select_best_first


@dataclass
class DraftTree:
    """Nodes the draft scored this round (global ids; node 0 is the root)."""

    tokens: list = field(default_factory=list)  # [M] token of each node
    parents: list = field(default_factory=list)  # [M] global parent id, -1 for the root
    source: list = field(default_factory=list)  # [M] SOURCE_DRAFT2 | SOURCE_DRAFT
    topk_ids: list = field(default_factory=list)  # per call: [T_b, K]
    topk_logp: list = field(default_factory=list)  # per call: [T_b, K] ranking log-probs
    path: list = field(default_factory=list)  # tokens of the draft's speculative path below the root
    path_p: float = 1.0  # ranking probability of the draft's path, g included (dynamic depth)
    cost: DraftCost = field(default_factory=DraftCost)


@dataclass(frozen=True)
class DraftStage:
    """What stays fixed while one round's draft tree grows."""

    draft: Runner
    draft2: Draft2
    history: np.ndarray  # [n] committed tokens; history[-1] is the root
    cfg: TreeConfig
    rank: Callable[[np.ndarray], np.ndarray]  # topk_values [T, K] -> ranking log-probs
    depth_limit: int


@dataclass(frozen=True)
class DraftBatch:
    """One draft call, in *local* ids (rows of the batch, 0 .. T-1): the chain ``0 .. m-1``
    (rows the draft's KV lacks; its end ``m - 1`` is the root or the draft's last greedy token
    g) then draft2's candidates ``m .. T-1`` below the chain end. Only the chain end and the
    candidates are tree nodes: local ``m - 1 + j`` is *global* id ``base + j`` in the DraftTree,
    and row ``j`` of the call's top-K arrays."""

    tokens: np.ndarray  # [T] int64
    parents: np.ndarray  # [T] int32 local parent, -1 for row 0
    m: int  # chain length
    base: int  # global id of the chain end
    depth: int  # depth of the chain end below the root (0: it is the root)


def draft_call(stage: DraftStage, tree: DraftTree, chain: np.ndarray, parent: int) -> DraftBatch:
    """Build the batch (``chain`` [m] plus draft2's candidates below its end), run the draft on
    it and register the chain end and the candidates as nodes of ``tree``. ``parent``: global
    id of the chain end's parent (-1 when the chain ends at the root)."""
    draft, cfg = stage.draft, stage.cfg
    t0 = time.perf_counter()
    # draft2 proposes the successors of the chain's end: history, the path, then g
    below = chain[-1:] if parent >= 0 else chain[:0]  # [0 | 1]
    context = np.concatenate([stage.history, np.asarray(tree.path, np.int64), below])  # [n + depth]
    depth = len(tree.path) + len(below)  # of the chain end below the root
    levels = max(0, stage.depth_limit - depth)  # draft2 may propose this many levels
    room = batch_room(draft, cfg.draft_batch, len(chain))
    cand, cpar = candidates(stage.draft2, context, cfg.fanouts[:levels], room)  # [C], [C]
    t1 = time.perf_counter()
    tokens, parents, out = run_batch(draft, chain, cand, cpar)
    tree.cost.add_call(len(tokens), time.perf_counter() - t1, t1 - t0)

    # register the chain end and the candidates as tree nodes (catch-up rows are not)
    m, base = len(chain), len(tree.tokens)
    tree.tokens.extend(tokens[m - 1 :].tolist())  # [1 + C]
    tree.parents.append(parent)
    tree.parents.extend(np.where(cpar < 0, base, cpar + base + 1).tolist())  # [C] global ids
    tree.source.append(SOURCE_DRAFT)
    tree.source.extend([SOURCE_DRAFT2] * len(cand))
    tree.topk_ids.append(out.topk_indices[m - 1 :])  # [1 + C, K]
    tree.topk_logp.append(stage.rank(out.topk_values[m - 1 :]))  # [1 + C, K]
    return DraftBatch(tokens, parents, m, base, depth)


def commit_greedy_path(stage: DraftStage, tree: DraftTree, batch: DraftBatch) -> tuple[int, int]:
    """Commit the chain and the draft's greedy path through the candidates (as far as the batch
    covers it, and no deeper than the depth limit) to the draft's KV cache; extend
    ``tree.path`` and ``tree.path_p``. Returns the global id of the path's end and g, the
    draft's greedy token below it."""
    m = batch.m
    ids = tree.topk_ids[-1]  # [1 + C, K] row j = local m - 1 + j
    top1 = np.exp(tree.topk_logp[-1][:, 0])  # [1 + C] ranking prob of the draft's greedy token
    rows = list(range(m))  # local ids to commit: the chain, then the path below its end
    j = 0  # row of the path's end (local m - 1 + j)
    while batch.depth + len(rows) - m < stage.depth_limit:
        hit = np.flatnonzero((batch.parents == m - 1 + j) & (batch.tokens == ids[j, 0]))  # [0 | 1] local
        if hit.size == 0:
            break
        tree.path_p *= top1[j]
        j = int(hit[0]) - (m - 1)
        rows.append(m - 1 + j)
    stage.draft.commit(rows)
    if batch.depth > 0:  # the chain end g is itself on the path
        tree.path.append(int(batch.tokens[m - 1]))
    tree.path.extend(batch.tokens[rows[m:]].tolist())
    tree.path_p *= top1[j]
    return batch.base + j, int(ids[j, 0])


def grow_draft_tree(
    draft: Runner,
    draft2: Draft2,
    history: np.ndarray,  # [n] committed tokens; history[-1] is the root
    cfg: TreeConfig,
    rank: Callable[[np.ndarray], np.ndarray],  # topk_values [T, K] -> ranking log-probs
    depth_limit: int,
) -> DraftTree:
    """Up to ``cfg.draft_calls`` draft calls, each below the previous call's greedy path."""
    stage = DraftStage(draft, draft2, history, cfg, rank, depth_limit)
    tree = DraftTree()
    chain = history[draft.length :]  # [m] catch-up rows + the root
    parent = -1  # global id of the chain end's parent
    while True:
        batch = draft_call(stage, tree, chain, parent)
        parent, g = commit_greedy_path(stage, tree, batch)
        depth = len(tree.path) + 1  # of g below the root
        if tree.cost.calls >= cfg.draft_calls or depth >= depth_limit or tree.path_p < cfg.stop_p:
            return tree
        chain = np.asarray([g], np.int64)  # [1]


def oracle_tree(tree: DraftTree, budget: int, depth_limit: int, vocab: int) -> OracleTree:
    """Best-first selection over the scored nodes and the top-K children of each of them."""
    tok = np.asarray(tree.tokens, np.int64)  # [M]
    par = np.asarray(tree.parents, np.int64)  # [M]
    src = np.asarray(tree.source, np.int64)  # [M]
    kk = max(1, min(budget, tree.topk_ids[0].shape[1]))  # a child ranked below `budget` among
    ids = np.concatenate(tree.topk_ids)[:, :kk]  # [M, kk]    its siblings can never be chosen
    logp = np.concatenate(tree.topk_logp)[:, :kk]  # [M, kk]
    m = len(tok)

    # cumulative ranking log-prob of every scored node along its ancestors
    match = ids[par[1:]] == tok[1:, None]  # [M-1, kk]
    edge = np.concatenate([[0.0], np.where(match, logp[par[1:]], -np.inf).max(axis=1, initial=-np.inf)])
    logcum = np.zeros(m)
    depth = depths(par)
    for i in range(1, m):
        logcum[i] = logcum[par[i]] + edge[i]

    # candidates: scored nodes (minus the root) and the top-kk children of every scored node
    cpar = np.repeat(np.arange(m), kk)  # [M*kk]
    ctok = ids.ravel()
    fresh = ~np.isin(cpar * vocab + ctok, par[1:] * vocab + tok[1:])
    pool_tok = np.concatenate([tok[1:], ctok[fresh]])
    pool_par = np.concatenate([par[1:], cpar[fresh]]) - 1  # global id g -> pool index g - 1
    pool_logcum = np.concatenate([logcum[1:], (logcum[cpar] + logp.ravel())[fresh]])
    pool_depth = np.concatenate([depth[1:], (depth[cpar] + 1)[fresh]])
    pool_src = np.concatenate([src[1:], np.full(int(fresh.sum()), SOURCE_DRAFT)])
    pool_logcum[pool_depth > depth_limit] = -np.inf

    sel = select_best_first(pool_logcum, pool_par, pool_depth, budget)
    return OracleTree(
        np.concatenate([tok[:1], pool_tok[sel.index]]),
        np.concatenate([[-1], sel.parents]).astype(np.int32),
        np.concatenate([[0], pool_depth[sel.index]]),
        np.concatenate([[-1], pool_src[sel.index]]),
    )


def draft2_tree(draft2: Draft2, history: np.ndarray, cfg: TreeConfig, depth_limit: int) -> OracleTree:
    """``draft_calls == 0``: draft2's candidate tree goes to the oracle directly, in its own
    order (level by level along the most likely branch), cut to the budget. Where a draft call
    costs more than the acceptance it adds (small trees on a CPU), `stagedx tune` picks this."""
    tok, par = draft2.propose_tree(history, cfg.fanouts[:depth_limit])
    tok, par = tok[: cfg.budget], par[: cfg.budget]  # a prefix keeps parents before children
    parents = np.concatenate([[-1], np.where(par < 0, 0, par + 1)]).astype(np.int32)
    source = np.concatenate([[-1], np.full(len(tok), SOURCE_DRAFT2)])
    return OracleTree(np.concatenate([history[-1:], tok]).astype(np.int64), parents, depths(parents), source)
