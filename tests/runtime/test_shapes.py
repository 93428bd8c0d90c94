"""Tree-shape choice (``runtime/shapes.py``): explicit > tuned > built-in default, per mode."""

from __future__ import annotations

import dataclasses

from stagedx.runtime.shapes import (
    CHEAP_DRAFT_TREES,
    DEFAULT_TREES,
    NO_DRAFT2_TREES,
    THREE_STAGE_TREES,
    TreeChoice,
    TreeConfig,
    cheap_draft,
)


def test_tree_config_defaults_are_the_runtime_greedy_default():
    assert TreeConfig() == DEFAULT_TREES["greedy"]
    assert TreeConfig() != THREE_STAGE_TREES["greedy"]


def test_defaults_by_mode_and_bundle():
    plain = TreeChoice()
    assert plain.tree("greedy") == DEFAULT_TREES["greedy"] and plain.tree("sample") == DEFAULT_TREES["sample"]
    cheap = TreeChoice(cheap_draft=True)
    assert cheap.tree("sample") == CHEAP_DRAFT_TREES["sample"]  # the draft's drawn chain
    assert cheap.tree("greedy") == DEFAULT_TREES["greedy"]  # greedy keeps draft2 -> oracle
    none = TreeChoice(has_draft2=False, cheap_draft=True)
    assert none.tree("sample") == NO_DRAFT2_TREES["sample"] and none.tree("greedy") == NO_DRAFT2_TREES["greedy"]


def test_explicit_and_tuned_trees_win_over_the_defaults():
    mine = TreeConfig(budget=5, max_depth=5, fanouts=(1,), draft_calls=2)
    tuned = {"sample": TreeConfig(budget=9, max_depth=3, widths=(2, 1), extra=1).to_dict()}
    assert TreeChoice(explicit=mine, cheap_draft=True).tree("sample") == mine
    choice = TreeChoice(tuned=tuned, cheap_draft=True)
    assert choice.tree("sample").budget == 9 and choice.tree("greedy") == DEFAULT_TREES["greedy"]
    assert TreeChoice(budget=3, cheap_draft=True).tree("sample") == dataclasses.replace(
        CHEAP_DRAFT_TREES["sample"], budget=3
    )


def test_a_shape_round_trips_through_its_manifest_form():
    for tree in (*DEFAULT_TREES.values(), *THREE_STAGE_TREES.values(), *CHEAP_DRAFT_TREES.values()):
        assert TreeConfig.from_dict(tree.to_dict()) == tree
    old = {k: v for k, v in THREE_STAGE_TREES["sample"].to_dict().items() if k != "lookahead"}
    assert TreeConfig.from_dict(old).lookahead == 0  # written before lookahead existed: none


def test_cheap_draft_share():
    assert cheap_draft(oracle_weight_bytes=3_116_439_552, draft_weight_bytes=170_075_136)  # GPT-2-L cost pair
    assert not cheap_draft(oracle_weight_bytes=56_745_984, draft_weight_bytes=10_638_336)  # vendored pair
    assert cheap_draft(oracle_weight_bytes=762_000_000 * 2, draft_weight_bytes=40_000_000 * 2)  # the paper's


def test_describe_names_the_kind_of_tree_in_one_short_line():
    from stagedx.runtime.shapes import describe

    assert describe(TreeConfig()) == "draft2 tree: fan-outs 2, 1x14; 16 nodes, depth <= 15; speculative chain 4"
    assert describe(TreeConfig(budget=0)) == "no speculation (budget 0)"
    line = describe(TreeConfig(budget=5, max_depth=3, fanouts=(2, 1), draft_calls=1, widths=(1, 1, 1), lookahead=2))
    assert line.startswith("sampled tree: drawn widths 1x3, 0 extra root leaves, draft2 lookahead 2")
    assert "draft tree: 6 draft call(s)" in describe(TreeConfig(fanouts=(), draft_calls=6, stop_p=0.05))
