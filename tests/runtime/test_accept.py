"""Acceptance maths on synthetic distributions: no model involved."""

import itertools

import numpy as np
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


def sampled_tree(prefix, rng, widths=(2, 1), extra=1):
    """Children drawn from q without replacement (draw order kept), plus ``extra``
    deterministic root leaves (the draft's most likely tokens not drawn)."""
    from stagedx.runtime.sampled import draw_without_replacement

    tokens, parents, drawn, nodes = [prefix[-1]], [-1], [False], [(0, prefix)]
    for d, w in enumerate(widths):
        nxt = []
        for node, pre in nodes:
            for tok in draw_without_replacement(draft_q(pre), w, rng):
                tokens.append(int(tok))
                parents.append(node)
                drawn.append(True)
                nxt.append((len(tokens) - 1, pre + (int(tok),)))
        if d == 0:
            taken = set(tokens[1:])
            for tok in [int(t) for t in np.argsort(-draft_q(prefix)) if int(t) not in taken][:extra]:
                tokens.append(tok)
                parents.append(0)
                drawn.append(False)
        nodes = nxt
    return np.asarray(tokens), np.asarray(parents), np.asarray(drawn)


def sampled_round(prefix, rng, forget_residual=False):
    tokens, parents, drawn = sampled_tree(prefix, rng)

    def q_at(v):
        return draft_q(path_prefix(prefix, tokens, parents, v))

    def p_at(v):
        return oracle_p(path_prefix(prefix, tokens, parents, v))

    if forget_residual:  # the classic bug: keep p after a rejection instead of max(0, p - q)
        return biased_sampled(tokens, parents, drawn, q_at, p_at, rng)
    return accept.verify_sampled(parents, tokens, drawn, q_at, p_at, rng).tokens


def biased_sampled(tokens, parents, drawn, q_at, p_at, rng):
    node, out = 0, []
    while True:
        p, q = p_at(node), q_at(node).copy()
        kids = np.flatnonzero(parents == node)
        for c in kids[drawn[kids]]:
            if rng.random() * q[tokens[c]] < p[tokens[c]]:
                out.append(int(tokens[c]))
                node = c
                break
            q[tokens[c]] = 0
            q /= q.sum()
        else:
            out.append(sample(p, rng))
            return np.asarray(out)


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


def test_recursive_rejection_sampling_over_sampled_trees_matches_the_oracle():
    assert chi_square_pvalue(joint_first3(sampled_round, N, 4), exact_first3()) > 1e-3


def test_negative_control_sampled_tree_without_residual_is_rejected():
    def biased(prefix, rng):
        return sampled_round(prefix, rng, forget_residual=True)

    assert chi_square_pvalue(joint_first3(biased, N, 5), exact_first3()) < 1e-6


def test_draws_without_replacement_follow_sequential_draws():
    """Gumbel-top-2 = draw one from q, then one from q without it: check the pair law."""
    from stagedx.runtime.sampled import draw_without_replacement

    q = np.asarray([0.5, 0.3, 0.15, 0.05, 0.0])
    rng = np.random.default_rng(6)
    counts = np.zeros((5, 5))
    for _ in range(6000):
        a, b = draw_without_replacement(q, 2, rng)
        counts[a, b] += 1
    law = np.asarray([[q[a] * q[b] / (1 - q[a]) if a != b else 0.0 for b in range(5)] for a in range(5)])
    assert chi_square_pvalue(counts, law) > 1e-3
    assert draw_without_replacement(q, 9, rng).size == 4  # never beyond the support


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
