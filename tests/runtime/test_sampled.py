"""Sampled trees with a stand-in draft (no ONNX): shape, pruning, draft calls and commits."""

import numpy as np

from stagedx.runtime.draft2 import NO_DRAFT2
from stagedx.runtime.runner import RunOutput
from stagedx.runtime.sampled import draw_without_replacement, grow_sampled_tree
from stagedx.runtime.sampling import SamplingConfig
from stagedx.runtime.shapes import TreeConfig
from stagedx.runtime.tree import SOURCE_DRAFT2, is_valid_tree

V = 12


class LogitsDraft:
    """A runner stand-in with fixed logits favouring t + 1 (mod V) after token t."""

    max_context = 64

    def __init__(self):
        self.length = 0
        self.calls = []
        self.committed = []

    def run(self, tokens, positions, tree_mask, fetch=("logits",)):
        self.calls.append((tokens.copy(), positions.copy(), tree_mask.copy()))
        logits = -np.abs(np.arange(V)[None, :] - (tokens[:, None] + 1) % V).astype(np.float32)  # [T, V]
        return RunOutput(logits=logits)

    def commit(self, rows):
        self.committed.append(list(rows))
        self.length += len(rows)

    def truncate(self, n):
        self.length = min(self.length, n)


class FixedDraft2:
    kind, active = "both", True

    def successors(self, history, k):
        return np.asarray([7, 8, 9][:k], np.int64), np.ones(min(k, 3), np.float32)


SAMPLING = SamplingConfig.parse("topk:6")


def grow(shape, seed=0, draft=None, draft2=NO_DRAFT2):
    draft = draft or LogitsDraft()
    history = np.asarray([1, 2, 3], np.int64)
    sp = grow_sampled_tree(draft, draft2, history, shape, SAMPLING, np.random.default_rng(seed), depth_limit=8)
    return draft, sp


def test_a_drawn_chain_commits_each_level_like_speculative():
    draft, sp = grow(TreeConfig(budget=8, widths=(1, 1, 1, 1)))
    t = sp.tree
    assert t.parents.tolist() == [-1, 0, 1, 2, 3] and sp.drawn.tolist() == [False, True, True, True, True]
    assert [len(c[0]) for c in draft.calls] == [3, 1, 1, 1]  # one token per call after the catch-up
    assert draft.length == 3 + 3 and sp.draft_path == t.tokens[1:4].tolist()
    for d in range(3):  # q of every node with a drawn child is its own draft call's warp
        assert np.isclose(sp.q[d].sum(), 1.0) and sp.q[d][t.tokens[d + 1]] > 0


def test_wide_levels_are_rescored_not_committed_and_positions_follow_depth():
    draft, sp = grow(TreeConfig(budget=20, widths=(3, 1, 1)))
    assert [len(c[0]) for c in draft.calls] == [3, 3, 6]
    toks, pos, mask = draft.calls[2]
    assert pos.tolist() == [3, 3, 3, 4, 4, 4]  # depth 1 sits at the root's position + 1
    assert mask[3].sum() == 2 and draft.length == 3  # a child sees its parent; nothing committed
    assert is_valid_tree(sp.tree.parents) and sp.tree.depth.max() == 3


def test_budget_keeps_a_draw_order_prefix_of_every_sibling_list():
    for seed in range(20):
        _, full = grow(TreeConfig(budget=10, widths=(4,)), seed)
        _, cut = grow(TreeConfig(budget=2, widths=(4,)), seed)
        assert cut.tree.tokens[1:].tolist() == full.tree.tokens[1:3].tolist()  # the first two drawn
        _, sp = grow(TreeConfig(budget=5, widths=(4, 2, 1)), seed)
        assert len(sp.tree.tokens) == 6 and is_valid_tree(sp.tree.parents)


def test_extras_are_deterministic_root_leaves_never_duplicating_a_drawn_child():
    _, sp = grow(TreeConfig(budget=12, widths=(2, 1), extra=3), draft2=FixedDraft2())
    t = sp.tree
    leaves = np.flatnonzero(~sp.drawn & (t.parents == 0))
    assert len(leaves) == 3
    root_kids = t.tokens[t.parents == 0].tolist()
    assert len(set(root_kids)) == len(root_kids)
    assert any(t.source[i] == SOURCE_DRAFT2 for i in leaves)
    assert all(np.flatnonzero(t.parents == i).size == 0 for i in leaves)


def test_draw_without_replacement_is_distinct_and_inside_the_support():
    q = np.asarray([0.0, 0.5, 0.25, 0.25, 0.0])
    for seed in range(10):
        x = draw_without_replacement(q, 3, np.random.default_rng(seed))
        assert sorted(x.tolist()) == [1, 2, 3]
    assert draw_without_replacement(q, 0, np.random.default_rng(0)).size == 0


class SuccessorDraft2:
    """Proposes the stand-in draft's favourite successors: t + 1, t + 2, ... (mod V) after t,
    along a spine (the first successor heads the next level), like ``Draft2.propose_tree``."""

    kind, active = "ngram", True

    def __init__(self):
        self.contexts = []

    def propose_tree(self, history, fanouts):
        self.contexts.append(np.asarray(history).copy())
        tokens, parents, last, parent = [], [], int(history[-1]), -1
        for fan in fanouts:
            start = len(tokens)
            tokens += [(last + 1 + i) % V for i in range(fan)]
            parents += [parent] * fan
            parent, last = start, (last + 1) % V
        return np.asarray(tokens, np.int64), np.asarray(parents, np.int32)


def test_lookahead_draws_the_same_chain_with_fewer_draft_calls():
    """Tokens are still drawn from the draft's q (same q, same random stream): the tree and the
    committed rows are those of the plain chain; draft2's candidates only save calls."""
    plain_calls, look_calls = 0, 0
    for seed in range(30):
        plain, a = grow(TreeConfig(budget=8, widths=(1,) * 6), seed)
        look, b = grow(
            TreeConfig(budget=8, widths=(1,) * 6, fanouts=(2, 1, 1), lookahead=3), seed, draft2=SuccessorDraft2()
        )
        assert b.tree.tokens.tolist() == a.tree.tokens.tolist() and b.draft_path == a.draft_path
        assert look.length == plain.length == 3 + 5  # catch-up + root, then the chain but its last node
        for d in range(5):
            assert np.allclose(b.q[d], a.q[d])
        plain_calls += a.cost.calls
        look_calls += b.cost.calls
        assert b.cost.calls == len(look.calls) <= a.cost.calls == 6
    assert look_calls < 0.75 * plain_calls


def test_lookahead_rows_sit_at_their_depth_and_only_the_chain_is_committed():
    d2 = SuccessorDraft2()
    draft, sp = grow(TreeConfig(budget=8, widths=(1,) * 4, fanouts=(2, 1, 1), lookahead=3), 0, draft2=d2)
    toks, pos, mask = draft.calls[0]
    assert toks[:3].tolist() == [1, 2, 3] and toks[3:].tolist() == [4, 5, 5, 6]  # root 3: 4, 5 | 4 -> 5 -> 6
    assert pos.tolist() == [0, 1, 2, 3, 3, 4, 5] and mask[5, 3] and not mask[5, 4]
    assert d2.contexts[0].tolist() == [1, 2, 3]
    committed = [r for rows in draft.committed for r in rows]
    assert draft.length == 3 + len(sp.draft_path) and len(committed) == draft.length
    assert sp.draft_path == sp.tree.tokens[1:4].tolist()


def test_lookahead_never_proposes_deeper_than_a_node_whose_q_is_needed():
    d2 = SuccessorDraft2()
    draft, _ = grow(TreeConfig(budget=8, widths=(1, 1), fanouts=(2, 1, 1), lookahead=3), 0, draft2=d2)
    assert len(draft.calls[0][0]) == 3 + 2  # only level 1 below the root: its q is the last one needed
    draft, _ = grow(TreeConfig(budget=8, widths=(1,), fanouts=(2, 1, 1), lookahead=3), 0, draft2=SuccessorDraft2())
    assert len(draft.calls[0][0]) == 3 and len(draft.calls) == 1
