"""The constrained round on hand-built trees (a fake grammar: no model, no llguidance)."""

from __future__ import annotations

import numpy as np

from stagedx.runtime import SamplingConfig
from stagedx.runtime.constraint_tree import guided_proposal, masked_p, masked_q, verify_guided
from stagedx.runtime.proposal import DraftCost, Proposal, Rule
from stagedx.runtime.runner import RunOutput
from stagedx.runtime.tree import SOURCE_DRAFT, SOURCE_DRAFT2, SOURCE_GRAMMAR, OracleTree

V, EOS = 8, 0


class FakeGuide:
    """Tokens in ``ok`` are allowed everywhere; ``forced`` is forced once."""

    def __init__(self, ok, forced=()):
        self.ok, self._forced, self.vocab, self.eos = set(ok), list(forced), V, EOS
        self.paths = []

    def forced(self):
        return list(self._forced)

    def legal(self, path):
        n = 0
        while n < len(path) and path[n] in self.ok:
            n += 1
        return n

    def allowed(self, path):
        self.paths.append(list(path))
        return np.isin(np.arange(V), sorted(self.ok))


def tree(tokens, parents, source):
    parents = np.asarray(parents, np.int32)
    depth = np.zeros(len(tokens), np.int64)
    for i, p in enumerate(parents):
        depth[i] = 0 if p < 0 else depth[p] + 1
    return OracleTree(np.asarray(tokens, np.int64), parents, depth, np.asarray(source, np.int64))


def test_refused_nodes_and_later_drawn_siblings_are_pruned():
    # root 7 -> drawn 1 (ok), 2 (refused), 3 (ok, drawn after the refused one), leaf 4 (ok);
    # 1 -> drawn 5 (ok) -> 6 (refused)
    t = tree([7, 1, 2, 3, 4, 5, 6], [-1, 0, 0, 0, 0, 1, 5], [-1, 1, 1, 1, 0, 1, 1])
    drawn = np.asarray([False, True, True, True, False, True, True])
    q = {0: np.full(V, 1 / V), 1: np.full(V, 1 / V), 5: np.full(V, 1 / V)}
    sub = Proposal(t, Rule.RECURSIVE, [1, 5], DraftCost([3]), q, drawn)
    g = guided_proposal(FakeGuide({1, 3, 4, 5}), lambda extra, depth: sub, 7, 8)
    p = g.proposal
    assert p.tree.tokens.tolist() == [7, 1, 4, 5] and p.tree.parents.tolist() == [-1, 0, 0, 1]
    assert p.drawn.tolist() == [False, True, False, True] and sorted(p.q) == [0, 1, 3]
    assert g.forced == 0 and p.draft_path == [1, 5]


def test_forced_tokens_are_a_chain_above_the_usual_proposal():
    calls = []

    def propose(extra, depth):
        calls.append((list(extra), depth))
        return Proposal(tree([3, 4, 5], [-1, 0, 0], [-1, 0, 1]), draft_path=[4])

    g = guided_proposal(FakeGuide({1, 2, 3, 4, 5}, forced=[2, 3]), propose, 1, 6)
    t = g.proposal.tree
    assert calls == [([2, 3], 4)] and g.forced == 2
    assert t.tokens.tolist() == [1, 2, 3, 4, 5] and t.parents.tolist() == [-1, 0, 1, 2, 2]
    assert t.depth.tolist() == [0, 1, 2, 3, 3]
    assert t.source.tolist() == [-1, SOURCE_GRAMMAR, SOURCE_GRAMMAR, SOURCE_DRAFT2, SOURCE_DRAFT]
    assert g.proposal.draft_path == [2, 3, 4]
    # the baseline takes no forced tokens, and the forced chain is cut at the room left
    assert guided_proposal(FakeGuide({1, 2, 3}, forced=[2, 3]), propose, 1, 6, speculate=False).forced == 0
    assert guided_proposal(FakeGuide({1, 2, 3}, forced=[2, 3]), propose, 1, 1).forced == 1


def test_greedy_takes_the_allowed_argmax_along_each_path():
    t = tree([7, 1, 2], [-1, 0, 1], [-1, 1, 1])
    guide = FakeGuide({1, 2, 3})
    g = guided_proposal(guide, lambda e, d: Proposal(t), 7, 4)
    logits = np.zeros((3, V), np.float32)
    logits[0, [6, 1]] = [9.0, 5.0]  # 6 is the oracle's argmax but refused: 1 is taken
    logits[1, [5, 2]] = [9.0, 4.0]
    logits[2, [3, 4]] = [2.0, 8.0]
    v = verify_guided(g, RunOutput(logits=logits), guide, SamplingConfig(), np.random.default_rng(0))
    assert v.tokens.tolist() == [1, 2, 3] and v.path.tolist() == [0, 1, 2]
    assert guide.paths == [[], [1], [1, 2]]  # one mask per visited node, along its own path


def test_masked_distributions():
    allowed = np.asarray([False, True, True, False, True, False, False, False])
    q = masked_q(np.full(V, 1 / V), allowed)
    assert np.allclose(q[allowed], 1 / 3) and q[~allowed].sum() == 0
    p = masked_p(np.arange(V, dtype=np.float64), allowed, SamplingConfig("sample", 1.0, top_k=2))
    assert p[~allowed].sum() == 0 and p[1] == 0 and np.isclose(p[2] + p[4], 1)  # top-k after the mask
