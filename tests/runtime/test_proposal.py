"""Proposals and their verification rules, without a model: fitting to the free KV rows,
the rule each proposal carries, and the draft cost counted once."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from stagedx.runtime.proposal import DraftCost, Proposal, Rule, oracle_fetch, verify
from stagedx.runtime.results import Stats
from stagedx.runtime.runner import FETCH_LOGITS, FETCH_TOPK, RunOutput
from stagedx.runtime.sampling import SamplingConfig, warp
from stagedx.runtime.tree import SOURCE_DRAFT, OracleTree, chain_tree, depths, is_valid_tree, root_only

V = 6
GREEDY, TOPK = SamplingConfig.parse("greedy"), SamplingConfig.parse("topk:3")


@st.composite
def trees(draw, max_nodes=12):
    n = draw(st.integers(1, max_nodes))
    parents = [-1] + [draw(st.integers(0, i - 1)) for i in range(1, n)]
    tokens = [draw(st.integers(0, V - 1)) for _ in range(n)]
    par = np.asarray(parents, np.int32)
    src = np.full(n, SOURCE_DRAFT, np.int64)
    src[0] = -1
    return OracleTree(np.asarray(tokens, np.int64), par, depths(par), src)


@given(trees(), st.integers(1, 14))
def test_fit_keeps_a_tree_and_its_drawn_marks_aligned(tree, rows):
    drawn = np.arange(len(tree.tokens)) % 2 == 1
    p = Proposal(tree, Rule.RECURSIVE, [], DraftCost(), {}, drawn).fit(rows)
    n = min(rows, len(tree.tokens))
    assert len(p.tree.tokens) == len(p.drawn) == n and is_valid_tree(p.tree.parents)
    assert p.tree.tokens.tolist() == tree.tokens[:n].tolist() and p.drawn.tolist() == drawn[:n].tolist()


@given(st.integers(1, 6), st.integers(1, 8))
def test_fit_cuts_a_chain_and_its_q_rows_together(k, rows):
    q = np.full((k, V), 1.0 / V)
    p = Proposal(chain_tree(np.arange(k + 1) % V), Rule.CHAIN, [], DraftCost(), q).fit(rows)
    assert len(p.q) == len(p.tree.tokens) - 1


@given(trees(), st.lists(st.integers(0, V - 1), min_size=12, max_size=12))
def test_greedy_verify_accepts_exactly_the_argmax_path(tree, argmax):
    argmax = np.asarray(argmax[: len(tree.tokens)], np.int64)
    out = RunOutput(topk_indices=argmax[:, None])
    verdict = verify(Proposal(tree), out, GREEDY, np.random.default_rng(0))
    # every accepted node carries the oracle's choice at its parent; the last token is the oracle's own
    for parent, node in zip(verdict.path[:-1], verdict.path[1:]):
        assert tree.parents[node] == parent and tree.tokens[node] == argmax[parent]
    assert verdict.tokens[-1] == argmax[verdict.path[-1]]
    assert verdict.tokens[:-1].tolist() == tree.tokens[verdict.path[1:]].tolist()


def test_a_chain_drawn_from_the_oracle_law_is_always_accepted():
    """Rule.CHAIN with q == p accepts every drafted token (min(1, p/q) = 1)."""
    logits = np.log(np.asarray([[0.5, 0.3, 0.2, 1e-9, 1e-9, 1e-9]] * 4, np.float32))  # [k+1, V]
    cfg = SamplingConfig.parse("sample")
    q = warp(logits[:3], cfg)  # [k, V]
    p = Proposal(chain_tree(np.asarray([5, 0, 1, 2])), Rule.CHAIN, [], DraftCost(), q)
    for seed in range(20):
        verdict = verify(p, RunOutput(logits=logits), cfg, np.random.default_rng(seed))
        assert verdict.tokens[:3].tolist() == [0, 1, 2] and len(verdict.tokens) == 4


def test_the_root_alone_emits_one_oracle_token():
    out = RunOutput(topk_indices=np.asarray([[4]]), logits=np.log(np.full((1, V), 1.0 / V, np.float32)))
    assert verify(Proposal(root_only(3)), out, GREEDY, np.random.default_rng(0)).tokens.tolist() == [4]
    assert len(verify(Proposal(root_only(3)), out, TOPK, np.random.default_rng(0)).tokens) == 1


def test_oracle_fetch_matches_what_verify_reads():
    assert oracle_fetch(GREEDY) == (FETCH_TOPK,) and oracle_fetch(TOPK) == (FETCH_LOGITS,)


def test_draft_cost_is_counted_once_into_stats():
    cost = DraftCost()
    cost.add_call(5, 0.25, 0.5)
    cost.add_call(1, 0.25)
    stats = Stats("staged", "greedy")
    stats.add_draft(cost)
    assert cost.calls == 2 and stats.draft_calls == 2
    assert stats.call_sizes["draft"] == {5: 1, 1: 1}
    assert stats.time_s["draft"] == 0.5 and stats.time_s["draft2"] == 0.5
