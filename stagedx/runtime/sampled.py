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
from dataclasses import dataclass, field

import numpy as np

from .runner import FETCH_LOGITS, Runner, chain_mask
from .sampling import SamplingConfig, warp
from .staged import SOURCE_DRAFT, SOURCE_DRAFT2, OracleTree
from .tree import ancestor_mask


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


@dataclass
class SampledTree:
    """The oracle tree plus what the verifier needs: which children were drawn (in draw
    order among their siblings) and the draft's q at every node that has drawn children."""

    tree: OracleTree
    drawn: np.ndarray  # [N] bool, False for the root and deterministic children
    q: dict = field(default_factory=dict)  # node -> [V] float64
    path: list = field(default_factory=list)  # tokens committed to the draft below the root
    calls: int = 0
    time_draft: float = 0.0
    time_draft2: float = 0.0


def grow_sampled_tree(
    draft: Runner,
    draft2,  # stagedx.runtime.draft2.Draft2 | None
    history: np.ndarray,  # [n] committed tokens; history[-1] is the root
    widths: tuple,
    extra: int,
    sampling: SamplingConfig,
    rng: np.random.Generator,
    depth_limit: int,
) -> SampledTree:
    t0 = time.perf_counter()
    chain = history[draft.length :]  # catch-up rows + the root
    out = draft.run(chain, draft.length + np.arange(len(chain)), chain_mask(len(chain)), (FETCH_LOGITS,))
    draft.commit(np.arange(len(chain)))
    tokens, parents, depth, drawn, source = [int(history[-1])], [-1], [0], [False], [-1]
    q = {0: warp(out.logits[-1], sampling)}
    frontier = [0]
    committed = 0  # tree levels below the root already in the draft's cache
    path: list = []
    calls, t_draft2 = 1, 0.0
    levels = list(widths[: max(0, depth_limit)])
    for d, w in enumerate(levels):
        new = []
        for node in frontier:
            for tok in draw_without_replacement(q[node], int(w), rng):
                tokens.append(int(tok))
                parents.append(node)
                depth.append(d + 1)
                drawn.append(True)
                source.append(SOURCE_DRAFT)
                new.append(len(tokens) - 1)
        if d == 0 and extra > 0:
            t1 = time.perf_counter()
            _add_extras(tokens, parents, depth, drawn, source, q[0], draft2, history, extra)
            t_draft2 += time.perf_counter() - t1
        if not new or d + 1 == len(levels):
            break
        # one draft call scores the new level below the committed levels
        batch = [i for i in range(1, len(tokens)) if depth[i] > committed and drawn[i]]  # extras are leaves
        local = {g: j for j, g in enumerate(batch)}
        bpar = np.asarray([local.get(parents[g], -1) for g in batch], np.int32)
        btok = np.asarray([tokens[g] for g in batch], np.int64)
        bpos = draft.length + np.asarray([depth[g] - committed - 1 for g in batch], np.int64)
        out = draft.run(btok, bpos, ancestor_mask(bpar), (FETCH_LOGITS,))
        calls += 1
        rows = [local[g] for g in new]
        qs = warp(out.logits[rows], sampling)  # [len(new), V]
        for g, qg in zip(new, qs):
            q[g] = qg
        if len(new) == 1 and len(batch) == 1:  # the level is the only path: commit it
            draft.commit([0])
            committed += 1
            path.append(tokens[new[0]])
        frontier = new
    t_end = time.perf_counter()
    tree = OracleTree(
        np.asarray(tokens, np.int64), np.asarray(parents, np.int32), np.asarray(depth, np.int64),
        np.asarray(source, np.int64),
    )  # fmt: skip
    return SampledTree(tree, np.asarray(drawn, bool), q, path, calls, t_end - t0 - t_draft2, t_draft2)


def _add_extras(tokens, parents, depth, drawn, source, q_root, draft2, history, extra: int) -> None:
    """Deterministic root leaves: draft2's candidates, then the draft's most likely tokens."""
    taken = {tokens[i] for i in range(1, len(tokens)) if parents[i] == 0}
    picks: list = []
    if draft2 is not None and getattr(draft2, "kind", "none") != "none":
        ids, _ = draft2.successors(history, extra + len(taken))
        picks += [(int(t), SOURCE_DRAFT2) for t in ids if int(t) not in taken]
    order = np.argsort(-q_root, kind="stable")[: extra + len(taken) + len(picks)]
    picks += [(int(t), SOURCE_DRAFT) for t in order if q_root[t] > 0]
    added = 0
    for tok, src in picks:
        if added >= extra:
            break
        if tok in taken:
            continue
        taken.add(tok)
        tokens.append(tok)
        parents.append(0)
        depth.append(1)
        drawn.append(False)
        source.append(src)
        added += 1
