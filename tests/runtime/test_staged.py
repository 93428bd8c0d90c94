"""The staged proposal with stand-in models (no ONNX): what draft2 is asked, what the draft
commits, and the oracle tree that comes out."""

import numpy as np

from stagedx.runtime.runner import RunOutput
from stagedx.runtime.shapes import TreeConfig
from stagedx.runtime.staged import draft2_tree, grow_draft_tree, oracle_tree

V, K = 50, 4


class CountingDraft:
    """A runner stand-in whose greedy successor of token t is t + 1 (mod V)."""

    max_context = 64

    def __init__(self):
        self.length = 0
        self.calls = []

    def run(self, tokens, positions, tree_mask, fetch=("topk",)):
        self.calls.append((tokens.copy(), positions.copy(), tree_mask.copy()))
        succ = (tokens[:, None] + np.arange(1, K + 1)[None, :]) % V  # [T, K]
        vals = np.tile(np.linspace(5.0, 1.0, K), (len(tokens), 1))  # [T, K] descending
        return RunOutput(topk_values=vals, topk_indices=succ)

    def commit(self, rows):
        self.length += len(rows)

    def truncate(self, n):
        self.length = min(self.length, n)


class RecordingDraft2:
    """Proposes a chain that agrees with the draft for two levels, then diverges."""

    def __init__(self):
        self.contexts = []

    def propose_tree(self, history, fanouts):
        self.contexts.append(history.copy())
        end = int(history[-1])
        toks = np.asarray([(end + 1) % V, (end + 2) % V, (end + 40) % V][: len(fanouts)], np.int64)
        return toks, np.arange(-1, len(toks) - 1, dtype=np.int32)


def rank(values):
    return values - np.log(np.exp(values).sum(-1, keepdims=True))


def test_draft2_is_asked_for_the_successors_of_each_chain_end():
    draft, draft2 = CountingDraft(), RecordingDraft2()
    history = np.asarray([3, 4, 5], np.int64)
    cfg = TreeConfig(max_depth=12, fanouts=(1, 1, 1), draft_calls=3)
    tree = grow_draft_tree(draft, draft2, history, cfg, rank, depth_limit=12)
    assert tree.cost.calls == 3
    for (tokens, _, _), ctx in zip(draft.calls, draft2.contexts):
        # draft2's candidates hang below the chain's last token (the batch's first 3 - 3
        # candidates): that token must end the context draft2 was given
        assert ctx[-1] == tokens[len(tokens) - 4]
    # call 1: history 3,4,5 -> root 5; draft2 proposes 6, 7, 45; the draft's greedy path
    # 5->6->7 is covered, so 8 (its greedy token below 7) is the next chain, and so on
    assert draft2.contexts[0].tolist() == [3, 4, 5]
    assert draft2.contexts[1].tolist() == [3, 4, 5, 6, 7, 8]
    assert draft2.contexts[2].tolist() == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert tree.path == [6, 7, 8, 9, 10, 11, 12, 13]
    assert draft.length == 3 + 8  # history + the committed greedy path


def test_positions_follow_depth_below_the_committed_rows():
    draft, draft2 = CountingDraft(), RecordingDraft2()
    history = np.asarray([1, 2, 3, 4], np.int64)
    grow_draft_tree(draft, draft2, history, TreeConfig(fanouts=(1, 1, 1), draft_calls=2), rank, 12)
    (t1, p1, _), (t2, p2, _) = draft.calls
    assert p1.tolist() == [0, 1, 2, 3, 4, 5, 6]  # catch-up + root, then 3 candidates
    assert p2[0] == 4 + 2  # g sits below the root at depth 3 (position 3 + 3)


def test_oracle_tree_is_best_first_and_closed():
    draft, draft2 = CountingDraft(), RecordingDraft2()
    history = np.asarray([7], np.int64)
    dtree = grow_draft_tree(draft, draft2, history, TreeConfig(fanouts=(1, 1, 1), draft_calls=1), rank, 8)
    tree = oracle_tree(dtree, budget=5, depth_limit=8, vocab=V)
    assert tree.tokens[0] == 7 and tree.parents[0] == -1
    assert len(tree.tokens) == 6
    assert all(p < i for i, p in enumerate(tree.parents) if i)
    # the draft's most likely chain 8, 9, 10 is in the tree
    chain, node = [], 0
    for _ in range(3):
        kids = np.flatnonzero(tree.parents == node)
        node = int(kids[np.argmin(tree.depth[kids])])
        chain.append(int(tree.tokens[node]))
    assert chain[0] == 8


def test_draft2_tree_respects_budget_and_depth():
    draft2 = RecordingDraft2()
    tree = draft2_tree(draft2, np.asarray([1, 2], np.int64), TreeConfig(budget=2, fanouts=(1, 1, 1)), depth_limit=3)
    assert tree.tokens.tolist() == [2, 3, 4] and tree.parents.tolist() == [-1, 0, 1]
    assert tree.depth.tolist() == [0, 1, 2]
