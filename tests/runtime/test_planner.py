"""The online planner (strategy ``auto``) without a model: its menu, its acceptance estimates,
and that its choice is a deterministic function of the observed history."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from stagedx.runtime.planner import (
    MAX_DEPTH,
    REFRESH,
    Acceptance,
    Planner,
    PlannerStats,
    menu,
)
from stagedx.runtime.planner_cost import CostModel, prior_from
from stagedx.runtime.proposal import DraftCost
from stagedx.runtime.proposers import CHAIN, DRAFT2_TREE, DRAFT_TREE, NONE, SAMPLED_TREE
from stagedx.runtime.shapes import GREEDY, SAMPLE, TreeConfig

MS = 1e-3


PAIR = (56_700_000, 10_600_000)  # the vendored pair's weight bytes (oracle, draft)
GPT2L = (3_116_000_000, 170_000_000)  # at GPT-2-L cost: a cheap draft


def planner(has_draft2: bool = True, tuned: TreeConfig | None = None, weights=PAIR) -> Planner:
    menus = {m: menu(m, has_draft2, tuned) for m in (GREEDY, SAMPLE)}
    return Planner(CostModel(prior_from(None, *weights)), menus)


def proposal(nodes: int, draft_sizes=(), draft_s: float = 0.0, draft2_s: float = 0.0):
    """What ``observe`` reads of a proposal: the tree's size and the draft cost."""
    cost = DraftCost(list(draft_sizes), draft_s, draft2_s)
    return SimpleNamespace(tree=SimpleNamespace(tokens=np.zeros(nodes + 1, np.int64)), cost=cost)


def play(p: Planner, mode: str, rounds: int, accept, oracle_ms, draft_ms: float = 1.0) -> list:
    """Run ``rounds`` simulated rounds: ``accept(option, limit)`` -> accepted nodes,
    ``oracle_ms(T)`` -> the oracle call's milliseconds. Returns the labels chosen."""
    stats, labels = PlannerStats(), []
    for r in range(rounds):
        opt, limit = p.choose(mode, 500, 200 + r, stats)
        labels.append(opt.label)
        calls = limit if opt.kind == CHAIN else opt.tree.draft_calls if opt.kind == DRAFT_TREE else 0
        nodes = limit if opt.kind == CHAIN else min(opt.nodes, opt.tree.budget)
        prop = proposal(nodes, [2] + [1] * (calls - 1) if calls else [], calls * draft_ms * MS, 0.05 * MS)
        p.observe_timing(mode, nodes + 1, 200 + r, (oracle_ms(nodes + 1) + 0.1) * MS)
        p.observe(mode, opt, limit, prop, min(accept(opt, limit), limit), stats)
    return labels


def flat(ms: float):
    return lambda t: ms


def test_the_menu_offers_every_kind_of_proposal():
    for has_draft2 in (True, False):
        greedy = menu(GREEDY, has_draft2)
        sampled = menu(SAMPLE, has_draft2)
        assert greedy[0].kind == NONE and sampled[0].kind == NONE
        assert {o.kind for o in greedy} >= {NONE, CHAIN, DRAFT_TREE}
        assert (DRAFT2_TREE in {o.kind for o in greedy}) == has_draft2
        assert {o.kind for o in sampled} >= {NONE, CHAIN, SAMPLED_TREE, DRAFT_TREE}
        assert all(o.depth <= MAX_DEPTH for o in greedy + sampled)
    drawn = TreeConfig(budget=4, max_depth=4, draft_calls=1, widths=(1, 1))
    tuned = {o.family: o for o in menu(SAMPLE, True, drawn)}["tuned"]
    assert tuned.kind == SAMPLED_TREE and tuned.draft_calls == 2
    assert {o.family: o for o in menu(GREEDY, True, drawn)}["tuned"].kind == DRAFT_TREE  # greedy ignores widths


def test_acceptance_rates_shrink_to_the_prior_then_to_the_depth_above():
    acc = Acceptance({"a": 0.4})
    assert np.allclose(acc.rates()[0, 1:], 0.4)
    for _ in range(40):
        acc.observe("a", 3, 8)  # accepted depths 1..3, failed at 4
    a = acc.rates()[0]
    assert a[1] > 0.85 and a[2] > 0.95 and a[3] > 0.95 and a[4] < 0.2
    assert np.allclose(a[5:], a[4])  # never tried below 4: priced like depth 4
    e = acc.expected()[0]
    assert e[0] == 1.0 and np.all(np.diff(e) >= 0) and 3.5 < e[3] < 4.0


def test_a_stage_that_does_not_pay_is_switched_off_then_probed_again():
    p = planner()
    labels = play(p, GREEDY, 600, lambda o, lim: 0, lambda t: 5.0 + 0.2 * t)  # nothing is ever accepted
    assert labels[60:].count("none") > 0.9 * len(labels[60:])
    families = len(p.plans[GREEDY].acc.families)
    late = [lab for lab in labels[300:] if lab != "none"]
    assert 0 < len(late) <= 2 * families  # still re-probed, at a shrinking rate (gaps double)
    assert len(late) < len([lab for lab in labels[:300] if lab != "none"])


def test_deep_acceptance_grows_the_tree_and_long_pasts_shrink_it():
    def deep(opt, limit):
        return limit if opt.family == "draft2" else 0  # draft2 copies: every level accepted

    p = planner()
    labels = play(p, GREEDY, 80, deep, lambda t: 5.0 + 0.05 * t)
    assert labels[-20:].count("draft2:15") >= 18
    # the same acceptance, but at a long past every tree token costs as much as a call
    far = 5000
    for t in range(1, 17):
        p.costs.observe_oracle(t, far, (5.0 + 20.0 * (t - 1)) * MS)
    near = p.choose(GREEDY, 500, 300, PlannerStats())[0]
    long = p.choose(GREEDY, 500, far, PlannerStats())[0]
    assert near.label == "draft2:15" and long.nodes < near.nodes


def test_the_choice_is_a_deterministic_function_of_the_history():
    def accept(opt, limit):
        return {"draft2": 2, "chain": 3}.get(opt.family, 1)

    a = play(planner(), GREEDY, 60, accept, lambda t: 4.0 + 0.3 * t)
    b = play(planner(), GREEDY, 60, accept, lambda t: 4.0 + 0.3 * t)
    assert a == b
    c = play(planner(), GREEDY, 60, accept, flat(50.0), draft_ms=0.1)  # other timings: the draft is cheap
    assert c != a and a[-1].startswith("draft2:") and c[-1].startswith("chain:")


def test_the_round_cannot_go_deeper_than_the_room():
    p = planner()
    stats = PlannerStats()
    for room in (0, 1, 3):
        opt, limit = p.choose(GREEDY, room, 100, stats)
        assert limit <= room and (opt.kind == NONE) == (limit == 0)
    assert sum(stats.choices.values()) == 3 and stats.overhead_s > 0


def test_without_draft2_the_draft_or_nothing_is_chosen():
    p = planner(has_draft2=False)
    labels = play(p, GREEDY, 40, lambda o, lim: lim if o.kind == CHAIN else 1, flat(5.0), draft_ms=0.2)
    assert labels[-1].startswith("chain:") and not any(lab.startswith("draft2") for lab in labels)


def test_planner_stats_report_choices_stages_and_overhead():
    p = planner()
    stats = PlannerStats()
    opt, limit = p.choose(GREEDY, 500, 10, stats)
    p.observe(GREEDY, opt, limit, proposal(opt.nodes, [3], 1 * MS, 0.01 * MS), 1, stats)
    d = stats.as_dict()
    assert d["choices"] == {opt.label: 1} and d["overhead_s"] > 0 and set(d["stages"]) == {"draft2", "draft"}


@pytest.mark.parametrize("mode", [GREEDY, SAMPLE])
def test_the_default_options_are_priced_finite(mode):
    p = planner()
    value, seconds = p.values(p.plans[mode], p.costs_for(mode), (500, 100))
    assert np.all(np.isfinite(value)) and np.all(value > 0) and np.all(seconds > 0)


def test_drawn_proposals_are_used_when_sampling_only_with_a_cheap_draft():
    assert not planner().drawn and planner(weights=GPT2L).drawn
    # without draft2, the pair's draft chain would beat no speculation by a few percent under
    # the prior: not the clear margin drawn proposals need (measured, it is 0.6x)
    assert not planner(has_draft2=False).drawn and planner(has_draft2=False, weights=GPT2L).drawn
    kinds = {o.kind for o in planner().menus[SAMPLE]}
    assert CHAIN not in kinds and SAMPLED_TREE not in kinds  # per-node only: the baseline's text
    assert {CHAIN, SAMPLED_TREE} <= {o.kind for o in planner(weights=GPT2L).menus[SAMPLE]}


def test_drawn_sampled_decisions_ignore_live_timings_and_start_afresh_per_request():
    def accept(opt, limit):
        return 2 if opt.family == "chain" else 0

    a, b = planner(weights=GPT2L), planner(weights=GPT2L)
    for t in range(1, 30):  # b measured very different costs
        b.observe_timing(SAMPLE, t, 100, (1.0 + 4.0 * t) * MS)
        b.observe_timing(GREEDY, t, 100, (1.0 + 4.0 * t) * MS)
        b.costs.observe_draft([1], 0.01 * MS)
    a.begin(SAMPLE)
    b.begin(SAMPLE)
    first = play(a, SAMPLE, 40, accept, flat(5.0))
    assert play(b, SAMPLE, 40, accept, lambda t: 1 + 9 * t) == first
    assert any(lab.startswith("chain:") for lab in first)
    assert play(planner(), GREEDY, 40, accept, flat(5.0)) != play(b, GREEDY, 40, accept, flat(5.0))
    a.begin(SAMPLE)  # a new request: the same choices again
    assert play(a, SAMPLE, 40, accept, flat(5.0)) == first


def test_a_choice_is_reused_for_a_few_rounds():
    p = planner()
    stats = PlannerStats()
    play(p, GREEDY, 60, lambda o, lim: 0, lambda t: 5.0 + 0.5 * t)  # settles on no speculation
    calls = []
    original = p.values
    p.values = lambda *a: calls.append(1) or original(*a)
    for _ in range(10 * REFRESH):
        p.choose(GREEDY, 500, 300, stats)
    assert len(calls) <= 10 + stats.probes + 1


def test_a_draft_that_pays_is_used_from_the_start():
    # the draft's chain pays (every drafted token accepted, drafts cheap): chosen at once and
    # kept (its one-time catch-up after rounds without it is not charged to a round)
    p = planner(has_draft2=False)
    labels = play(p, GREEDY, 40, lambda o, lim: lim if o.kind == CHAIN else 0, lambda t: 5.0 + 0.1 * t, draft_ms=0.3)
    assert labels[-1].startswith("chain:") and labels[:3].count("none") < 3


def test_a_stage_that_cannot_pay_at_any_acceptance_is_not_probed():
    # draft2 copies every level; a draft call costs as much as two oracle calls: no draft tree
    # can pay even if the draft were always right, so none is ever run after the first rounds
    def deep(opt, limit):
        return limit if opt.family == "draft2" else 0

    p = planner()
    labels = play(p, GREEDY, 400, deep, lambda t: 5.0 + 0.05 * t, draft_ms=10.0)
    assert not any(lab.startswith(("staged", "chain")) for lab in labels[60:])
    assert labels[-50:].count("draft2:15") >= 48  # (a size probe at a new past band)
    # draft2 stops at depth 3 and the draft is cheap: the draft's stages are probed now and then
    labels = play(planner(), GREEDY, 400, lambda o, lim: 3, lambda t: 5.0 + 0.05 * t, draft_ms=0.05)
    assert any(lab.startswith(("staged", "chain")) for lab in labels[60:])


def test_a_size_the_prior_misprices_is_measured_and_then_chosen():
    # the draft's chain accepts everything; the oracle's cost jumps after 5 tokens (the CPU's
    # staircase), which the built-in prior (a call grows by 4% a token) does not know: after
    # timing the long chains only, the planner runs the shorter ones once and keeps them
    def steps(t):
        return 5.0 + max(0, t - 5)  # flat to 5 tokens, then 20% more per token

    p = planner(has_draft2=False)
    labels = play(p, GREEDY, 200, lambda o, lim: lim if o.kind == CHAIN else 0, steps, draft_ms=0.5)
    assert labels[10] == "chain:8"  # priced by the prior from the sizes timed so far: the longest
    assert labels[-20:].count("chain:4") >= 18  # 5 tokens: the most per second at these costs
