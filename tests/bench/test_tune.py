"""Tune's search space for sampled trees (no model): what makes two shapes alike, and which
shapes count as three-stage."""

from stagedx.bench.tune import SAMPLED_SPACE, coordinate_search, effective, is_three_stage
from stagedx.runtime.shapes import TreeConfig


def test_lookahead_is_cut_to_the_levels_whose_q_can_be_needed():
    a = TreeConfig(budget=4, widths=(1, 1), lookahead=5, fanouts=(2, 1, 1, 1))
    b = TreeConfig(budget=4, widths=(1, 1), lookahead=1, fanouts=(2, 3))
    assert effective(a) == effective(b) and effective(a).lookahead == 1 and effective(a).fanouts == (2,)
    plain = TreeConfig(budget=4, widths=(1, 1, 1), fanouts=(4, 2, 1))
    assert effective(plain) == effective(TreeConfig(budget=4, widths=(1, 1, 1), fanouts=(1,)))  # unused
    assert effective(TreeConfig(budget=4, widths=(1, 1, 1), lookahead=2, fanouts=(2, 1))) != effective(plain)


def test_a_drawn_chain_with_lookahead_is_three_stage_only_with_draft2():
    look = TreeConfig(budget=4, widths=(1, 1, 1, 1), lookahead=3, fanouts=(2, 1, 1)).to_dict()
    chain = TreeConfig(budget=4, widths=(1, 1, 1, 1)).to_dict()
    assert is_three_stage(look, "both") and not is_three_stage(look, "none")
    assert not is_three_stage(chain, "ngram")


def test_the_sampled_search_reaches_lookahead_and_its_fanouts():
    class Ev:
        def __init__(self, v):
            self.predicted_tokens_per_s = v

    def score(cfg):
        return Ev(-abs(cfg.lookahead - 3) - (cfg.fanouts[:3] != (4, 2, 1)) - abs(cfg.extra - 2))

    start = TreeConfig(budget=4, max_depth=4, widths=(1, 1, 1, 1))
    _, best, _ = coordinate_search(start, score, passes=2, space=SAMPLED_SPACE)
    assert best.lookahead == 3 and best.fanouts == (4, 2, 1) and best.extra == 2
