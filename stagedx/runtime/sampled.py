"""Sampled trees: children DRAWN from the draft's warped q, for exact sampled decoding.

A best-first tree of the draft's top children can only accept with the oracle mass of that
fixed set (the per-node rule, ``accept.walk_tree``). A tree whose children are drawn from q
without replacement is verified by recursive rejection sampling (``accept.verify_sampled``)
and accepts with the overlap of p and q at every try instead; a chain of one drawn child per
level is exactly classic speculative sampling, so such a tree never uses the draft worse than
the ``speculative`` strategy does.

Shape: ``widths[d]`` children are drawn below every drawn node of level d (root = level 0).
One draft call per level scores the level's new nodes (their uncommitted ancestors ride in
the same call under a tree mask); a level of a single node is committed to the draft's cache
at once (it is on the only path), so a chain costs what the speculative chain costs.
Optionally ``extra`` deterministic root children are added as leaves after the drawn ones:
draft2's candidates first, then the draft's most likely tokens, never a token already drawn.
They are verified by the per-node rule on the final residual draw, which keeps the law exact.
"""

from __future__ import annotations

import time

import numpy as np

from .batch import batch_room, candidates, run_batch
from .draft2 import NO_DRAFT2, Draft2
from .proposal import DraftCost, Proposal, Rule
from .runner import FETCH_LOGITS, Runner
from .sampling import SamplingConfig, warp
from .shapes import TreeConfig
from .tree import SOURCE_DRAFT, SOURCE_DRAFT2, OracleTree, ancestor_mask


def draw_without_replacement(q: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct tokens drawn one after another from ``q [V]`` (each draw renormalised
    over the tokens not yet drawn), in draw order, via Gumbel-top-k. Fewer when q's support
    is smaller than ``k``."""
    support = np.flatnonzero(q > 0)
    k = min(k, support.size)
    if k <= 0:
        return np.zeros(0, np.int64)
    keys = np.log(q[support]) + rng.gumbel(size=support.size)  # [S]
    top = np.argpartition(-keys, k - 1)[:k] if k < support.size else np.arange(support.size)
    return support[top[np.argsort(-keys[top], kind="stable")]].astype(np.int64)


def grow_sampled_tree(
    draft: Runner,
    draft2: Draft2,
    history: np.ndarray,  # [n] committed tokens; history[-1] is the root
    shape: TreeConfig,  # widths, extra, budget, lookahead, fanouts, draft_batch
    sampling: SamplingConfig,
    rng: np.random.Generator,
    depth_limit: int,
) -> Proposal:
    """A ``Rule.RECURSIVE`` proposal, grown level by level; after each level's draws keep only
    the ``budget - extra`` drawn nodes of highest path probability under q (a node's key is capped by its earlier
    siblings', so the kept siblings are always a prefix of the draw order, and by its
    parent's, so the kept set is a tree); pruned nodes are never scored by the draft."""
    t0 = time.perf_counter()
    levels = list(shape.widths[: max(0, depth_limit)])
    chain = _ChainDraft(draft, draft2 if shape.lookahead > 0 else NO_DRAFT2, history, shape, sampling)
    n = _Nodes(int(history[-1]))
    q = {0: chain.call(history[draft.length :], min(shape.lookahead, len(levels) - 1))}  # catch-up rows + root
    room = max(0, shape.budget - shape.extra)  # drawn nodes the oracle call can take
    frontier, committed = [0], 0  # committed: depth of the chain end the draft's cache holds
    for d, w in enumerate(levels):
        for node in frontier:
            key = n.key[node]
            with np.errstate(divide="ignore"):
                for tok in draw_without_replacement(q[node], int(w), rng):
                    key = min(key, n.key[node] + float(np.log(q[node][tok])))
                    n.add(int(tok), node, d + 1, key)
        q = n.prune(room, q)
        new = [i for i in range(len(n.tokens)) if n.depth[i] == d + 1]
        if not new or d + 1 == len(levels):
            break
        if len(new) == 1 and committed == d:  # the tree is still a chain: extend it
            token = n.tokens[new[0]]
            ahead = min(shape.lookahead, len(levels) - 2 - d)  # levels below it whose q may be needed
            q[new[0]] = chain.extend(token, ahead)
            committed += 1
        else:  # one draft call scores the new level below the committed levels
            chain.flush()
            qs, size = _score_level(draft, n, new, committed, sampling)
            q.update(qs)
            chain.sizes.append(size)
        frontier = new
    chain.flush()
    t1 = time.perf_counter()
    drawn = len(n.tokens)
    if shape.extra > 0:
        _add_extras(n, q[0], draft2, history, shape.extra)
    t2 = time.perf_counter()
    tree = OracleTree(
        np.asarray(n.tokens, np.int64),
        np.asarray(n.parents, np.int32),
        np.asarray(n.depth, np.int64),
        np.asarray(n.source, np.int64),
    )
    is_drawn = np.arange(len(n.tokens)) < drawn
    is_drawn[0] = False
    cost = DraftCost(chain.sizes, t1 - t0 - chain.time_draft2, chain.time_draft2 + (t2 - t1))
    return Proposal(tree, Rule.RECURSIVE, chain.path, cost, q, is_drawn)


def _score_level(draft: Runner, n: _Nodes, new: list, committed: int, sampling: SamplingConfig) -> tuple[dict, int]:
    """One draft call over every node below the committed chain (the new level and its
    uncommitted ancestors, under a tree mask); nothing is committed. Returns q of the new nodes
    and the call's size."""
    batch = [i for i in range(1, len(n.tokens)) if n.depth[i] > committed]
    local = {g: j for j, g in enumerate(batch)}
    bpar = np.asarray([local.get(n.parents[g], -1) for g in batch], np.int32)  # [B]
    btok = np.asarray([n.tokens[g] for g in batch], np.int64)  # [B]
    bpos = draft.length + np.asarray([n.depth[g] - committed - 1 for g in batch], np.int64)  # [B]
    out = draft.run(btok, bpos, ancestor_mask(bpar), (FETCH_LOGITS,))
    qs = warp(out.logits[[local[g] for g in new]], sampling)  # [len(new), V]
    return dict(zip(new, qs)), len(batch)


class _ChainDraft:
    """The draft calls along a drawn chain, with draft2 lookahead (the staged draft stage in
    sampled modes). Each call scores the chain's new rows plus, ``ahead`` levels deep, draft2's
    candidate tree below the chain's end (``Draft2.propose_tree`` with ``fanouts``); a token
    later drawn from q that is one of those candidates already has its q, and costs no call.
    Every token is still drawn from the draft's own q, so the chain's law (and the oracle's
    acceptance) is exactly that of the speculative chain; only draft calls are saved.
    Rows on the chain are committed to the draft's cache at the next call or at ``flush``."""

    def __init__(self, draft: Runner, draft2: Draft2, history: np.ndarray, shape: TreeConfig, sampling: SamplingConfig):
        self.draft, self.draft2, self.history, self.shape, self.sampling = draft, draft2, history, shape, sampling
        self.tokens = self.parents = self.logits = None  # the last call's rows (local ids) and logits
        self.row = -1  # local row of the chain's end in the last call
        self.pending: list = []  # local rows on the chain, not yet committed
        self.path: list = []  # chain tokens below the root (committed or pending)
        self.sizes: list = []  # tokens of each draft call
        self.time_draft2 = 0.0

    def call(self, rows: np.ndarray, ahead: int) -> np.ndarray:
        """Score ``rows`` [m] (the draft lacks them; the last is the chain's end) plus draft2's
        candidates below the end; returns q at the end."""
        self.flush()
        draft, t0 = self.draft, time.perf_counter()
        cand, cpar = np.zeros(0, np.int64), np.zeros(0, np.int32)
        if self.draft2.active and ahead > 0:
            context = np.concatenate([self.history, np.asarray(self.path, np.int64)])  # up to the chain's end
            room = batch_room(draft, self.shape.draft_batch, len(rows))
            cand, cpar = candidates(self.draft2, context, self.shape.fanouts[:ahead], room)  # [C], [C]
        self.time_draft2 += time.perf_counter() - t0
        self.tokens, self.parents, out = run_batch(draft, np.asarray(rows, np.int64), cand, cpar, (FETCH_LOGITS,))
        self.logits, self.row, self.pending = out.logits, len(rows) - 1, list(range(len(rows)))
        self.sizes.append(len(self.tokens))
        return warp(self.logits[self.row], self.sampling)

    def extend(self, token: int, ahead: int) -> np.ndarray:
        """The chain grows by ``token`` (drawn below its end): q below it, from the last call's
        rows when draft2 had proposed it there, else from a new call."""
        self.path.append(int(token))
        hit = np.flatnonzero((self.parents == self.row) & (self.tokens == token))  # [0 | 1]
        if hit.size == 0:
            return self.call(np.asarray([token], np.int64), ahead)
        self.row = int(hit[0])
        self.pending.append(self.row)
        return warp(self.logits[self.row], self.sampling)

    def flush(self) -> None:
        if self.pending:
            self.draft.commit(self.pending)
            self.pending = []


class _Nodes:
    """The growing tree: parallel lists, node 0 = the root, parents before children."""

    def __init__(self, root: int):
        self.tokens, self.parents, self.depth, self.key, self.source = [root], [-1], [0], [0.0], [-1]

    def add(self, token: int, parent: int, depth: int, key: float, source: int = SOURCE_DRAFT) -> None:
        self.tokens.append(token)
        self.parents.append(parent)
        self.depth.append(depth)
        self.key.append(key)
        self.source.append(source)

    def prune(self, room: int, q: dict) -> dict:
        """Keep the ``room`` best non-root nodes (ties: earlier first); re-index; return q."""
        if len(self.tokens) - 1 <= room:
            return q
        key = np.asarray(self.key[1:])
        order = np.lexsort((np.arange(len(key)), -key))[:room] + 1  # ancestors and earlier siblings first
        keep = np.concatenate([[0], np.sort(order)])
        slot = {int(g): j for j, g in enumerate(keep)}
        self.tokens = [self.tokens[g] for g in keep]
        self.parents = [-1] + [slot[self.parents[g]] for g in keep[1:]]
        self.depth = [self.depth[g] for g in keep]
        self.key = [self.key[g] for g in keep]
        self.source = [self.source[g] for g in keep]
        return {slot[g]: v for g, v in q.items() if g in slot}


def _add_extras(n: _Nodes, q_root: np.ndarray, draft2: Draft2, history: np.ndarray, extra: int) -> None:
    """Deterministic root leaves: draft2's candidates, then the draft's most likely tokens,
    never a token already below the root."""
    taken = {n.tokens[i] for i in range(1, len(n.tokens)) if n.parents[i] == 0}
    picks: list = []
    if draft2.active:
        ids, _ = draft2.successors(history, extra + len(taken))
        picks += [(int(t), SOURCE_DRAFT2) for t in ids]
    order = np.argsort(-q_root, kind="stable")[: extra + len(taken)]
    picks += [(int(t), SOURCE_DRAFT) for t in order if q_root[t] > 0]
    added = 0
    for tok, src in picks:
        if added >= extra:
            break
        if tok not in taken:
            taken.add(tok)
            n.add(tok, 0, 1, 0.0, src)
            added += 1
