"""The fixed rule that picks a round's proposal (``proposers.choose``), checked without a model."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from stagedx.runtime import STRATEGIES
from stagedx.runtime.proposers import CHAIN, DRAFT2_TREE, DRAFT_TREE, KINDS, NONE, SAMPLED_TREE, choose
from stagedx.runtime.shapes import TreeConfig

shapes = st.builds(
    TreeConfig,
    budget=st.integers(0, 32),
    max_depth=st.integers(1, 16),
    draft_calls=st.integers(0, 4),
    spec_k=st.integers(1, 8),
    widths=st.sampled_from([(), (1, 1), (3, 2, 1)]),
)


@given(st.sampled_from(STRATEGIES), shapes, st.booleans(), st.integers(0, 40))
def test_the_chosen_proposal_fits_the_room_and_the_strategy(strategy, shape, greedy, room):
    kind, limit = choose(strategy, shape, greedy, room)
    assert kind in KINDS and 0 <= limit <= room
    assert (kind == NONE) == (limit == 0)
    if strategy == "baseline":
        assert kind == NONE
    elif strategy == "speculative":
        assert kind in (NONE, CHAIN) and limit == min(shape.spec_k, room)
    else:
        assert kind != CHAIN and limit in (0, min(shape.max_depth, room))
        if shape.budget == 0:
            assert kind == NONE
        if kind == SAMPLED_TREE:
            assert shape.widths and not greedy


def test_staged_picks_by_tree_shape():
    assert choose("staged", TreeConfig(draft_calls=0), True, 50) == (DRAFT2_TREE, 15)
    assert choose("staged", TreeConfig(draft_calls=2, max_depth=6), True, 50) == (DRAFT_TREE, 6)
    assert choose("staged", TreeConfig(widths=(1, 1)), True, 50)[0] == DRAFT2_TREE  # greedy ignores widths
    assert choose("staged", TreeConfig(widths=(1, 1)), False, 50)[0] == SAMPLED_TREE
    assert choose("staged", TreeConfig(), True, 0) == (NONE, 0)  # no room left in the context
