"""The decode loop end to end on exported bundles: greedy exactness, sampling exactness,
finish rules, cache consistency and the no-PyTorch wall."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from stagedx.errors import StagedxError
from stagedx.runtime import Generator, SamplingConfig, TreeConfig
from stagedx.runtime.runner import FETCH_LOGITS, chain_mask
from stagedx.runtime.sampling import warp
from stagedx.runtime.shapes import CHEAP_DRAFT_TREES, FAN10, THREE_STAGE_TREES
from stagedx.runtime.tree import ancestor_mask
from tests._stats import law_pvalue as pvalue

PROMPTS = [
    "def add(a, b):\n    return",
    "import os\nimport sys\n\n\ndef main():\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n",
    "for i in range(10):\n    print(i",
    "x",
]


def top2_margin(gen: Generator, ids: list) -> float:
    """The oracle's top-1 minus top-2 logit after ``ids`` (fresh prefill)."""
    gen.oracle.truncate(0)
    out = gen.oracle.run(np.asarray(ids), np.arange(len(ids)), chain_mask(len(ids)))
    v = out.topk_values[-1]
    return float(v[0] - v[1])


# "staged" uses the default tree (on CPU: draft2 feeds the oracle), "staged3" forces all
# three stages (draft2 -> draft -> oracle).
VARIANTS = {
    "speculative": {"strategy": "speculative"},
    "staged": {"strategy": "staged"},
    "staged3": {"strategy": "staged", "tree": THREE_STAGE_TREES["greedy"]},
    "auto": {"strategy": "auto"},  # the online planner: a shape per round
}


def assert_same_greedy(gen: Generator, prompt, n: int, strategies=tuple(VARIANTS), tree=None) -> dict:
    """``tree``: the tree of every call whose variant names none."""
    base = gen.generate(prompt, max_new_tokens=n, strategy="baseline", ignore_eos=True, tree=tree)
    results = {"baseline": base}
    for strategy in strategies:
        res = gen.generate(prompt, max_new_tokens=n, ignore_eos=True, **{"tree": tree, **VARIANTS[strategy]})
        results[strategy] = res
        if res.tokens != base.tokens:
            i = next(k for k, (a, b) in enumerate(zip(res.tokens, base.tokens)) if a != b)
            ids = gen.tokenizer.encode(prompt).tolist() + base.tokens[:i]
            pytest.fail(
                f"{strategy} diverges from baseline at new token {i} "
                f"(oracle top-2 margin there {top2_margin(gen, ids):.3g}; < 1e-4 would be a tie)"
            )
    return results


@pytest.mark.parametrize("bundle", ["tiny_bundle", "self_draft_bundle"])
def test_greedy_identical_to_baseline(bundle, request):
    gen = Generator(request.getfixturevalue(bundle), device="cpu", threads=1)
    calls = Counter()
    toks = Counter()
    for prompt in PROMPTS:
        for name, res in assert_same_greedy(gen, prompt, 40).items():
            assert len(res.tokens) == 40 and res.finish_reason == "length"
            calls[name] += res.stats.oracle_calls
            toks[name] += res.stats.new_tokens
    assert calls["baseline"] == toks["baseline"]  # one token per oracle call
    if bundle == "self_draft_bundle":  # the draft is the oracle: long runs are accepted
        assert toks["staged3"] / calls["staged3"] > 2.0
        assert toks["speculative"] / calls["speculative"] > 2.0


def test_greedy_identical_on_the_vendored_pair(pair_bundle):
    gen = Generator(pair_bundle, device="cpu", threads=1)
    for prompt in PROMPTS[:3]:
        res = assert_same_greedy(gen, prompt, 48)
        for name in ("staged", "staged3"):
            st = res[name].stats
            assert sum(st.accepted_by_stage.values()) == st.new_tokens
            assert sum(st.accepted_by_depth) + st.accepted_by_stage["oracle"] == st.new_tokens
            assert st.tokens_per_oracle_call > 1.5  # the pair's greedy text repeats: runs are accepted


def test_budgets_and_depths_keep_greedy_exact(self_draft_bundle):
    gen = Generator(self_draft_bundle, device="cpu", threads=1)
    for tree in (
        TreeConfig(budget=1, max_depth=1, fanouts=FAN10, draft_calls=1),
        TreeConfig(budget=40, max_depth=12, fanouts=FAN10, draft_calls=5),
        TreeConfig(budget=8, max_depth=10, fanouts=(), draft_calls=4),
        TreeConfig(budget=0, max_depth=10, fanouts=FAN10, draft_calls=1),
        TreeConfig(budget=6, max_depth=10, fanouts=(3, 1), draft_calls=0),
        TreeConfig(budget=11, max_depth=10, fanouts=(), draft_calls=6, stop_p=0.2),  # dynamic depth
        TreeConfig(budget=11, max_depth=10, fanouts=(2, 1), draft_calls=8, stop_p=0.5),
    ):
        assert_same_greedy(gen, PROMPTS[2], 30, tree=tree)


# -- sampling is exact ------------------------------------------------------------------
SAMPLING = SamplingConfig.parse("topk:8")
N_DRAWS = 1500


def exact_joint3(gen: Generator, prompt: np.ndarray, eps: float = 1e-4) -> dict:
    """P(x1, x2, x3 | prompt) under the oracle, from one tree-shaped call per x1."""
    v = gen.vocab
    gen.oracle.truncate(0)
    n = len(prompt)
    gen.oracle.run(prompt[:-1], np.arange(n - 1), chain_mask(n - 1))
    gen.oracle.commit(np.arange(n - 1))
    root = gen.oracle.run(prompt[-1:], np.asarray([n - 1]), chain_mask(1), (FETCH_LOGITS,))
    p1 = warp(root.logits[0], SAMPLING)
    law = {}
    for x1 in np.flatnonzero(p1 > eps):
        # tree: root -> x1 -> every x2
        tokens = np.concatenate([prompt[-1:], [x1], np.arange(v)])
        parents = np.concatenate([[-1, 0], np.ones(v, int)])
        depth = np.concatenate([[0, 1], np.full(v, 2)])
        out = gen.oracle.run(tokens, n - 1 + depth, ancestor_mask(parents), (FETCH_LOGITS,))
        p = warp(out.logits, SAMPLING)
        for x2 in np.flatnonzero(p[1] > eps):
            for x3 in np.flatnonzero(p[2 + x2] > 0):
                law[(int(x1), int(x2), int(x3))] = p1[x1] * p[1, x2] * p[2 + x2, x3]
    return law


def joint_counts(
    gen: Generator,
    prompt: np.ndarray,
    strategy: str,
    seed0: int,
    accepted: Counter | None = None,
    tree: TreeConfig | None = None,
) -> Counter:
    counts = Counter()
    for i in range(N_DRAWS):
        res = gen.generate(
            prompt, max_new_tokens=3, sampling=SAMPLING, seed=seed0 + i, strategy=strategy, ignore_eos=True, tree=tree
        )
        counts[tuple(res.tokens)] += 1
        if accepted is not None:
            accepted.update(res.stats.accepted_by_stage)
    return counts


@pytest.fixture(scope="module")
def small_vocab(small_vocab_bundle):
    gen = Generator(small_vocab_bundle, device="cpu", threads=1)
    prompt = gen.tokenizer.encode("def f")
    return gen, prompt, exact_joint3(gen, prompt)


@pytest.mark.parametrize(
    "strategy,tree",
    [
        ("staged", TreeConfig(budget=12, max_depth=4, fanouts=FAN10, draft_calls=1)),  # draft2 -> draft -> oracle
        ("staged", TreeConfig(budget=6, max_depth=3, fanouts=(3, 2), draft_calls=0)),  # draft2 -> oracle
        (
            "staged",
            TreeConfig(budget=12, max_depth=4, fanouts=FAN10, draft_calls=1, widths=(3, 2, 1), extra=2),
        ),  # drawn + leaves
        ("staged", TreeConfig(budget=12, max_depth=4, fanouts=FAN10, draft_calls=1, widths=(1, 1, 1))),  # a drawn chain
        (
            "staged",
            TreeConfig(budget=12, max_depth=4, fanouts=(3, 2, 1), draft_calls=1, widths=(1, 1, 1), lookahead=3),
        ),  # a drawn chain, draft2 scored ahead by the draft (three stages)
        ("staged", CHEAP_DRAFT_TREES["sample"]),  # the untuned sampled default for a cheap draft
        ("speculative", None),
        ("baseline", None),
        ("auto", None),  # the planner's per-round choice, learning as the draws go
        ("auto", "per-node"),  # the same, with oracle calls timed as dear: it speculates
        ("auto", "drawn"),  # the same, a draft priced as cheap: drawn proposals allowed
    ],
)
def test_sampled_joint_law_matches_the_oracle(small_vocab, strategy, tree, monkeypatch):
    gen, prompt, law = small_vocab
    planned = isinstance(tree, str)
    if planned:
        monkeypatch.setattr(gen, "planner", speculating_planner(gen, drawn=tree == "drawn"))
        assert gen.planner.drawn == (tree == "drawn")
        tree = None
    accepted = Counter()
    assert pvalue(joint_counts(gen, prompt, strategy, 1000, accepted, tree), law) > 1e-3
    # speculated tokens were accepted: the accept path ran (plain auto speculates only where
    # its measured costs say it pays, rarely on this tiny model: the planners above force it)
    if strategy not in ("baseline", "auto") or planned:
        assert accepted["draft"] + accepted["draft2"] > 0.02 * N_DRAWS


def speculating_planner(gen: Generator, drawn: bool):
    """A planner for ``gen`` that speculates: every oracle call timed at 50 ms whatever its size
    (so tree nodes are nearly free), the draft priced as cheap (``drawn``: drawn proposals
    allowed for sampled requests) or as the vendored pair's."""
    from stagedx.runtime.planner import Planner, menu
    from stagedx.runtime.planner_cost import CostModel, prior_from

    weights = (3_116_000_000, 170_000_000) if drawn else (56_700_000, 10_600_000)
    menus = {m: menu(m, gen.draft2.active) for m in ("greedy", "sample")}
    planner = Planner(CostModel(prior_from(None, *weights)), menus)
    observe = planner.observe_timing
    planner.observe_timing = lambda mode, tokens, past, seconds: observe(mode, tokens, past, 0.05)
    return planner


def test_negative_control_biased_verifier_is_detected(small_vocab, monkeypatch):
    """SpecInfer's min(1, p/q) applied to FIXED children (q uniform over them) is biased;
    the same chi-square test must reject it."""
    from stagedx.runtime import accept, generator

    gen, prompt, law = small_vocab

    def biased_verify(proposal, out, sampling, rng):
        tree = proposal.tree
        node, path, emitted = 0, [0], []
        while True:
            p = warp(out.logits[node], sampling)
            kids = np.flatnonzero(tree.parents == node)
            for c in kids:
                if rng.random() < min(1.0, p[tree.tokens[c]] * len(kids)):
                    break
            else:
                emitted.append(int(rng.choice(len(p), p=p)))
                return accept.Verdict(np.asarray(path), np.asarray(emitted))
            emitted.append(int(tree.tokens[c]))
            path.append(int(c))
            node = int(c)

    monkeypatch.setattr(generator, "verify", biased_verify)
    tree = TreeConfig(budget=12, max_depth=4, fanouts=FAN10, draft_calls=1)
    assert pvalue(joint_counts(gen, prompt, "staged", 5000, tree=tree), law) < 1e-6


def test_negative_control_sampled_tree_without_residual_is_detected(small_vocab, monkeypatch):
    """Recursive rejection sampling that keeps p after a rejection (no residual) is biased."""
    from stagedx.runtime import accept

    gen, prompt, law = small_vocab

    def no_residual(parents, tokens, drawn, q_at, p_at, rng):
        node, path, emitted = 0, [0], []
        while True:
            p, q = p_at(node), q_at(node).copy() if drawn[parents == node].any() else None
            kids = np.flatnonzero(parents == node)
            for c in kids[drawn[kids]]:
                if rng.random() * q[tokens[c]] < p[tokens[c]]:
                    break
                q[tokens[c]] = 0
                q /= q.sum()
            else:
                emitted.append(int(rng.choice(len(p), p=p)))
                return accept.Verdict(np.asarray(path), np.asarray(emitted))
            emitted.append(int(tokens[c]))
            path.append(int(c))
            node = int(c)

    monkeypatch.setattr(accept, "verify_sampled", no_residual)
    tree = TreeConfig(budget=12, max_depth=4, fanouts=FAN10, draft_calls=1, widths=(3, 2, 1))
    assert pvalue(joint_counts(gen, prompt, "staged", 5000, tree=tree), law) < 1e-6


@pytest.mark.parametrize("cheap_draft", [False, True])
def test_auto_seeds_reproduce_whatever_the_timings(pair_bundle, cheap_draft):
    """A seeded sampled request gives the same text on every call, whatever timings the
    Generator measured before or during it. Per-node plans (the vendored pair): the text is
    the baseline's. Drawn plans (a draft priced as cheap): the same choices every time."""
    from stagedx.runtime.planner import Planner, menu
    from stagedx.runtime.planner_cost import CostModel, prior_from

    runs = []
    for oracle_ms in (None, lambda t: 1.0 + 0.01 * t, lambda t: 1.0 + 5.0 * t):
        gen = Generator(pair_bundle, device="cpu", threads=1)
        if cheap_draft:  # as at GPT-2-L cost: drawn proposals allowed
            menus = {m: menu(m, gen.draft2.active) for m in ("greedy", "sample")}
            gen.planner = Planner(CostModel(prior_from(None, 3_116_000_000, 170_000_000)), menus)
        assert gen.planner.drawn == cheap_draft
        if oracle_ms is not None:  # injected timings, as if measured on another machine
            for t in range(1, 40):
                gen.planner.costs.observe_oracle(t, 20, oracle_ms(t) * 1e-3)
        for _ in range(2):  # the second call also sees the first call's live timings
            res = gen.generate(PROMPTS[2], max_new_tokens=40, sampling="topk:20", seed=3, ignore_eos=True)
            assert res.stats.strategy == "auto" and len(res.tokens) == 40
            runs.append((res.tokens, res.stats.planner.choices))
    assert all(r[0] == runs[0][0] for r in runs)
    if cheap_draft:
        assert all(r[1] == runs[0][1] for r in runs)
        assert any(k.startswith(("chain:", "drawn")) for k in runs[0][1])  # drawn proposals ran
    else:
        base = gen.generate(
            PROMPTS[2], max_new_tokens=40, sampling="topk:20", seed=3, strategy="baseline", ignore_eos=True
        )
        assert runs[0][0] == base.tokens


def test_an_explicit_tree_runs_fixed_under_auto(tiny_bundle):
    gen = Generator(tiny_bundle, device="cpu", threads=1)
    fixed = gen.generate(PROMPTS[0], max_new_tokens=8, tree=TreeConfig(budget=4, max_depth=4), ignore_eos=True)
    assert fixed.stats.strategy == "staged" and fixed.stats.planner is None
    planned = gen.generate(PROMPTS[0], max_new_tokens=8, ignore_eos=True)
    assert planned.stats.strategy == "auto" and sum(planned.stats.planner.choices.values()) == planned.stats.rounds
    assert (
        Generator(tiny_bundle, device="cpu", threads=1, tree_budget=3).generate(PROMPTS[0]).stats.strategy == "staged"
    )


def test_same_seed_same_output(tiny_bundle):
    gen = Generator(tiny_bundle, device="cpu", threads=1)
    a = gen.generate(PROMPTS[0], max_new_tokens=24, sampling="topp:0.9", seed=7, ignore_eos=True)
    b = gen.generate(PROMPTS[0], max_new_tokens=24, sampling="topp:0.9", seed=7, ignore_eos=True)
    assert a.tokens == b.tokens and len(a.tokens) == 24


# -- finish rules keep the caches consistent ----------------------------------------------
def assert_caches_consistent(gen: Generator, prompt, res) -> None:
    """oracle KV == all committed tokens but the pending one, and a next call after the
    commits gives the same logits as a fresh prefill of the whole sequence."""
    ids = gen.tokenizer.encode(prompt).tolist() + res.tokens
    if res.finish_reason == "eos":
        ids.append(gen.eos)
    n = len(ids)
    assert gen.oracle.length == n - 1
    assert gen.draft.length <= n - 1
    step = gen.oracle.run(np.asarray(ids[-1:]), np.asarray([n - 1]), chain_mask(1), (FETCH_LOGITS,))
    gen.oracle.truncate(0)
    fresh = gen.oracle.run(np.asarray(ids), np.arange(n), chain_mask(n), (FETCH_LOGITS,))
    np.testing.assert_allclose(step.logits[0], fresh.logits[-1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("max_new", [1, 5, 7])
@pytest.mark.parametrize("strategy", ["staged", "auto"])
def test_max_new_tokens_inside_an_accepted_run(self_draft_bundle, max_new, strategy):
    gen = Generator(self_draft_bundle, device="cpu", threads=1, strategy=strategy)
    res = gen.generate(PROMPTS[1], max_new_tokens=max_new, ignore_eos=True)
    assert len(res.tokens) == max_new and res.finish_reason == "length"
    assert res.stats.new_tokens == max_new
    assert sum(res.stats.accepted_by_stage.values()) == max_new
    assert_caches_consistent(gen, PROMPTS[1], res)


def test_eos_inside_an_accepted_run(self_draft_bundle):
    gen = Generator(self_draft_bundle, device="cpu", threads=1)
    full = gen.generate(PROMPTS[1], max_new_tokens=12, ignore_eos=True)
    gen.eos = full.tokens[3]  # pretend the 4th greedy token is EOS: it lands inside a run
    res = gen.generate(PROMPTS[1], max_new_tokens=12)
    assert res.finish_reason == "eos"
    assert res.tokens == full.tokens[: full.tokens.index(gen.eos)]
    assert_caches_consistent(gen, PROMPTS[1], res)


def test_stop_string(self_draft_bundle):
    gen = Generator(self_draft_bundle, device="cpu", threads=1)
    full = gen.generate(PROMPTS[0], max_new_tokens=16, ignore_eos=True)
    stop = full.text[5:8]
    res = gen.generate(PROMPTS[0], max_new_tokens=16, stop=[stop], ignore_eos=True)
    assert res.finish_reason == "stop"
    assert res.text == full.text[: full.text.index(stop)]
    assert_caches_consistent(gen, PROMPTS[0], res)


def test_stream_equals_generate(tiny_bundle):
    gen = Generator(tiny_bundle, device="cpu", threads=1)
    res = gen.generate(PROMPTS[2], max_new_tokens=30, ignore_eos=True)
    stream = gen.stream(PROMPTS[2], max_new_tokens=30, ignore_eos=True)
    with pytest.raises(StagedxError, match="not finished"):
        stream.result  # noqa: B018 - before the end there is no result
    pieces = list(stream)
    assert "".join(pieces) == res.text and len(pieces) > 1
    assert stream.result.tokens == res.tokens and stream.result.text == res.text
    assert list(stream) == []  # exhausted, the result stays
    assert stream.result.tokens == res.tokens


def test_a_stream_closed_early_has_no_result_and_frees_the_generator(tiny_bundle):
    gen = Generator(tiny_bundle, device="cpu", threads=1)
    want = gen.generate(PROMPTS[0], max_new_tokens=6, ignore_eos=True).tokens
    with gen.stream(PROMPTS[2], max_new_tokens=30, ignore_eos=True) as stream:
        next(stream)
    with pytest.raises(StagedxError, match="not finished"):
        stream.result  # noqa: B018
    assert gen.generate(PROMPTS[0], max_new_tokens=6, ignore_eos=True).tokens == want


def test_options_are_keyword_only_and_checked_when_the_stream_is_made(tiny_bundle):
    gen = Generator(tiny_bundle, device="cpu", threads=1)
    with pytest.raises(TypeError):
        gen.generate(PROMPTS[0], 4)
    with pytest.raises(TypeError):
        gen.stream(PROMPTS[0], 4)
    with pytest.raises(StagedxError, match="max_new_tokens"):
        gen.stream(PROMPTS[0], max_new_tokens=0)  # before any iteration


def test_a_closed_generator_released_its_runners_and_refuses_calls(tiny_bundle, monkeypatch):
    closed = []
    with Generator(tiny_bundle, device="cpu", threads=1) as gen:
        for runner in (gen.oracle, gen.draft):
            monkeypatch.setattr(runner, "close", lambda close=runner.close, r=runner: (closed.append(r), close()))
        assert len(gen.generate(PROMPTS[0], max_new_tokens=4, ignore_eos=True).tokens) == 4
    assert closed == [gen.oracle, gen.draft]
    gen.close()  # idempotent
    assert len(closed) == 2
    with pytest.raises(StagedxError, match="closed"):
        gen.generate(PROMPTS[0], max_new_tokens=4)
    with pytest.raises(StagedxError, match="closed"):
        list(gen.stream(PROMPTS[0], max_new_tokens=4))


def test_the_tree_is_a_per_call_option(tiny_bundle):
    gen = Generator(tiny_bundle, device="cpu", threads=1)
    with pytest.raises(AttributeError):
        gen.tree = TreeConfig()  # read-only: pass tree= to the call
    tree = TreeConfig(budget=3, max_depth=5, fanouts=(1, 1, 1), draft_calls=1)
    res = gen.generate(PROMPTS[0], max_new_tokens=8, ignore_eos=True, tree=tree)
    assert len(res.stats.accepted_by_depth) == tree.max_depth + 1  # this call's tree, not the default
    assert gen.tree is None and gen.tree_for(SamplingConfig.parse("greedy")) != tree


def test_stream_drops_eos_and_honours_stop_strings(self_draft_bundle):
    gen = Generator(self_draft_bundle, device="cpu", threads=1)
    full = gen.generate(PROMPTS[1], max_new_tokens=12, ignore_eos=True)
    gen.eos = full.tokens[3]  # EOS inside an accepted run
    res = gen.generate(PROMPTS[1], max_new_tokens=12)
    assert "".join(gen.stream(PROMPTS[1], max_new_tokens=12)) == res.text and res.finish_reason == "eos"
    gen.eos = 0
    long = gen.generate(PROMPTS[0], max_new_tokens=24, ignore_eos=True)
    stop = long.text[9:13]
    res = gen.generate(PROMPTS[0], max_new_tokens=24, stop=[stop], ignore_eos=True)
    streamed = "".join(gen.stream(PROMPTS[0], max_new_tokens=24, stop=[stop], ignore_eos=True))
    assert streamed == res.text and stop not in streamed and res.finish_reason == "stop"


def test_trees_fit_the_oracle_cache_near_the_context_limit(self_draft_bundle):
    """A wide tree near the end must not ask the oracle for more KV rows than it has (the
    TensorRT runner writes every new row into its cache)."""
    gen = Generator(self_draft_bundle, device="cpu", threads=1, max_context=48)
    run = gen.oracle.run

    def checked_run(tokens, positions, mask, fetch=("topk",)):
        assert gen.oracle.length + len(tokens) <= gen.context_limit
        return run(tokens, positions, mask, fetch)

    gen.oracle.run = checked_run
    draft_run = gen.draft.run

    def checked_draft_run(tokens, positions, mask, fetch=("topk",)):
        assert gen.draft.length + len(tokens) <= gen.draft.max_context
        return draft_run(tokens, positions, mask, fetch)

    gen.draft.run = checked_draft_run
    lookahead = TreeConfig(budget=12, max_depth=12, fanouts=(8, 4, 2, 1), widths=(1,) * 12, lookahead=4, extra=2)
    for tree, sampling in (
        (TreeConfig(budget=40, max_depth=12, fanouts=FAN10, draft_calls=2), "greedy"),
        (THREE_STAGE_TREES["greedy"], "greedy"),
        (THREE_STAGE_TREES["sample"], "topk:20"),
        (lookahead, "topk:20"),
    ):
        res = gen.generate(PROMPTS[2], max_new_tokens=100, ignore_eos=True, tree=tree, sampling=sampling, seed=1)
        assert res.finish_reason == "context"


def test_context_limit_stops_cleanly(tiny_bundle):
    gen = Generator(tiny_bundle, device="cpu", threads=1, max_context=40)
    res = gen.generate(PROMPTS[0], max_new_tokens=100, ignore_eos=True)
    assert res.finish_reason == "context"
    assert res.prompt_tokens + len(res.tokens) == gen.context_limit + 1
    with pytest.raises(StagedxError, match="more than the context"):
        gen.generate("x " * 60, max_new_tokens=4)
    assert gen.generate("x " * 60, max_new_tokens=4, truncate=True, ignore_eos=True).tokens


def test_bad_requests(tiny_bundle):
    gen = Generator(tiny_bundle, device="cpu", threads=1)
    with pytest.raises(StagedxError, match="empty prompt"):
        gen.generate("", max_new_tokens=4)
    with pytest.raises(StagedxError, match="unknown strategy"):
        gen.generate("x", max_new_tokens=4, strategy="magic")
    with pytest.raises(StagedxError, match="unknown sampling"):
        gen.generate("x", max_new_tokens=4, sampling="topk:-1")


# -- the wall: the runtime never imports PyTorch -------------------------------------------
def test_runtime_generates_without_torch(tiny_bundle):
    code = (
        "import sys, json\n"
        "from stagedx.runtime import Constraint, Generator\n"
        f"gen = Generator({str(tiny_bundle)!r}, device='cpu', threads=1)\n"
        "gen.generate('x =', max_new_tokens=8, constraint=Constraint.json_object())\n"  # llguidance: no torch
        "res = gen.generate('def f(x):', max_new_tokens=8, ignore_eos=True)\n"
        "mods = [m for m in ('torch', 'transformers', 'onnx') if m in sys.modules]\n"
        "print(json.dumps({'n': len(res.tokens), 'mods': mods}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"n": 8, "mods": []}


def test_tree_budget_applies_to_every_mode(tiny_bundle):
    gen = Generator(tiny_bundle, device="cpu", threads=1, tree_budget=5)
    for spec in ("greedy", "topk:50"):
        assert gen.tree_for(SamplingConfig.parse(spec)).budget == 5
    res = gen.generate(PROMPTS[0], max_new_tokens=10, ignore_eos=True)
    assert len(res.tokens) == 10


def test_speculative_chain_length_is_spec_k_whatever_the_tree_depth(self_draft_bundle):
    gen = Generator(self_draft_bundle, device="cpu", threads=1)
    res = gen.generate(
        PROMPTS[1], max_new_tokens=30, ignore_eos=True, strategy="speculative", tree=TreeConfig(max_depth=2, spec_k=5)
    )
    assert res.stats.draft_calls == 5 * res.stats.oracle_calls
    assert res.stats.accepted_by_depth[4] > 0  # the oracle accepted 5-token chains


def test_without_draft2_staged_uses_the_draft_at_least_as_well_as_speculative(pair_bundle, tmp_path):
    """A bundle exported with ``--draft2 none``: the default staged tree grows from the draft
    (draft2-only trees would propose nothing) and accepts at least what speculative does."""
    import shutil

    bundle = tmp_path / "none"
    shutil.copytree(pair_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["draft2"] = {"kind": "none", "ngram": None}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    gen = Generator(bundle, device="cpu", threads=1)
    for sampling in ("greedy", "topk:50"):
        calls = Counter()
        for i, prompt in enumerate(PROMPTS[:3]):
            for strategy in ("speculative", "staged"):
                res = gen.generate(
                    prompt, max_new_tokens=48, sampling=sampling, seed=i, strategy=strategy, ignore_eos=True
                )
                calls[strategy] += res.stats.oracle_calls
        assert calls["staged"] <= calls["speculative"] * 1.1, (sampling, calls)
    res = assert_same_greedy(gen, PROMPTS[2], 40, ("staged",))["staged"]
    assert res.stats.tokens_per_oracle_call > 1.5 and res.stats.draft_calls > 0
