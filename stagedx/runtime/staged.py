"""The staged proposal: draft2 proposes branches, the draft scores them in tree-shaped calls,
and the most probable nodes form the tree the oracle verifies in one call.

One round of the draft stage (``grow_draft_tree``):
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
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import StagedxError
from .runner import Runner
from .tree import ancestor_mask, depths, select_best_first

SOURCE_DRAFT2 = 0
SOURCE_DRAFT = 1


@dataclass(frozen=True)
class TreeConfig:
    """Tree shape. The defaults are the best three-stage shape measured for greedy decoding of
    the vendored pair on a 2-core CPU (thin draft2 chains: a draft call's cost grows with its
    batch there); the paper's GPU shape is
    ``TreeConfig(budget=64, fanouts=(12, 7, 4, 1, 1, 1), draft_calls=3)``."""

    budget: int = 12  # oracle tree nodes per call besides the root (0 = no speculation)
    max_depth: int = 10  # deepest tree node below the root
    fanouts: tuple[int, ...] = (2, 1, 1, 1, 1, 1, 1, 1, 1, 1)  # draft2 fan-outs per level
    draft_calls: int = 1  # sequential draft calls per round (staged; 0 = draft2 feeds the oracle)
    draft_batch: int = 32  # nodes per draft call, chain included
    tau: float = 0.1  # greedy ranking temperature
    spec_k: int = 4  # chain length of the classic speculative strategy
    stop_p: float = 0.0  # dynamic depth: no further draft call once the path's ranking prob < stop_p
    widths: tuple[int, ...] = ()  # sampled modes: children drawn from q per level (sampled.py); () = best-first
    extra: int = 0  # sampled trees: deterministic root leaves (draft2's, then the draft's top tokens)

    def __post_init__(self) -> None:
        """Refuse shapes the decode loop cannot run, however the config was built."""
        for name, low in (("budget", 0), ("max_depth", 1), ("draft_calls", 0), ("draft_batch", 1), ("spec_k", 1)):
            value = getattr(self, name)
            if not _is_int(value) or not low <= value <= MAX_TREE_FIELD:
                raise StagedxError(f"tree {name} must be an integer in [{low}, {MAX_TREE_FIELD}], got {value!r}")
        if not isinstance(self.fanouts, tuple) or not all(_is_int(f) and 1 <= f <= MAX_TREE_FIELD for f in self.fanouts):
            raise StagedxError(f"tree fanouts must be a tuple of integers in [1, {MAX_TREE_FIELD}], got {self.fanouts!r}")
        if not isinstance(self.tau, (int, float)) or isinstance(self.tau, bool) or not 0 < self.tau < float("inf"):
            raise StagedxError(f"tree tau (greedy ranking temperature) must be a finite number > 0, got {self.tau!r}")
        if not _is_int(self.extra) or not 0 <= self.extra <= MAX_TREE_FIELD:
            raise StagedxError(f"tree extra must be an integer in [0, {MAX_TREE_FIELD}], got {self.extra!r}")
        if not isinstance(self.widths, tuple) or not all(_is_int(w) and 1 <= w <= MAX_TREE_FIELD for w in self.widths):
            raise StagedxError(f"tree widths must be a tuple of integers in [1, {MAX_TREE_FIELD}], got {self.widths!r}")
        stop_p = self.stop_p
        if not isinstance(stop_p, (int, float)) or isinstance(stop_p, bool) or not 0 <= stop_p <= 1:
            raise StagedxError(f"tree stop_p (dynamic depth threshold) must be a number in [0, 1], got {stop_p!r}")

    @staticmethod
    def from_dict(d: dict) -> "TreeConfig":
        if not isinstance(d, dict):
            raise StagedxError(f"a tree shape must be a JSON object, got {type(d).__name__}")
        names = TreeConfig.__dataclass_fields__
        kw = {k: v for k, v in d.items() if k in names}
        for name in ("fanouts", "widths"):
            if name in kw:
                if not isinstance(kw[name], (list, tuple)):
                    raise StagedxError(f"tree {name} must be a list of integers, got {kw[name]!r}")
                kw[name] = tuple(kw[name])
        return TreeConfig(**kw)


MAX_TREE_FIELD = 4096  # far above any useful tree; keeps a typo from allocating gigabytes


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


@dataclass
class DraftTree:
    """Nodes the draft scored this round (global ids; node 0 is the root)."""

    tokens: list = field(default_factory=list)  # [M] token of each node
    parents: list = field(default_factory=list)  # [M] global parent id, -1 for the root
    source: list = field(default_factory=list)  # [M] SOURCE_DRAFT2 | SOURCE_DRAFT
    topk_ids: list = field(default_factory=list)  # per call: [T_b, K]
    topk_logp: list = field(default_factory=list)  # per call: [T_b, K] ranking log-probs
    path: list = field(default_factory=list)  # tokens of the draft's speculative path below the root
    calls: int = 0
    time_draft2: float = 0.0
    time_draft: float = 0.0
    path_p: float = 1.0  # ranking probability of the draft's path, g included (dynamic depth)
    sizes: list = field(default_factory=list)  # tokens of each draft call (for tune's cost model)


def _batch(chain: np.ndarray, cand_tokens: np.ndarray, cand_parents: np.ndarray):
    """Local arrays for one draft call: the chain then draft2's candidates under its end."""
    m = len(chain)
    parents = np.concatenate([np.arange(-1, m - 1), np.where(cand_parents < 0, m - 1, cand_parents + m)])
    return np.concatenate([chain, cand_tokens]).astype(np.int64), parents.astype(np.int32)


def grow_draft_tree(
    draft: Runner,
    draft2,  # stagedx.runtime.draft2.Draft2
    history: np.ndarray,  # [n] committed tokens; history[-1] is the root
    cfg: TreeConfig,
    rank: Callable[[np.ndarray], np.ndarray],  # topk_values [T, K] -> ranking log-probs
    depth_limit: int,
) -> DraftTree:
    tree = DraftTree()
    chain = history[draft.length :]  # catch-up rows + the root
    root_parent = -1  # global id of the chain end's parent
    depth0 = 0  # depth of the chain end below the root
    while True:
        t0 = time.perf_counter()
        # draft2 proposes the successors of the chain's end: history, the path, then g
        below = chain[-1:] if root_parent >= 0 else chain[:0]
        context = np.concatenate([history, np.asarray(tree.path, np.int64), below])
        levels = max(0, depth_limit - depth0)  # draft2 may propose this many levels
        cand, cpar = draft2.propose_tree(context, cfg.fanouts[:levels]) if levels else (np.zeros(0, np.int64), np.zeros(0, np.int32))
        keep = max(0, min(cfg.draft_batch, draft.max_context - draft.length) - len(chain))
        cand, cpar = cand[:keep], cpar[:keep]  # a prefix keeps parents before children
        t1 = time.perf_counter()
        tokens, parents = _batch(chain, cand, cpar)
        mask = ancestor_mask(parents)  # [T, T]
        positions = draft.length + mask.sum(axis=1) - 1  # depth = ancestors in the batch
        out = draft.run(tokens, positions, mask)
        t2 = time.perf_counter()
        tree.time_draft2 += t1 - t0
        tree.time_draft += t2 - t1
        tree.calls += 1
        tree.sizes.append(len(tokens))

        # register the chain end and the candidates as tree nodes (catch-up rows are not)
        m = len(chain)
        base = len(tree.tokens)
        tree.tokens.extend(tokens[m - 1 :].tolist())
        tree.parents.append(root_parent)
        tree.parents.extend(np.where(cpar < 0, base, cpar + base + 1).tolist())
        tree.source.append(SOURCE_DRAFT)
        tree.source.extend([SOURCE_DRAFT2] * len(cand))
        ids = out.topk_indices[m - 1 :]  # [1 + C, K]
        tree.topk_ids.append(ids)
        tree.topk_logp.append(rank(out.topk_values[m - 1 :]))

        # commit the chain and the draft's greedy path through the candidates
        top1 = np.exp(tree.topk_logp[-1][:, 0])  # [1 + C] ranking prob of the draft's greedy token
        rows = list(range(m))
        local = m - 1
        while depth0 + len(rows) - m < depth_limit:
            want = ids[local - (m - 1), 0]
            hit = np.flatnonzero((parents == local) & (tokens == want))
            if hit.size == 0:
                break
            tree.path_p *= top1[local - (m - 1)]
            local = int(hit[0])
            rows.append(local)
        draft.commit(rows)
        if root_parent >= 0:  # the chain end g is itself on the path
            tree.path.append(int(chain[-1]))
        tree.path.extend(tokens[rows[m:]].tolist())
        end = base + (local - (m - 1))  # global id of the path end

        g = int(ids[local - (m - 1), 0])  # the draft's greedy token below the path end
        tree.path_p *= top1[local - (m - 1)]
        depth0 = len(tree.path) + 1
        if tree.calls >= cfg.draft_calls or depth0 >= depth_limit or tree.path_p < cfg.stop_p:
            return tree
        chain = np.asarray([g], np.int64)
        root_parent = end


@dataclass(frozen=True)
class OracleTree:
    """The tree one oracle call verifies; node 0 is the root (the pending token)."""

    tokens: np.ndarray  # [N] int64
    parents: np.ndarray  # [N] int32, -1 for the root
    depth: np.ndarray  # [N] int64
    source: np.ndarray  # [N] SOURCE_* of each node, -1 for the root


def root_only(token: int) -> OracleTree:
    return OracleTree(
        np.asarray([token], np.int64), np.asarray([-1], np.int32), np.zeros(1, np.int64), np.asarray([-1], np.int64)
    )


def chain_tree(tokens: np.ndarray) -> OracleTree:
    """A linear chain root -> t1 -> ... (classic speculative decoding)."""
    n = len(tokens)
    src = np.full(n, SOURCE_DRAFT, np.int64)
    src[0] = -1
    return OracleTree(np.asarray(tokens, np.int64), np.arange(-1, n - 1, dtype=np.int32), np.arange(n), src)


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


def draft2_tree(draft2, history: np.ndarray, cfg: TreeConfig, depth_limit: int) -> OracleTree:
    """``draft_calls == 0``: draft2's candidate tree goes to the oracle directly, in its own
    order (level by level along the most likely branch), cut to the budget. Where a draft call
    costs more than the acceptance it adds (small trees on a CPU), `stagedx tune` picks this."""
    tok, par = draft2.propose_tree(history, cfg.fanouts[:depth_limit])
    tok, par = tok[: cfg.budget], par[: cfg.budget]  # a prefix keeps parents before children
    parents = np.concatenate([[-1], np.where(par < 0, 0, par + 1)]).astype(np.int32)
    source = np.concatenate([[-1], np.full(len(tok), SOURCE_DRAFT2)])
    return OracleTree(np.concatenate([history[-1:], tok]).astype(np.int64), parents, depths(parents), source)
