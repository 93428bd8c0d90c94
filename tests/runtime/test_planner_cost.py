"""The planner's cost model: seeded from tuned curves or the built-in shape, refined from the
decode's own calls, monotone in the tree size, kept per band of past length."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from stagedx.runtime.planner_cost import PAST_BAND, CostModel, prior_from

MS = 1e-3


def test_the_built_in_prior_grows_slowly_and_prices_the_draft_by_weight_share():
    small = prior_from(None, 56_700_000, 10_600_000)  # the vendored pair's weights
    cheap = prior_from(None, 3_116_000_000, 170_000_000)  # GPT-2-L cost
    assert not small.tuned and small.oracle[1] == 1.0 and 1.0 < small.oracle[16] < 2.0
    assert np.all(np.diff(small.oracle) >= 0) and np.all(np.diff(small.draft) >= 0)
    assert 0.3 < small.draft[1] < 0.5 and 0.03 < cheap.draft[1] < 0.1


def test_tuned_curves_seed_the_model_in_seconds():
    entry = SimpleNamespace(
        oracle_latency_s={"1": 0.004, "8": 0.005, "16": 0.007},
        draft_latency_s={"1": 0.001, "32": 0.002},
        in_loop_factors={"oracle": 1.5, "draft": 2.0},
    )
    prior = prior_from(entry, 100, 20)
    assert prior.tuned
    costs = CostModel(prior)
    assert np.isclose(costs.oracle_curve(0)[1], 0.006) and np.isclose(costs.oracle_curve(0)[16], 0.0105)
    assert np.isclose(costs.draft_seconds(np.asarray([1]))[0], 0.002)
    bad = SimpleNamespace(oracle_latency_s={"x": 1}, draft_latency_s={"1": 0.1}, in_loop_factors=None)
    assert not prior_from(bad, 100, 20).tuned  # a malformed curve falls back to the built-in prior


def test_measured_points_are_kept_and_the_staircase_is_never_priced_backwards():
    costs = CostModel(prior_from(None, 56_700_000, 10_600_000))
    for t, ms in ((1, 4.0), (6, 5.0), (7, 7.0), (8, 6.0)):
        costs.observe_oracle(t, 100, ms * MS)
    curve = costs.oracle_curve(100)
    assert np.isclose(curve[1], 4 * MS) and np.isclose(curve[6], 5 * MS)  # monotone points as measured
    assert curve[8] >= curve[7] and np.isclose(curve[7], 6.5 * MS)  # T=8 measured cheaper than T=7: levelled
    assert 4 * MS <= curve[3] <= 5 * MS  # between measured points: interpolated
    assert curve[20] > curve[8] and np.all(np.diff(curve) >= 0)  # beyond: the prior's shape, monotone


def test_one_slow_outlier_does_not_lift_every_larger_tree():
    costs = CostModel(prior_from(None, 100, 20))
    for t in range(1, 17):
        costs.observe_oracle(t, 100, (4.0 + 0.1 * t) * MS)
    costs.observe_oracle(3, 100, 40 * MS)  # one round disturbed by another process (replaces T=3's mean)
    curve = costs.oracle_curve(100)
    assert curve[16] < 10 * MS and np.all(np.diff(curve) >= 0)


def test_repeated_measurements_are_averaged():
    costs = CostModel(prior_from(None, 56_700_000, 10_600_000))
    costs.observe_oracle(4, 0, 10 * MS)
    for _ in range(200):
        costs.observe_oracle(4, 0, 4 * MS)
    assert np.isclose(costs.oracle_curve(0)[4], 4 * MS, rtol=1e-3)


def test_past_bands_are_kept_apart_and_an_unmeasured_band_borrows_the_nearest():
    costs = CostModel(prior_from(None, 56_700_000, 10_600_000))
    costs.observe_oracle(8, 10, 5 * MS)
    costs.observe_oracle(8, 4 * PAST_BAND, 20 * MS)
    assert np.isclose(costs.oracle_curve(10)[8], 5 * MS)
    assert np.isclose(costs.oracle_curve(4 * PAST_BAND + 1)[8], 20 * MS)
    assert np.isclose(costs.oracle_curve(5 * PAST_BAND)[8], 20 * MS)  # nearest: band 4
    assert np.isclose(costs.oracle_curve(PAST_BAND)[8], 5 * MS)  # nearest: band 0


def test_the_draft_is_priced_from_its_calls_else_from_the_oracle():
    costs = CostModel(prior_from(None, 56_700_000, 10_600_000))
    costs.observe_oracle(1, 0, 4 * MS)
    guess = costs.draft_seconds(np.asarray([1]))[0]
    assert np.isclose(guess, 4 * MS * costs.prior.draft[1])  # a share of a 1-token oracle call
    costs.observe_draft([5, 1, 1], 3 * MS)
    d = costs.draft_seconds(np.asarray([5, 1, 1]))
    assert np.isclose(d.sum(), 3 * MS)


def test_a_slow_first_call_is_forgotten_faster_than_a_fast_one():
    costs = CostModel(prior_from(None, 56_700_000, 10_600_000))
    costs.observe_oracle(4, 0, 40 * MS)  # a first call of a new shape, ten times too slow
    for _ in range(4):
        costs.observe_oracle(4, 0, 4 * MS)
    assert costs.oracle_curve(0)[4] < 7 * MS  # halved each time: close after four calls
    fast = CostModel(prior_from(None, 56_700_000, 10_600_000))
    fast.observe_oracle(4, 0, 1 * MS)
    for _ in range(4):
        fast.observe_oracle(4, 0, 4 * MS)
    assert fast.oracle_curve(0)[4] < 3 * MS  # a slower measurement moves the mean slowly
    assert costs.measured(0)[4] and not costs.measured(0)[5] and not costs.measured(PAST_BAND)[4]


def test_a_draft_catch_up_is_not_learned_as_a_round_cost():
    costs = CostModel(prior_from(None, 56_700_000, 10_600_000))
    costs.observe_draft([1, 1], 2 * MS)
    costs.observe_draft([150, 1, 1], 40 * MS)  # the prompt's rows first: a one-time cost
    assert np.isclose(costs.draft_seconds(np.asarray([1]))[0], 1 * MS)
