"""Constrained decoding inside a speculation tree, exact. Pure NumPy plus the request's
``Guide`` (grammar state); no model.

One round under a grammar:

1. **Forced tokens are a free draft stage.** The tokens the grammar forces next
   (``Guide.forced``) enter the tree as a chain below the root (source ``grammar``, no draft
   cost); the round's usual proposal (whatever the strategy and the tree shape choose) is
   built after them, as if they were committed, and grafted below the chain's end.
2. **Proposals the grammar refuses are pruned before the oracle call.** Each node's token is
   checked against the grammar along its own path (``Guide.legal``); a refused node goes with
   its subtree. Among siblings drawn from the draft's q (sampled trees and chains), the first
   refused one also takes every later-drawn sibling: the kept ones are then, one try after
   the other, draws from q restricted to the allowed set A and renormalised (``q_G``), which
   is what the rejection sampler needs (a drawn token that is legal is distributed as q_G;
   the sampler never looks at siblings it has not reached).
3. **Both distributions are masked before acceptance.** At every node the walk visits, the
   mask of that node's path is computed and the oracle's warped distribution becomes
   ``p_G`` (temperature, mask, then top-k / top-p; greedy: the allowed argmax); drawn children
   are tried against ``q_G``. Every proposal is verified by one rule, recursive rejection
   sampling (``accept.verify_sampled``): drawn children by min(1, p_G/q_G) with residuals,
   the others (forced, draft2's, best-first) by the per-node rule on the final draw. Both
   masks come from the same A at the same prefix, so the residual ``max(0, p_G - q_G)`` lies
   in A and each emitted token is an exact draw from p_G. Masking p alone while trying the
   draft's unmasked q (naive masking) is biased; the tests show a chi-square test rejects it.

A forced token is accepted for sure when the grammar allows nothing else there (p_G is then
one-hot); when llguidance forces bytes that another tokenization could also spell, the token
is verified like any proposal, so exactness never rests on the forcing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import accept
from .constraint import Guide
from .proposal import Proposal, Rule
from .runner import RunOutput
from .sampling import SamplingConfig, warp
from .tree import SOURCE_GRAMMAR, OracleTree


@dataclass(frozen=True)
class Guided:
    """A round's proposal under a grammar: one ``Rule.RECURSIVE`` proposal (``drawn`` marks
    children drawn from their parent's q) and the number of forced tokens at its top."""

    proposal: Proposal
    forced: int


def guided_proposal(
    guide: Guide, propose: Callable[[list, int], Proposal], root: int, room: int, speculate: bool = True
) -> Guided:
    """``propose(extra, depth)``: the round's usual proposal built as if ``extra`` were
    committed, its nodes at most ``depth`` deep (0: the root alone). ``root``: the pending
    token; ``room``: the deepest node the context allows; ``speculate=False`` (the baseline):
    no forced tokens either, one token per oracle call."""
    forced = guide.forced()[: max(0, room)] if speculate else []
    m = len(forced)
    sub = propose(forced, room - m).fit(room - m + 1)
    tree, drawn, q = _as_recursive(sub)
    tokens = np.concatenate([[root], forced, tree.tokens[1:]]).astype(np.int64)
    parents = np.concatenate([np.arange(-1, m), np.where(tree.parents[1:] == 0, m, tree.parents[1:] + m)]).astype(
        np.int32
    )
    depth = np.concatenate([np.arange(m + 1), tree.depth[1:] + m]).astype(np.int64)
    source = np.concatenate([[-1], np.full(m, SOURCE_GRAMMAR), tree.source[1:]]).astype(np.int64)
    is_drawn = np.concatenate([np.zeros(m + 1, bool), drawn[1:]])
    q = {(m if v == 0 else v + m): row for v, row in q.items()}
    keep = _legal_nodes(guide, tokens, parents, is_drawn)
    slot = np.cumsum(keep) - 1
    idx = np.flatnonzero(keep)
    kept_parents = np.where(parents[idx] < 0, -1, slot[np.maximum(parents[idx], 0)]).astype(np.int32)
    out = OracleTree(tokens[idx], kept_parents, depth[idx], source[idx])
    q = {int(slot[v]): row for v, row in q.items() if keep[v]}
    path = list(forced) + list(sub.draft_path)  # capped at the draft's real length on commit
    return Guided(Proposal(out, Rule.RECURSIVE, path, sub.cost, q, is_drawn[idx]), m)


def _as_recursive(p: Proposal) -> tuple[OracleTree, np.ndarray, dict]:
    """Any proposal as (tree, drawn [N] bool, q: node -> the q its drawn children came from)."""
    n = len(p.tree.tokens)
    if p.rule is Rule.RECURSIVE:
        return p.tree, np.asarray(p.drawn, bool), dict(p.q)
    if p.rule is Rule.CHAIN:  # node i + 1 was drawn from q[i] below node i
        drawn = np.arange(n) > 0
        return p.tree, drawn, {i: p.q[i] for i in range(n - 1)}
    return p.tree, np.zeros(n, bool), {}


def _legal_nodes(guide: Guide, tokens: np.ndarray, parents: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """[N] bool: the nodes that stay (see step 2 of the module docstring)."""
    n = len(tokens)
    keep = np.zeros(n, bool)
    keep[0] = True
    cut = np.zeros(n, bool)  # a drawn child of this node was refused: later drawn siblings go
    paths: dict = {0: []}
    for v in range(1, n):
        par = int(parents[v])
        if not keep[par] or (drawn[v] and cut[par]):
            continue
        path = paths[par] + [int(tokens[v])]
        if guide.legal(path) == len(path):
            keep[v] = True
            paths[v] = path
        elif drawn[v]:
            cut[par] = True
    return keep


def node_paths(tree: OracleTree) -> list:
    """The tokens below the root on the way to each node (the root's is empty)."""
    paths: list = [[]]
    for v in range(1, len(tree.tokens)):
        paths.append(paths[int(tree.parents[v])] + [int(tree.tokens[v])])
    return paths


def masked_q(q: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """q_G: the draft's q restricted to the allowed tokens and renormalised."""
    out = np.where(allowed, q, 0.0)
    total = out.sum()
    return out / total if total > 0 else out


def masked_p(logits: np.ndarray, allowed: np.ndarray, sampling: SamplingConfig) -> np.ndarray:
    """p_G: the oracle's distribution over the allowed tokens (temperature, mask, top-k / top-p)."""
    return warp(np.where(allowed, np.asarray(logits, np.float64), -np.inf), sampling)


def verify_guided(
    guided: Guided, out: RunOutput, guide: Guide, sampling: SamplingConfig, rng: np.random.Generator
) -> accept.Verdict:
    """Which tokens the oracle accepts, with p and q masked at each visited node's path.
    ``out.logits``: the oracle's logits [N, V] over ``guided.proposal.tree``."""
    p = guided.proposal
    tree, paths, masks = p.tree, node_paths(p.tree), {}

    def allowed(v: int) -> np.ndarray:
        if v not in masks:
            if paths[v] and paths[v][-1] == guide.eos:  # the text ended: whatever follows is cut
                masks[v] = np.arange(guide.vocab) == guide.eos
            else:
                masks[v] = guide.allowed(paths[v])
        return masks[v]

    if sampling.greedy:
        best = lambda v: int(np.argmax(np.where(allowed(v), out.logits[v], -np.inf)))  # noqa: E731
        return accept.walk_tree(tree.parents, tree.tokens, best)
    p_at = lambda v: masked_p(out.logits[v], allowed(v), sampling)  # noqa: E731
    q_at = lambda v: masked_q(p.q[v], allowed(v))  # noqa: E731
    return accept.verify_sampled(tree.parents, tree.tokens, p.drawn, q_at, p_at, rng)
