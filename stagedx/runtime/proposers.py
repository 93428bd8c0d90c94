"""The proposals a round can build, and the fixed rule that picks one.

Each proposer turns a ``Round`` (committed tokens, tree shape, sampling, depth limit) into a
``Proposal`` that carries its own verification rule and draft cost, so the decode loop never
asks which proposer ran. ``choose`` is today's rule (by strategy and tree shape, the same every
round); a planner can pick a kind and a shape per round instead, from committed tokens and
past rounds only (never from the round's own oracle output), which keeps decoding exact.

Kinds:
- ``none``: the root alone (baseline, or no room to speculate).
- ``chain``: classic speculative decoding, ``spec_k`` sequential draft calls.
- ``draft2-tree``: draft2's candidate tree straight to the oracle (``draft_calls == 0``).
- ``draft-tree``: draft2 proposes, the draft scores in tree-shaped calls, best-first selection.
- ``sampled-tree``: children drawn from the draft's q (sampled modes with ``widths``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .draft2 import Draft2
from .proposal import DraftCost, Proposal, Rule
from .runner import FETCH_LOGITS, FETCH_TOPK, Runner, chain_mask
from .sampled import grow_sampled_tree
from .sampling import SamplingConfig, rank_logprobs, sample, warp
from .shapes import TreeConfig
from .staged import draft2_tree, grow_draft_tree, oracle_tree
from .tree import chain_tree, root_only

NONE, CHAIN, DRAFT2_TREE, DRAFT_TREE, SAMPLED_TREE = "none", "chain", "draft2-tree", "draft-tree", "sampled-tree"
KINDS = (NONE, CHAIN, DRAFT2_TREE, DRAFT_TREE, SAMPLED_TREE)


def choose(strategy: str, shape: TreeConfig, greedy: bool, room: int) -> tuple[str, int]:
    """The fixed rule: (kind, depth limit) for a round with ``room`` >= 0 free context rows
    below the root."""
    if strategy == "baseline":
        return NONE, 0
    if strategy == "speculative":
        k = min(shape.spec_k, room)
        return (CHAIN, k) if k > 0 else (NONE, 0)
    limit = min(shape.max_depth, room)
    if limit <= 0 or shape.budget == 0:
        return NONE, 0
    if shape.widths and not greedy:
        return SAMPLED_TREE, limit
    return (DRAFT2_TREE, limit) if shape.draft_calls == 0 else (DRAFT_TREE, limit)


@dataclass(frozen=True)
class Round:
    """What a proposer sees: committed tokens (the last one is the pending root), the tree
    shape, the sampling, the call's random generator and the deepest node allowed."""

    tokens: list
    shape: TreeConfig
    sampling: SamplingConfig
    rng: np.random.Generator
    depth_limit: int

    @cached_property
    def history(self) -> np.ndarray:  # [n] int64 (built only by proposers that need it)
        return np.asarray(self.tokens, np.int64)


class Proposers:
    """The proposers of one Generator: they share its draft runner and draft2."""

    def __init__(self, draft: Runner, draft2: Draft2, vocab: int):
        self.draft, self.draft2, self.vocab = draft, draft2, vocab

    def build(self, kind: str, r: Round) -> Proposal:
        return getattr(self, kind.replace("-", "_"))(r)

    def none(self, r: Round) -> Proposal:
        return Proposal(root_only(r.tokens[-1]))

    def chain(self, r: Round) -> Proposal:
        drafted, q, cost = draft_chain(self.draft, r.history, r.depth_limit, r.sampling, r.rng)
        tree = chain_tree(np.concatenate([r.history[-1:], drafted]))
        path = drafted.tolist()[:-1]  # the last drafted token has no draft KV row yet
        if r.sampling.greedy:
            return Proposal(tree, Rule.PER_NODE, path, cost)
        return Proposal(tree, Rule.CHAIN, path, cost, np.stack(q))  # q: [k, V]

    def draft2_tree(self, r: Round) -> Proposal:
        t0 = time.perf_counter()
        tree = draft2_tree(self.draft2, r.history, r.shape, r.depth_limit)
        return Proposal(tree, cost=DraftCost(time_draft2=time.perf_counter() - t0))

    def draft_tree(self, r: Round) -> Proposal:
        cfg, tau = r.sampling, r.shape.tau
        rank = lambda v: rank_logprobs(v, cfg, tau)  # noqa: E731
        dtree = grow_draft_tree(self.draft, self.draft2, r.history, r.shape, rank, r.depth_limit)
        tree = oracle_tree(dtree, r.shape.budget, r.depth_limit, self.vocab)
        return Proposal(tree, Rule.PER_NODE, dtree.path, dtree.cost)

    def sampled_tree(self, r: Round) -> Proposal:
        sp = grow_sampled_tree(self.draft, self.draft2, r.history, r.shape, r.sampling, r.rng, r.depth_limit)
        return sp.fit(r.shape.budget + 1)


def draft_chain(
    draft: Runner, history: np.ndarray, k: int, sampling: SamplingConfig, rng: np.random.Generator
) -> tuple[np.ndarray, list, DraftCost]:
    """Classic drafting: ``k`` sequential draft calls after the rows the draft lacks. Returns
    the drafted tokens [k], the q [V] each was drawn from (sampling; empty when greedy) and the
    cost."""
    t0 = time.perf_counter()
    chain = history[draft.length :]
    sizes = [len(chain)] + [1] * (k - 1)
    fetch = (FETCH_TOPK,) if sampling.greedy else (FETCH_LOGITS,)
    drafted, qs = [], []
    for _ in range(k):
        out = draft.run(chain, draft.length + np.arange(len(chain)), chain_mask(len(chain)), fetch)
        draft.commit(np.arange(len(chain)))
        if sampling.greedy:
            x = int(out.topk_indices[-1, 0])
        else:
            q = warp(out.logits[-1], sampling)
            x = sample(q, rng)
            qs.append(q)
        drafted.append(x)
        chain = np.asarray([x], np.int64)
    return np.asarray(drafted, np.int64), qs, DraftCost(sizes, time.perf_counter() - t0)
