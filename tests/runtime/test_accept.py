"""Acceptance maths on synthetic distributions: no model involved."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stagedx.runtime import accept
from stagedx.runtime.sampling import SamplingConfig, sample, warp
from tests._stats import chi_square_pvalue

V = 4


def oracle_p(prefix: tuple) -> np.ndarray:
    """A fixed, sharp conditional distribution for every prefix."""
    rng = np.random.default_rng(hash(prefix) % (2**32))
    return warp(rng.normal(0, 2.0, V), SamplingConfig("sample"))


def draft_q(prefix: tuple) -> np.ndarray:
    """A draft that is close to, but not equal to, the oracle."""
    p = oracle_p(prefix)
    rng = np.random.default_rng((hash(prefix) + 7) % (2**32))
    q = p * np.exp(rng.normal(0, 0.7, V))
    return q / q.sum()


def fixed_tree(prefix: tuple, width: int = 2, depth: int = 2):
    """Deterministic best-first-like tree: the `width` most likely draft children, two levels."""
    tokens, parents, nodes = [prefix[-1]], [-1], [(0, prefix)]
    for _ in range(depth):
        nxt = []
        for node, pre in nodes:
            for tok in np.argsort(-draft_q(pre))[:width]:
                tokens.append(int(tok))
                parents.append(node)
                nxt.append((len(tokens) - 1, pre + (int(tok),)))
        nodes = nxt
    return np.asarray(tokens), np.asarray(parents)


def path_prefix(prefix, tokens, parents, node):
    toks = []
    while node > 0:
        toks.append(int(tokens[node]))
        node = parents[node]
    return prefix + tuple(reversed(toks))


def per_node_round(prefix, rng):
    tokens, parents = fixed_tree(prefix)
    draw = accept.sampled_draw(lambda v: oracle_p(path_prefix(prefix, tokens, parents, v)), rng)
    return accept.walk_tree(parents, tokens, draw).tokens


def biased_round(prefix, rng):
    """SpecInfer's min(1, p/q) applied to FIXED best-first children: biased on purpose."""
    tokens, parents = fixed_tree(prefix)
    node, out = 0, []
    while True:
        pre = path_prefix(prefix, tokens, parents, node)
        p, q = oracle_p(pre).copy(), draft_q(pre).copy()
        for child in np.flatnonzero(parents == node):
            c = tokens[child]
            if rng.random() < min(1.0, p[c] / q[c]):
                out.append(int(c))
                node = child
                break
            p = np.maximum(p - q, 0)
            p /= p.sum()
            q[c] = 0
            q /= q.sum()
        else:
            out.append(sample(p, rng))
            return np.asarray(out)


def chain_round(prefix, rng, k=3):
    drafted, qs, pre = [], [], prefix
    for _ in range(k):
        q = draft_q(pre)
        x = sample(q, rng)
        drafted.append(x)
        qs.append(q)
        pre = pre + (x,)
    ps = [oracle_p(prefix + tuple(drafted[:i])) for i in range(k + 1)]
    return accept.verify_chain(np.asarray(drafted), np.stack(qs), np.stack(ps), rng)


def joint_first3(round_fn, n, seed):
    rng = np.random.default_rng(seed)
    counts = np.zeros((V, V, V))
    for _ in range(n):
        prefix, out = (0,), []
        while len(out) < 3:
            emitted = round_fn(prefix + tuple(out), rng)
            out.extend(int(t) for t in emitted)
        counts[tuple(out[:3])] += 1
    return counts


def exact_first3():
    probs = np.zeros((V, V, V))
    for a, b, c in itertools.product(range(V), repeat=3):
        probs[a, b, c] = oracle_p((0,))[a] * oracle_p((0, a))[b] * oracle_p((0, a, b))[c]
    return probs


N = 6000


def test_per_node_rule_matches_the_oracle():
    assert chi_square_pvalue(joint_first3(per_node_round, N, 1), exact_first3()) > 1e-3


def test_chain_rejection_sampling_matches_the_oracle():
    assert chi_square_pvalue(joint_first3(chain_round, N, 2), exact_first3()) > 1e-3


def test_negative_control_biased_verifier_is_rejected():
    assert chi_square_pvalue(joint_first3(biased_round, N, 3), exact_first3()) < 1e-6


def test_greedy_walk_accepts_while_argmax_is_a_child():
    #        0(root) -> 1:a -> 3:c
    #                -> 2:b
    tokens = np.array([9, 1, 2, 3])
    parents = np.array([-1, 0, 0, 1])
    argmax = np.array([1, 3, 0, 5])  # root->1 (child 1), node1->3 (child 3), node3->5 (bonus)
    v = accept.walk_tree(parents, tokens, accept.greedy_draw(argmax))
    assert v.path.tolist() == [0, 1, 3] and v.tokens.tolist() == [1, 3, 5]
    v = accept.walk_tree(parents, tokens, accept.greedy_draw(np.array([7, 0, 0, 0])))
    assert v.path.tolist() == [0] and v.tokens.tolist() == [7]


def test_eos_inside_accepted_run_at_depth_two():
    tokens = np.array([9, 1, 0, 4])  # node 2 (depth 2) is EOS (id 0)
    parents = np.array([-1, 0, 1, 2])
    v = accept.walk_tree(parents, tokens, accept.greedy_draw(np.array([1, 0, 4, 6])))
    assert v.tokens.tolist() == [1, 0, 4, 6]
    keep, eos = accept.truncate_emitted(v.tokens, eos=0, room=10)
    assert (keep, eos) == (2, True)
    assert v.path[:keep].tolist() == [0, 1]  # KV rows committed: root and node 1 only
    assert accept.truncate_emitted(v.tokens, eos=None, room=3) == (3, False)


@given(st.lists(st.integers(0, 3), max_size=8), st.lists(st.integers(0, 3), max_size=8))
def test_common_prefix(a, b):
    n = accept.common_prefix(np.asarray(a, np.int64), np.asarray(b, np.int64))
    assert a[:n] == b[:n]
    assert n == min(len(a), len(b)) or a[n] != b[n]
