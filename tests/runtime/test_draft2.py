"""draft2 runtime: prompt lookup, the n-gram / both / none kinds, and propose_tree's shape."""

from __future__ import annotations

import functools
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedx.errors import StagedxError
from stagedx.manifest import Draft2Entry, NgramEntry
from stagedx.runtime.draft2 import Draft2, NgramModel, PromptLookup

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "models" / "stdlib-code-pair" / "oracle" / "tokenizer.json"
CORPUS = "def f(x):\n    return x + 1\n\n\nclass A:\n    def g(self, y):\n        return self.y\n"


@functools.lru_cache(maxsize=1)
def _fitted() -> tuple[Path, NgramEntry]:
    """A small n-gram model, fitted once per session (hypothesis dislikes function fixtures)."""
    from stagedx.export.ngram import NgramFitConfig, fit_ngram

    folder = Path(tempfile.mkdtemp(prefix="stagedx-draft2-"))
    (folder / "c.py").write_text(CORPUS * 5)
    entry = fit_ngram([folder / "c.py"], TOKENIZER, folder / "draft2_ngram.npz", NgramFitConfig(show_progress=False))
    return folder, entry


def _model() -> NgramModel:
    folder, entry = _fitted()
    return NgramModel.load(folder / entry.file)


def test_prompt_lookup_continues_the_longest_repeated_ngram():
    # "7" alone was followed by 9 and 8, but the longest match "5 6 7" was followed by 8 only
    h = np.array([5, 6, 7, 8, 1, 7, 9, 2, 5, 6, 7], np.int64)
    ids, scores = PromptLookup().successors(h, 4)
    assert ids.tolist() == [8] and scores.tolist() == [1.0]
    # with only single-token matches allowed, both followers of 7 come back, the latest first
    ids, scores = PromptLookup(max_ngram=1).successors(h, 4)
    assert ids.tolist() == [9, 8] and scores.tolist() == [0.5, 0.5]


def test_prompt_lookup_ranks_by_frequency_then_recency():
    h = np.array([3, 1, 3, 2, 3, 1, 3, 4, 3], np.int64)  # 3 -> 1, 2, 1, 4
    ids, scores = PromptLookup(max_ngram=1).successors(h, 3)
    assert ids.tolist() == [1, 4, 2]
    np.testing.assert_allclose(scores, [0.5, 0.25, 0.25])
    assert PromptLookup(max_ngram=1).successors(h, 1)[0].tolist() == [1]


def test_prompt_lookup_without_a_match_is_empty():
    for h, lookup in (
        ([1, 2, 3, 4], PromptLookup()),
        ([4, 1, 2, 4, 3, 4], PromptLookup(min_ngram=2)),
        ([7], PromptLookup()),
    ):
        ids, scores = lookup.successors(np.array(h, np.int64), 5)
        assert ids.size == 0 and scores.size == 0 and ids.dtype == np.int64


def _reference_lookup(s: list, k: int, max_ngram: int = 3, min_ngram: int = 1, cap: int = 64):
    """Brute force: scan for the longest earlier occurrence of the suffix n-gram."""
    for n in range(min(max_ngram, len(s) - 1), min_ngram - 1, -1):
        ends = [j for j in range(n - 1, len(s) - 1) if s[j - n + 1 : j + 1] == s[len(s) - n :]][-cap:]
        if ends:
            follow = [s[j + 1] for j in ends]
            best = sorted(
                set(follow), key=lambda t: (-follow.count(t), -max(i for i, f in enumerate(follow) if f == t))
            )
            return best[:k], [follow.count(t) / len(follow) for t in best[:k]]
    return [], []


@settings(max_examples=150, deadline=None)
@given(
    history=st.lists(st.integers(0, 6), min_size=0, max_size=150),
    path=st.lists(st.integers(0, 6), max_size=5),
    cut=st.integers(0, 150),
    k=st.integers(1, 6),
)
def test_prompt_lookup_matches_brute_force(history, path, cut, k):
    lookup = PromptLookup()
    # index a prefix first, then the full history (incremental), then with a speculative path
    lookup.successors(np.array(history[:cut], np.int64), k)
    for seq, extra in ((history, []), (history, path)):
        ids, scores = lookup.continuations(np.array(seq, np.int64), extra, k)
        want_ids, want_scores = _reference_lookup(list(seq) + list(extra), k)
        assert ids.tolist() == want_ids
        np.testing.assert_allclose(scores, want_scores, rtol=1e-6)
    # a different history (a new prompt) must not reuse the stale index
    other = [(t + 1) % 7 for t in history]
    ids, _ = lookup.successors(np.array(other, np.int64), k)
    assert ids.tolist() == _reference_lookup(other, k)[0]


def test_none_proposes_nothing():
    tokens, parents = Draft2("none").propose_tree(np.arange(50, dtype=np.int64))
    assert tokens.shape == (0,) and parents.shape == (0,)
    assert tokens.dtype == np.int64 and parents.dtype == np.int32
    assert Draft2("none").successors(np.arange(5), 3)[0].size == 0


def test_ngram_tree_follows_the_most_likely_branch():
    model = _model()
    draft2 = Draft2("ngram", model)
    history = np.array([0, 319, 288], np.int64)
    tokens, parents = draft2.propose_tree(history, (5, 3, 2))
    level0, _ = model.successors(history, 5)
    level1, _ = model.successors([history[-1], level0[0]], 3)
    level2, _ = model.successors([level0[0], level1[0]], 2)
    assert tokens.tolist() == level0.tolist() + level1.tolist() + level2.tolist()
    assert parents.tolist() == [-1] * 5 + [0] * 3 + [5] * 2


def test_both_puts_prompt_lookup_first_then_new_ngram_candidates():
    model = _model()
    history = np.array([11, 12, 13, 99, 11, 12], np.int64)  # prompt lookup says 13
    ids, scores = Draft2("both", model).successors(history, 6)
    ng, ng_p = model.successors(history, 6)
    assert ids[0] == 13 and scores[0] == 1.0
    expect = [13] + [t for t in ng.tolist() if t != 13]
    assert ids.tolist() == expect[:6]


def test_from_manifest_and_bad_kinds():
    folder, entry = _fitted()
    manifest = SimpleNamespace(draft2=Draft2Entry(kind="both", ngram=entry))
    d = Draft2.from_manifest(folder, manifest)
    assert d.kind == "both" and d.ngram is not None and d.lookup is not None
    pl = Draft2.from_manifest(folder, SimpleNamespace(draft2=Draft2Entry(kind="prompt-lookup")))
    assert pl.ngram is None and pl.lookup is not None
    with pytest.raises(StagedxError, match="names no n-gram file"):
        Draft2.from_manifest(folder, SimpleNamespace(draft2=Draft2Entry(kind="ngram")))
    with pytest.raises(StagedxError, match="unknown draft2 kind"):
        Draft2("trigram")
    with pytest.raises(StagedxError, match="not found"):
        NgramModel.load(folder / "missing.npz")


def test_runtime_module_imports_no_torch_nor_export():
    code = (
        "import sys, stagedx.runtime.draft2; "
        "bad = [m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'transformers') or m.startswith('stagedx.export')]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["ngram", "prompt-lookup", "both"]),
    history=st.lists(st.integers(0, 40), min_size=0, max_size=60).map(lambda h: np.array(h, np.int64)),
    fanouts=st.lists(st.integers(0, 12), min_size=0, max_size=7).map(tuple),
)
def test_propose_tree_invariants(kind, history, fanouts):
    draft2 = Draft2(kind, _model() if kind != "prompt-lookup" else None)
    tokens, parents = draft2.propose_tree(history, fanouts)
    assert tokens.dtype == np.int64 and parents.dtype == np.int32 and len(tokens) == len(parents)
    n = len(tokens)
    depth = np.zeros(n, np.int64)
    children: dict[int, list[int]] = {}
    for i in range(n):
        p = int(parents[i])
        assert -1 <= p < i  # parents before children
        depth[i] = 0 if p < 0 else depth[p] + 1
        children.setdefault(p, []).append(int(tokens[i]))
    for p, kids in children.items():
        assert len(kids) == len(set(kids))  # no duplicate siblings
        level = 0 if p < 0 else depth[p] + 1
        assert len(kids) <= fanouts[level]  # fan-out limit of that level
    # one expanded node per level: the first (most likely) node of the level above
    for p in children:
        if p >= 0:
            assert p == int(np.flatnonzero(depth == depth[p])[0])
    assert n <= sum(fanouts) and (n == 0 or depth.max() < len(fanouts))
    if kind != "prompt-lookup" and fanouts and fanouts[0] > 0:
        assert n > 0  # the n-gram always knows a successor (at worst the unigram's)
