import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from stagedx.errors import StagedxError
from stagedx.runtime.sampling import SamplingConfig, rank_logprobs, sample, warp

logits_1d = arrays(np.float64, st.integers(2, 40), elements=st.floats(-20, 20))


@pytest.mark.parametrize("spec", ["greedy", "topk:2", "topp:0.5", "sample"])
def test_warp_is_a_distribution_with_the_right_support(spec):
    logits = np.array([[3.0, 1.0, 0.5, -2.0], [0.0, 0.0, 5.0, 1.0]])
    p = warp(logits, SamplingConfig.parse(spec))
    assert np.allclose(p.sum(-1), 1.0)
    if spec == "greedy":
        assert p.argmax(-1).tolist() == [0, 2] and (p.max(-1) == 1).all()
    if spec == "topk:2":
        assert ((p > 0).sum(-1) == 2).all()


@settings(max_examples=200)
@given(logits_1d, st.integers(1, 10), st.floats(0.2, 3.0))
def test_top_k_keeps_the_k_best_and_renormalises(x, k, temperature):
    p = warp(x, SamplingConfig("sample", temperature, top_k=k))
    assert p.sum() == pytest.approx(1.0)
    kept = np.flatnonzero(p > 0)
    assert len(kept) >= min(k, len(x)) or len(kept) == len(x)
    # every kept logit is at least as large as every dropped one
    dropped = np.setdiff1d(np.arange(len(x)), kept)
    if dropped.size:
        assert x[kept].min() >= x[dropped].max()


@settings(max_examples=200)
@given(logits_1d, st.floats(0.05, 0.99))
def test_top_p_keeps_the_smallest_prefix_reaching_p(x, top_p):
    full = warp(x, SamplingConfig("sample"))
    p = warp(x, SamplingConfig("sample", top_p=top_p))
    kept = p > 0
    assert p.sum() == pytest.approx(1.0)
    assert full[kept].sum() >= top_p - 1e-9  # reaches p
    # dropping the least likely kept token would fall short of p (minimal, ties aside)
    least = full[kept].min()
    assert full[kept].sum() - least < top_p + 1e-9 or np.isclose(full[kept], least).sum() > 1


def test_sample_draws_follow_the_distribution():
    rng = np.random.default_rng(0)
    probs = np.array([0.0, 0.5, 0.0, 0.3, 0.2])
    draws = np.bincount([sample(probs, rng) for _ in range(20000)], minlength=5) / 20000
    assert draws[0] == 0 and draws[2] == 0
    np.testing.assert_allclose(draws, probs, atol=0.02)


def test_greedy_ranking_uses_tau_not_one_hot():
    values = np.array([[2.0, 1.9, 0.0]])
    sharp = np.exp(rank_logprobs(values, SamplingConfig(), tau=0.1))
    assert 0 < sharp[0, 1] < sharp[0, 0] < 1  # both branches stay in the tree
    sampled = np.exp(rank_logprobs(values, SamplingConfig.parse("topk:2"), tau=0.1))
    assert sampled[0, 2] == 0 and sampled[0, :2].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("spec,temp", [("topk:0", 1.0), ("topp:1.5", 1.0), ("nucleus", 1.0), ("greedy", 0.0)])
def test_bad_sampling_specs_are_clear_errors(spec, temp):
    with pytest.raises(StagedxError):
        SamplingConfig.parse(spec, temp)


def test_labels():
    assert SamplingConfig.parse("topk:50").label == "topk:50"
    assert SamplingConfig.parse("topp:0.9", 0.7).label == "topp:0.9,T=0.7"
    assert SamplingConfig.parse("greedy").label == "greedy"


@pytest.mark.parametrize(
    "top_k, top_p, want",
    [
        (2, 0.9, [4 / 7, 3 / 7, 0, 0]),  # top-p alone would keep 3 tokens: top-k must still cut to 2
        (3, 0.5, [4 / 7, 3 / 7, 0, 0]),  # top-k alone would keep 3: top-p (on the renormalised 3) keeps 2
    ],
)
def test_top_k_and_top_p_together_apply_both_cuts_in_order(top_k, top_p, want):
    logits = np.log([0.4, 0.3, 0.2, 0.1])
    p = warp(logits, SamplingConfig("sample", top_k=top_k, top_p=top_p))
    assert np.allclose(p, want)
