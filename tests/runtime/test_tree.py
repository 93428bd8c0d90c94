import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedx.runtime.tree import ancestor_mask, depths, is_valid_tree, select_best_first


@st.composite
def trees(draw, max_nodes=40):
    n = draw(st.integers(1, max_nodes))
    parents = [-1] + [draw(st.integers(-1, i - 1)) for i in range(1, n)]
    return np.asarray(parents, dtype=np.int32)


@given(trees())
def test_ancestor_mask_is_reflexive_and_follows_parents(parents):
    mask = ancestor_mask(parents)
    d = depths(parents)
    assert mask.diagonal().all()
    for i, p in enumerate(parents):
        expected = {i}
        while p >= 0:
            expected.add(int(p))
            p = parents[p]
        assert set(np.flatnonzero(mask[i]).tolist()) == expected
        assert mask[i].sum() == d[i] + 1


def test_mask_hides_siblings():
    parents = np.array([-1, 0, 0, 1])
    mask = ancestor_mask(parents)
    assert not mask[2, 1] and not mask[1, 2]  # siblings
    assert mask[3].tolist() == [True, True, False, True]


@st.composite
def pools(draw):
    parents = draw(trees(30))
    parents = np.where(np.arange(len(parents)) == 0, -1, parents)
    edge = np.log(np.asarray(draw(st.lists(st.floats(0.01, 1.0), min_size=len(parents), max_size=len(parents)))))
    logcum = np.zeros(len(parents))
    for i, p in enumerate(parents):
        logcum[i] = (logcum[p] if p >= 0 else 0.0) + edge[i]
    return parents, logcum, depths(parents) + 1


@settings(max_examples=200)
@given(pools(), st.integers(0, 35))
def test_best_first_is_closed_ordered_and_optimal(pool, budget):
    parents, logcum, depth = pool
    sel = select_best_first(logcum, parents, depth, budget)
    chosen = set(sel.index.tolist())
    assert len(chosen) == min(budget, len(parents))
    for k, i in enumerate(sel.index):  # ancestors chosen, and placed earlier in the batch
        p = parents[i]
        if p < 0:
            assert sel.parents[k] == 0
        else:
            assert p in chosen and sel.parents[k] == sel.index.tolist().index(p) + 1
    assert is_valid_tree(np.concatenate([[-1], sel.parents]))
    # optimal: nothing left out beats the worst chosen node (parents are never worse than children)
    if chosen and len(chosen) < len(parents):
        left = np.setdiff1d(np.arange(len(parents)), sel.index)
        assert logcum[left].max() <= logcum[sel.index].min() + 1e-12


def test_best_first_skips_infinite_and_orphans():
    parents = np.array([-1, 0, -1])
    logcum = np.array([-np.inf, -0.1, -0.5])
    sel = select_best_first(logcum, parents, np.array([1, 2, 1]), 3)
    assert sel.index.tolist() == [2]
