"""Constrained decoding: exact under speculation (greedy equal to the constrained baseline,
sampled law equal to the masked oracle's), every output valid, bad input refused."""

from __future__ import annotations

import json
import re
from collections import Counter

import jsonschema
import numpy as np
import pytest

from stagedx.errors import StagedxError
from stagedx.runtime import Generator, SamplingConfig, TreeConfig
from stagedx.runtime import constraint_tree as ct
from stagedx.runtime.constraint import Constraint
from stagedx.runtime.runner import FETCH_LOGITS, chain_mask
from stagedx.runtime.sampling import warp
from stagedx.runtime.shapes import CHEAP_DRAFT_TREES, FAN10, THREE_STAGE_TREES
from stagedx.runtime.tree import ancestor_mask
from tests._stats import law_pvalue as pvalue

SCHEMAS = [
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
            "kind": {"enum": ["file", "dir", "link"]},
            "ok": {"type": "boolean"},
        },
        "required": ["name", "age", "tags", "kind", "ok"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {"path": {"type": "string", "maxLength": 16}, "size": {"type": "number"}},
        "required": ["path", "size"],
        "additionalProperties": False,
    },
    {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"id": {"type": "integer"}, "done": {"type": "boolean"}},
            "required": ["id", "done"],
            "additionalProperties": False,
        },
        "minItems": 1,
        "maxItems": 3,
    },
]
PROMPTS = ["def add(a, b):\n    return", "import os\nimport sys\n\n\ndef main():\n", 'config = {"name": ']
VARIANTS = {
    "speculative": {"strategy": "speculative"},
    "staged": {"strategy": "staged"},
    "staged3": {"strategy": "staged", "tree": THREE_STAGE_TREES["greedy"]},
}


@pytest.fixture(scope="module")
def pair(pair_bundle):
    return Generator(pair_bundle, device="cpu", threads=1)


def test_bad_constraints_are_refused():
    with pytest.raises(StagedxError, match="invalid json schema"):
        Constraint.json_schema("{not json")
    with pytest.raises(StagedxError, match="invalid json schema"):
        Constraint.json_schema({"type": "nope"})
    with pytest.raises(StagedxError, match="invalid json schema"):
        Constraint.json_schema([1, 2])
    with pytest.raises(StagedxError, match="invalid regex"):
        Constraint.regex("(unclosed")
    with pytest.raises(StagedxError, match="invalid grammar"):
        Constraint.grammar("start: undefined_rule")
    with pytest.raises(StagedxError, match="constraint kind"):
        Constraint("xml", "<a/>")


def test_constraint_option_is_checked(pair):
    with pytest.raises(StagedxError, match="must be a Constraint"):
        pair.generate("x", constraint={"type": "object"})
    with pytest.raises(StagedxError, match="ignore_eos"):
        pair.generate("x", constraint=Constraint.json_object(), ignore_eos=True)


@pytest.mark.parametrize("schema", SCHEMAS, ids=["record", "file", "array"])
def test_constrained_greedy_equals_constrained_baseline_and_validates(pair, schema):
    c = Constraint.json_schema(schema)
    forced, calls = 0, Counter()
    for prompt in PROMPTS:
        base = pair.generate(prompt, max_new_tokens=120, strategy="baseline", constraint=c)
        assert base.finish_reason == "eos", base.text
        jsonschema.validate(json.loads(base.text), schema)
        assert base.stats.oracle_calls == base.stats.new_tokens  # one token per oracle call
        calls["baseline"] += base.stats.oracle_calls
        for name, kw in VARIANTS.items():
            res = pair.generate(prompt, max_new_tokens=120, constraint=c, **kw)
            assert res.tokens == base.tokens, f"{name} diverges from the constrained baseline"
            st = res.stats
            assert sum(st.accepted_by_stage.values()) == st.new_tokens
            assert st.grammar_masks > 0 and st.time_s["grammar"] > 0
            forced += st.accepted_by_stage["grammar"]
            calls[name] += st.oracle_calls
    assert forced > 0
    assert calls["staged"] < calls["baseline"]  # forced tokens ride for free


def test_stream_and_sampled_outputs_validate(pair):
    schema = SCHEMAS[0]
    c = Constraint.json_schema(schema)
    for seed in range(4):
        res = pair.generate(PROMPTS[seed % 3], max_new_tokens=150, sampling="topk:50", seed=seed, constraint=c)
        assert res.finish_reason == "eos"
        jsonschema.validate(json.loads(res.text), schema)
    stream = pair.stream(PROMPTS[0], max_new_tokens=150, constraint=c)
    text = "".join(stream)
    assert text == stream.result.text
    jsonschema.validate(json.loads(text), schema)


def test_regex_and_grammar(pair):
    res = pair.generate(PROMPTS[0], max_new_tokens=40, constraint=Constraint.regex(r"[a-z_]{1,10}\([a-z, ]{0,10}\)"))
    assert res.finish_reason == "eos"
    assert re.fullmatch(r"[a-z_]{1,10}\([a-z, ]{0,10}\)", res.text)
    lark = 'start: "answer: " ("yes" | "no")'
    res = pair.generate(PROMPTS[1], max_new_tokens=20, constraint=Constraint.grammar(lark), strategy="staged")
    assert res.text in ("answer: yes", "answer: no")
    assert res.stats.accepted_by_stage["grammar"] > 0  # "answer: " is forced


def test_tokens_straddling_grammar_boundaries(pair):
    """The vendored BPE merges quote and punctuation (``":``, ``",``...): such a token ends one
    grammar element and starts the next; the grammar must allow it, and the decode use it."""
    vocab = {pair.tokenizer.decode([i]): i for i in range(pair.vocab)}
    merged = [s for s in ('":', '",', '"}', '{"', '":"', '","') if s in vocab]
    assert merged, "the vendored tokenizer has no merged quote tokens"
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    guide = pair.grammar.guide(Constraint.json_schema(schema))
    path = pair.tokenizer.encode('{"a').tolist()
    assert guide.legal(path) == len(path)
    allowed = guide.allowed(path)
    for s in ('":', '":"'):
        if s in vocab:
            assert allowed[vocab[s]], f"{s!r} is refused after {{'a"
    assert not allowed[vocab["}"]] if "}" in vocab else True
    seen = Counter()
    for prompt in PROMPTS:
        res = pair.generate(prompt, max_new_tokens=120, constraint=Constraint.json_schema(SCHEMAS[0]))
        seen.update(pair.tokenizer.decode([t]) for t in res.tokens)
    assert any(seen[s] for s in merged)


# -- sampling is exact under a grammar ---------------------------------------------------
ALLOWED = "etaoin "  # the regex's characters: the first three tokens are always among them
REGEX = "[etaoin ]{4,8}"
SAMPLING = SamplingConfig.parse("topk:8")
N_DRAWS = 1500


def masked_joint3(gen: Generator, prompt: np.ndarray, allowed: np.ndarray) -> dict:
    """P(x1, x2, x3 | prompt) under the oracle masked to ``allowed`` and renormalised."""
    v = gen.vocab
    gen.oracle.truncate(0)
    n = len(prompt)
    gen.oracle.run(prompt[:-1], np.arange(n - 1), chain_mask(n - 1))
    gen.oracle.commit(np.arange(n - 1))
    root = gen.oracle.run(prompt[-1:], np.asarray([n - 1]), chain_mask(1), (FETCH_LOGITS,))
    mask = lambda z: warp(np.where(allowed, z, -np.inf), SAMPLING)  # noqa: E731
    p1 = mask(root.logits[0])
    law = {}
    for x1 in np.flatnonzero(p1 > 0):
        tokens = np.concatenate([prompt[-1:], [x1], np.arange(v)])
        parents = np.concatenate([[-1, 0], np.ones(v, int)])
        depth = np.concatenate([[0, 1], np.full(v, 2)])
        out = gen.oracle.run(tokens, n - 1 + depth, ancestor_mask(parents), (FETCH_LOGITS,))
        p2 = mask(out.logits[1])
        for x2 in np.flatnonzero(p2 > 0):
            p3 = mask(out.logits[2 + x2])
            for x3 in np.flatnonzero(p3 > 0):
                law[(int(x1), int(x2), int(x3))] = p1[x1] * p2[x2] * p3[x3]
    return law


@pytest.fixture(scope="module")
def small_vocab(small_vocab_bundle):
    gen = Generator(small_vocab_bundle, device="cpu", threads=1)
    prompt = gen.tokenizer.encode("def f")
    allowed = np.zeros(gen.vocab, bool)
    allowed[[int(gen.tokenizer.encode(c)[0]) for c in ALLOWED]] = True
    return gen, prompt, masked_joint3(gen, prompt, allowed)


def joint_counts(gen, prompt, strategy, seed0, tree=None, accepted=None, draws=N_DRAWS) -> Counter:
    counts = Counter()
    c = Constraint.regex(REGEX)
    for i in range(draws):
        res = gen.generate(
            prompt, max_new_tokens=3, sampling=SAMPLING, seed=seed0 + i, strategy=strategy, tree=tree, constraint=c
        )
        counts[tuple(res.tokens)] += 1
        if accepted is not None:
            accepted.update(res.stats.accepted_by_stage)
    return counts


DRAWN = TreeConfig(budget=12, max_depth=4, fanouts=FAN10, draft_calls=1, widths=(3, 2, 1), extra=2)


@pytest.mark.parametrize(
    "strategy,tree",
    [
        ("staged", DRAWN),  # drawn children + deterministic leaves
        ("staged", TreeConfig(budget=12, max_depth=4, fanouts=FAN10, draft_calls=1)),  # best-first, per-node rule
        ("staged", CHEAP_DRAFT_TREES["sample"]),
        ("speculative", None),  # a drawn chain
        ("baseline", None),
    ],
)
def test_constrained_sampling_law_with_and_without_speculation(small_vocab, strategy, tree):
    gen, prompt, law = small_vocab
    accepted = Counter()
    assert pvalue(joint_counts(gen, prompt, strategy, 2000, tree, accepted), law) > 1e-3
    if strategy != "baseline":
        assert accepted["draft"] + accepted["draft2"] > 0.02 * N_DRAWS


def test_negative_control_naive_masking_is_detected(small_vocab, monkeypatch):
    """Masking the oracle's p but trying drawn children against the draft's unmasked q (the
    naive fix) is biased: the same chi-square test rejects it."""
    gen, prompt, law = small_vocab
    monkeypatch.setattr(ct, "masked_q", lambda q, allowed: q)
    for strategy, tree in (("speculative", None), ("staged", DRAWN)):
        assert pvalue(joint_counts(gen, prompt, strategy, 7000, tree, draws=4000), law) < 1e-6
