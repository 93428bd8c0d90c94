"""Verification: which speculated tokens the oracle accepts. Pure NumPy, no model.

Deterministic trees (staged; built best-first from draft probabilities) use the paper's
per-node rule. At the current node v (starting at the root) draw x ~ p(. | v) from the
oracle's own warped distribution; if some child of v carries x, descend to it and repeat;
otherwise emit x and stop. Every emitted token is then an exact draw from the oracle given
the accepted prefix, because the draw at each node IS the oracle's sample; the tree only
decides how many of those draws one oracle call can check. For a fixed candidate set S the
chance of accepting at v is sum_{c in S} p(c | v), and no lossless scheme can beat it since
P(output in S) is that same sum. Greedy is the same rule with p one-hot at the argmax.

SpecInfer's min(1, p/q) test is only valid where children are drawn at random from q; on
fixed best-first children it is biased (p = q = (1/2, 1/2) with child 0 always emits token 0),
so it is used here only for the classic chain, whose tokens ARE drawn from q (Leviathan et al.):
accept d_i with probability min(1, p(d_i)/q(d_i)); on the first rejection draw from
normalise(max(0, p - q)); if every d_i is accepted draw one more token from p.

Sampled trees (``sampled.py``: children DRAWN from q without replacement, in draw order) use
recursive rejection sampling, which generalises that chain rule to several children
(SpecInfer / recursive speculative decoding): at node v try the drawn children c_1, c_2, ...
in draw order; accept c_i with probability min(1, p(c_i)/q(c_i)); on rejection set
p <- normalise(max(0, p - q)) and q <- q with c_i removed, renormalised (the law c_{i+1} was
drawn from), and try the next. If every drawn child is rejected, draw x from the residual p;
x is then an exact draw from the oracle given the prefix, so if a deterministic child (a
leaf proposed by draft2 or the draft's top tokens) carries x, the walk descends into it by
the per-node rule, else x is emitted and the round stops.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .sampling import sample


@dataclass(frozen=True)
class Verdict:
    path: np.ndarray  # [k+1] tree nodes accepted, root first (their KV rows get committed)
    tokens: np.ndarray  # [k+1] emitted: tokens of path[1:] then the oracle's own token


def walk_tree(
    parents: np.ndarray,  # [N] parents[0] == -1 is the root
    tokens: np.ndarray,  # [N]
    draw: Callable[[int], int],  # node -> the oracle's token at that node
) -> Verdict:
    """The per-node rule: descend while the oracle's token at the node is one of its children."""
    path = [0]
    emitted = []
    node = 0
    while True:
        x = draw(node)
        emitted.append(x)
        hit = np.flatnonzero((parents == node) & (tokens == x))
        if hit.size == 0:
            return Verdict(np.asarray(path, np.int64), np.asarray(emitted, np.int64))
        node = int(hit[0])
        path.append(node)


def greedy_draw(argmax: np.ndarray) -> Callable[[int], int]:
    """Oracle's choice at each node when decoding greedily: ``argmax [N]``."""
    return lambda node: int(argmax[node])


def sampled_draw(probs_at: Callable[[int], np.ndarray], rng: np.random.Generator) -> Callable[[int], int]:
    """Oracle's choice at each node when sampling: one independent draw from p(. | node)."""
    return lambda node: sample(probs_at(node), rng)


def verify_chain(
    drafted: np.ndarray,  # [k] tokens proposed by the draft, drawn from q
    q: np.ndarray,  # [k, V] the draft's distribution each token was drawn from
    p: np.ndarray,  # [k+1, V] the oracle's (warped) distribution after 0..k drafted tokens
    rng: np.random.Generator,
) -> np.ndarray:
    """Classic speculative sampling; returns the emitted tokens (accepted + 1)."""
    out = []
    for i, d in enumerate(drafted):
        if rng.random() * q[i, d] < p[i, d]:  # accept with probability min(1, p/q)
            out.append(int(d))
            continue
        residual = np.maximum(p[i] - q[i], 0.0)
        total = residual.sum()
        out.append(sample(residual / total if total > 0 else p[i], rng))
        return np.asarray(out, np.int64)
    out.append(sample(p[len(drafted)], rng))
    return np.asarray(out, np.int64)


def verify_sampled(
    parents: np.ndarray,  # [N] parents[0] == -1 is the root
    tokens: np.ndarray,  # [N]
    drawn: np.ndarray,  # [N] bool: drawn from the parent's q (siblings in draw order)
    q_at: Callable[[int], np.ndarray],  # node -> the draft's warped q [V] its children were drawn from
    p_at: Callable[[int], np.ndarray],  # node -> the oracle's warped p [V]
    rng: np.random.Generator,
) -> Verdict:
    """Recursive rejection sampling over a sampled tree (see the module docstring)."""
    path, emitted, node = [0], [], 0
    while True:
        kids = np.flatnonzero(parents == node)
        tried = kids[drawn[kids]]  # in draw order
        nxt = -1
        p = p_at(node)
        if tried.size:
            p, q = p.copy(), q_at(node).copy()
            for c in tried:
                x = int(tokens[c])
                if rng.random() * q[x] < p[x]:  # accept with probability min(1, p/q)
                    nxt = int(c)
                    break
                residual = np.maximum(p - q, 0.0)
                total = residual.sum()
                if total <= 0:  # p == q up to rounding: keep p, drop x (never reached exactly)
                    residual, total = p.copy(), p.sum()
                    residual[x] = 0.0
                    total = residual.sum()
                p = residual / total
                q[x] = 0.0
                qs = q.sum()
                if qs <= 0:
                    break
                q /= qs
        if nxt < 0:
            x = sample(p, rng)
            emitted.append(x)
            rest = kids[~drawn[kids]]
            hit = rest[tokens[rest] == x]
            if hit.size == 0:
                return Verdict(np.asarray(path, np.int64), np.asarray(emitted, np.int64))
            nxt = int(hit[0])
        else:
            emitted.append(int(tokens[nxt]))
        path.append(nxt)
        node = nxt


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def truncate_emitted(emitted: np.ndarray, eos: int | None, room: int) -> tuple[int, bool]:
    """How many emitted tokens to keep: up to and including the first EOS, at most ``room``.

    Returns (count, hit_eos).
    """
    n = min(len(emitted), room)
    if eos is not None:
        hits = np.flatnonzero(emitted[:n] == eos)
        if hits.size:
            return int(hits[0]) + 1, True
    return n, False
