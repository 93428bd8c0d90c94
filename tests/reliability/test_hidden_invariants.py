"""Class 10: tests that see what the output text cannot. Each would survive as a silent bug if
only the generated text were checked: a dropped bonus token (fewer tokens per call), a stale
draft KV row (worse proposals), an unchecked external-data hash (an integrity hole), top-p
under a temperature and at its exact boundary, and the Good-Turing branch of the n-gram
discount."""

from __future__ import annotations

import numpy as np
import pytest

from stagedx.errors import StagedxError
from stagedx.export.ngram import GT_MAX, _Discount
from stagedx.files import sha256_file
from stagedx.manifest import load_manifest
from stagedx.runtime import DecodeOptions, Generator, SamplingConfig, TreeConfig
from stagedx.runtime.accept import greedy_draw, verify_chain, walk_tree
from stagedx.runtime.backends.ort import OrtRunner
from stagedx.runtime.runner import chain_mask
from stagedx.runtime.sampling import softmax, warp
from stagedx.runtime.shapes import FAN10
from tests.reliability._util import copy_bundle, edit_manifest

PROMPT = "def add(a, b):\n    return a + b\n\n\ndef"


# -- the bonus token --------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 6])
def test_verify_chain_emits_k_plus_one_tokens_when_every_draft_is_accepted(k):
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = softmax(rng.normal(size=(k + 1, 11)) * 3)  # [k+1, V]
        q = p[:k].copy()  # the draft IS the oracle: every draft is accepted
        drafted = np.asarray([rng.choice(11, p=q[i]) for i in range(k)])
        out = verify_chain(drafted, q, p, rng)
        assert len(out) == k + 1 and out[:k].tolist() == drafted.tolist()


def test_walk_tree_emits_the_oracle_token_below_a_fully_accepted_chain():
    tokens = np.asarray([9, 1, 2, 3])  # root -> 1 -> 2 -> 3
    parents = np.asarray([-1, 0, 1, 2])
    argmax = np.asarray([1, 2, 3, 7])  # the oracle agrees all the way, then says 7
    v = walk_tree(parents, tokens, greedy_draw(argmax))
    assert v.path.tolist() == [0, 1, 2, 3] and v.tokens.tolist() == [1, 2, 3, 7]


@pytest.mark.parametrize("k", [2, 4])
def test_speculative_with_a_perfect_draft_gets_k_plus_one_tokens_per_oracle_call(self_draft_bundle, k):
    gen = Generator(self_draft_bundle, device="cpu", threads=1)
    rounds = 5
    res = gen.generate(
        PROMPT, max_new_tokens=rounds * (k + 1), ignore_eos=True, strategy="speculative", tree=TreeConfig(spec_k=k)
    )
    assert res.stats.oracle_calls == rounds  # tokens per oracle call == k + 1, exactly
    assert res.stats.tokens_per_oracle_call == k + 1
    assert res.stats.accepted_by_depth[:k] == [rounds] * k


def test_staged_round_emits_its_accepted_nodes_plus_one(self_draft_bundle):
    gen = Generator(self_draft_bundle, device="cpu", threads=1)
    tree = TreeConfig(budget=8, max_depth=4, fanouts=FAN10, draft_calls=2, draft_batch=8)
    res = gen.generate(PROMPT, max_new_tokens=40, ignore_eos=True, tree=tree)
    s = res.stats
    assert s.new_tokens == sum(s.accepted_by_depth) + s.rounds  # every round adds the oracle's own token
    assert s.accepted_by_stage["oracle"] == s.rounds


# -- the draft's KV cache ---------------------------------------------------------------------
def _fresh_prefill(bundle, manifest, tokens):
    runner = OrtRunner(bundle, manifest.draft, device="cpu", threads=1)
    n = len(tokens)
    runner.run(np.asarray(tokens, np.int64), np.arange(n), chain_mask(n))
    runner.commit(np.arange(n))
    return runner._kv.cache


@pytest.mark.parametrize(
    "strategy, tree, sampling",
    [
        ("staged", TreeConfig(budget=10, max_depth=5, fanouts=FAN10, draft_calls=2, draft_batch=8), "greedy"),
        ("staged", TreeConfig(budget=6, max_depth=3, fanouts=(4, 2, 1), draft_calls=1, draft_batch=16), "topk:20"),
        ("speculative", TreeConfig(spec_k=3), "greedy"),
        ("speculative", TreeConfig(spec_k=3), "topk:20"),
        ("staged", TreeConfig(budget=6, max_depth=5, fanouts=(3, 2, 1), widths=(1,) * 5, lookahead=3), "topk:20"),
        ("staged", TreeConfig(budget=9, max_depth=4, widths=(1, 2, 1, 1), lookahead=2, extra=1), "topk:20"),
    ],
)
def test_draft_cache_equals_a_fresh_prefill_after_every_round(tiny_bundle, strategy, tree, sampling):
    """After each round the draft's committed rows are exactly the rows of the committed
    tokens (no stale speculative row), and no more rows were dropped than necessary."""
    opts = DecodeOptions(24, sampling, seed=5, strategy=strategy, ignore_eos=True, tree=tree)
    checked, _ = _check_draft_cache(tiny_bundle, PROMPT, opts)
    assert checked >= 3


def test_lookahead_rows_committed_to_the_draft_equal_a_fresh_prefill(pair_bundle):
    """On the vendored pair draft2's proposals are often drawn, so the chain follows rows the
    draft scored ahead under a tree mask: those committed rows must be a chain's rows."""
    tree = TreeConfig(budget=6, max_depth=6, fanouts=(2, 1, 1, 1, 1), widths=(1,) * 6, lookahead=5)
    prompt = "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n    return a + b\n\n\ndef"
    opts = DecodeOptions(48, "topk:5", seed=3, strategy="staged", ignore_eos=True, tree=tree)
    checked, stats = _check_draft_cache(pair_bundle, prompt, opts)
    assert checked >= 3
    assert stats.draft_calls < 6 * stats.rounds  # some drawn tokens were draft2's: no call for them


def _check_draft_cache(bundle, prompt, opts: DecodeOptions) -> tuple:
    """Decode round by round, comparing the draft's committed KV rows with a fresh prefill of
    the same tokens after every round. Returns (rounds checked, the decode's Stats)."""
    gen = Generator(bundle, device="cpu", threads=1)
    req = gen._request(prompt, opts)
    st = gen._start(req)
    checked = 0
    for _ in gen._rounds(req, st):
        n = gen.draft.length
        assert n <= len(st.tokens) - 1
        if n == 0:
            continue
        fresh = _fresh_prefill(gen.bundle_dir, gen.manifest, st.tokens[:n])
        live = gen.draft._kv.cache
        np.testing.assert_allclose(live.keys[:, :n], fresh.keys[:, :n], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(live.values[:, :n], fresh.values[:, :n], rtol=1e-4, atol=1e-5)
        checked += 1
    return checked, st.stats


def test_the_draft_keeps_its_rows_of_accepted_tokens(self_draft_bundle):
    """With a perfect draft every speculative row survives: after each round the draft lacks
    at most the pending token and the tokens the oracle added beyond the draft's path."""
    gen = Generator(self_draft_bundle, device="cpu", threads=1)
    req = gen._request(PROMPT, DecodeOptions(20, strategy="speculative", ignore_eos=True, tree=TreeConfig(spec_k=3)))
    st = gen._start(req)
    for _ in gen._rounds(req, st):
        assert gen.draft.length == len(st.tokens) - 2  # everything but the bonus token and the root


# -- external data hashes ---------------------------------------------------------------------
def test_external_data_file_is_hashed(tiny_bundle, tmp_path):
    onnx = pytest.importorskip("onnx")
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    model = onnx.load(str(bundle / "oracle.onnx"))
    onnx.save_model(
        model,
        str(bundle / "oracle.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="oracle.onnx.data",
        size_threshold=0,
    )

    def point(d):
        e = d["models"]["oracle"]
        e["sha256"] = sha256_file(bundle / "oracle.onnx")
        e["external_data"] = {"file": "oracle.onnx.data", "sha256": sha256_file(bundle / "oracle.onnx.data")}

    edit_manifest(bundle, point)
    want = Generator(tiny_bundle, device="cpu", threads=1).generate(PROMPT, max_new_tokens=6, ignore_eos=True).tokens
    assert Generator(bundle, device="cpu", threads=1).generate(PROMPT, max_new_tokens=6, ignore_eos=True).tokens == want
    data = bytearray((bundle / "oracle.onnx.data").read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the weights
    (bundle / "oracle.onnx.data").write_bytes(bytes(data))
    with pytest.raises(StagedxError, match="sha256 mismatch.*oracle.onnx.data"):
        load_manifest(bundle)
    with pytest.raises(StagedxError, match="oracle.onnx.data"):
        Generator(bundle, device="cpu", threads=1)


# -- top-p ------------------------------------------------------------------------------------
def test_top_p_applies_after_the_temperature():
    logits = np.log(np.asarray([0.5, 0.3, 0.15, 0.05]))
    # T = 1: 0.5 + 0.3 = 0.8 reaches 0.75 -> two tokens. T = 3 flattens: 0.5 -> ~0.35, two no longer reach 0.75
    two = warp(logits, SamplingConfig("sample", 1.0, top_p=0.75))
    assert np.count_nonzero(two) == 2
    flat = softmax(logits / 3.0)
    cfg = SamplingConfig("sample", 3.0, top_p=0.75)
    got = warp(logits, cfg)
    keep = np.cumsum(flat) - flat < 0.75
    assert keep.tolist() == [True, True, True, False]
    np.testing.assert_allclose(got, np.where(keep, flat, 0) / flat[keep].sum(), rtol=1e-12)
    sharp = warp(logits, SamplingConfig("sample", 0.25, top_p=0.75))  # sharper: one token already covers 0.75
    assert np.count_nonzero(sharp) == 1 and sharp[0] == 1.0


def test_top_p_boundary_is_exact():
    """Keep the smallest prefix whose mass reaches top_p: with four equal tokens (exactly 0.25
    each in binary floating point) top_p = 0.5 keeps two, not three; just above keeps three."""
    logits = np.zeros(4)
    for t in (1.0, 2.0, 0.5):
        at = warp(logits, SamplingConfig("sample", t, top_p=0.5))
        assert at.tolist() == [0.5, 0.5, 0.0, 0.0]
        above = warp(logits, SamplingConfig("sample", t, top_p=np.nextafter(0.5, 1.0)))
        assert np.count_nonzero(above) == 3
        assert warp(logits, SamplingConfig("sample", t, top_p=0.25)).tolist() == [1.0, 0.0, 0.0, 0.0]
        assert np.count_nonzero(warp(logits, SamplingConfig("sample", t, top_p=1.0))) == 4


def test_top_k_then_top_p_under_a_temperature():
    logits = np.asarray([3.0, 2.0, 1.0, 0.0, -1.0])
    cfg = SamplingConfig("sample", 2.0, top_k=3, top_p=0.6)
    p3 = softmax(logits[:3] / 2.0)  # after top-k 3
    keep = np.cumsum(p3) - p3 < 0.6
    want = np.zeros(5)
    want[:3] = np.where(keep, p3, 0) / p3[keep].sum()
    np.testing.assert_allclose(warp(logits, cfg), want, rtol=1e-12)


# -- Good-Turing discounting ------------------------------------------------------------------
def _katz_gt(n):
    """Katz (1987) d_r for r = 1..K from the count-of-counts ``n[r]``, written out term by term."""
    k = GT_MAX
    big = (k + 1) * n[k + 1] / n[1]
    return {r: ((r + 1) * n[r + 1] / (n[r] * r) - big) / (1 - big) for r in range(1, k + 1)}


def test_good_turing_branch_matches_katz_formula():
    # a Zipf-like count-of-counts where every d_r lies in (0, 1): the Good-Turing branch
    n = {1: 1000, 2: 300, 3: 120, 4: 60, 5: 35, 6: 22}
    counts = np.concatenate([np.full(c, r) for r, c in n.items()] + [np.full(40, 9), np.full(10, 50)])
    disc = _Discount.fit(counts)
    assert disc.gt is not None, "expected the Good-Turing branch"
    want = _katz_gt(n)
    for r in range(1, GT_MAX + 1):
        assert 0 < want[r] < 1
        assert disc.gt[r] == pytest.approx(want[r], rel=1e-12)
    applied = disc.apply(np.asarray([1, 2, 5, 6, 9, 50]))
    assert applied.tolist() == pytest.approx([want[1], 2 * want[2], 5 * want[5], 6.0, 9.0, 50.0], rel=1e-12)


def test_absolute_discounting_when_good_turing_leaves_the_unit_interval():
    counts = np.concatenate([np.full(10, 1), np.full(30, 2), np.full(5, 3)])  # n_4 = n_5 = 0: GT undefined
    disc = _Discount.fit(counts)
    assert disc.gt is None
    assert disc.absolute == pytest.approx(10 / (10 + 2 * 30))
    assert disc.apply(np.asarray([1, 3])).tolist() == pytest.approx([1 - 10 / 70, 3 - 10 / 70])
