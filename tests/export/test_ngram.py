"""Katz trigram fit: probabilities sum to 1 everywhere, top lists match the full distribution."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from stagedx.errors import StagedxError
from stagedx.export.corpus import resolve_corpus, stdlib_root
from stagedx.export.ngram import NgramFitConfig, _Discount, fit_ngram
from stagedx.files import sha256_file
from stagedx.runtime.draft2 import NgramModel

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "models" / "stdlib-code-pair" / "oracle" / "tokenizer.json"
QUIET = NgramFitConfig(show_progress=False)

SYNTHETIC = [
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
    "import os\nimport sys\n\nfor i in range(10):\n    print(i, os.sep)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "x = [i * i for i in range(100) if i % 2]\nprint(sum(x))\n" * 3,
]


def _write_corpus(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(SYNTHETIC):
        (folder / f"mod{i}.py").write_text(text)
    (folder / "notes.txt").write_text("not python, skipped when the folder is given\n")
    return resolve_corpus([folder])


def _stdlib_files() -> list[Path]:
    root = stdlib_root()
    return [root / "json" / name for name in ("decoder.py", "encoder.py", "scanner.py")]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    files = _write_corpus(folder)
    out = folder / "draft2_ngram.npz"
    entry = fit_ngram(files, TOKENIZER, out, QUIET)
    return files, out, entry, NgramModel.load(out)


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "ngram.npz"
    entry = fit_ngram(_stdlib_files(), TOKENIZER, out, NgramFitConfig(show_progress=False, topk=8))
    return entry, NgramModel.load(out)


def _contexts(model: NgramModel, rng: np.random.Generator, n: int = 60):
    """Seen trigram contexts, seen-bigram-only contexts and fully unseen ones."""
    v = model.vocab_size
    tri = [(int(c // v), int(c % v)) for c in rng.choice(model.tri.keys, min(n, len(model.tri.keys)), replace=False)]
    tri_keys = set(model.tri.keys.tolist())
    bi_only = []
    for b in model.bi.keys[:n].tolist():
        a = next(a for a in range(v) if a * v + b not in tri_keys)
        bi_only.append((a, b))
    unseen_b = np.setdiff1d(np.arange(v), model.bi.keys)[:n]
    unseen = [(int(rng.integers(v)), int(b)) for b in unseen_b]
    assert tri and bi_only and unseen
    return {"trigram": tri, "bigram-only": bi_only, "unseen": unseen}


@pytest.mark.parametrize("which", ["synthetic", "real"])
def test_backoff_distribution_sums_to_one(which, request):
    model = request.getfixturevalue(which)[-1]
    for kind, contexts in _contexts(model, np.random.default_rng(0)).items():
        for ctx in contexts + [(ctx[1],) for ctx in contexts[:5]]:
            p = model.distribution(ctx)
            assert p.shape == (model.vocab_size,)
            assert p.min() >= 0, (kind, ctx)
            assert abs(p.sum() - 1.0) < 1e-6, (kind, ctx, p.sum())
    assert abs(model.distribution(()).sum() - 1.0) < 1e-12


@pytest.mark.parametrize("which", ["synthetic", "real"])
def test_top_lists_equal_argsort_of_full_distribution(which, request):
    model = request.getfixturevalue(which)[-1]
    k = model.topk
    groups = _contexts(model, np.random.default_rng(1))
    for contexts in [*groups.values(), [()]]:
        for ctx in contexts:
            p = model.distribution(ctx)
            ids, probs = model.successors(ctx, k)
            assert ids.dtype == np.int64 and len(ids) == k and len(set(ids.tolist())) == k
            expect = np.argsort(-p, kind="stable")[:k]
            np.testing.assert_allclose(probs, p[expect], rtol=1e-6)  # same values, best first
            np.testing.assert_allclose(p[ids], probs, rtol=1e-6)  # listed ids carry them
            # the same ids, up to ties with the k-th probability at the cut
            differ = set(ids.tolist()) ^ set(expect.tolist())
            assert all(np.isclose(p[i], p[expect[-1]], rtol=1e-6) for i in differ)


def test_backed_off_bigram_can_enter_a_seen_trigram_top_list(tmp_path):
    # " self" is followed by "." 100 times; the trigram context (" yield", " self") was seen
    # once, followed by "(": the back-off must still rank "." at the top of its list
    (tmp_path / "c.txt").write_text(" return self.x\n" * 100 + " yield self(\n")
    fit_ngram([tmp_path / "c.txt"], TOKENIZER, tmp_path / "m.npz", QUIET)
    model = NgramModel.load(tmp_path / "m.npz")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    ret, self_, dot = tok.encode(" return self.", add_special_tokens=False).ids
    yld, self2, paren = tok.encode(" yield self(", add_special_tokens=False).ids
    assert self_ == self2
    row = model.tri.find(yld * model.vocab_size + self_)
    assert row >= 0, "the trigram context must be stored"
    seen_after = model.tri.ids[model.tri.ptr[row] : model.tri.ptr[row + 1]].tolist()
    assert seen_after == [paren]
    top, probs = model.successors([yld, self_], 2)
    assert set(top.tolist()) == {dot, paren} and probs[0] >= probs[1]


def test_stored_probabilities_match_independent_counts(real):
    entry, model = real
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    stream = [0]
    for f in _stdlib_files():
        stream += tok.encode(f.read_text(), add_special_tokens=False).ids + [0]
    assert entry.n_tokens == len(stream)
    tri = Counter(zip(stream, stream[1:], stream[2:]))
    ctx_total = Counter(zip(stream, stream[1:-1]))
    disc = _Discount.fit(np.array(list(tri.values())))
    v = model.vocab_size
    for row in range(0, len(model.tri.keys), max(1, len(model.tri.keys) // 50)):
        a, b = divmod(int(model.tri.keys[row]), v)
        lo, hi = model.tri.ptr[row], model.tri.ptr[row + 1]
        for w, p in zip(model.tri.ids[lo:hi].tolist(), model.tri.p[lo:hi].tolist()):
            c = tri[(a, b, w)]
            assert c > 0
            expect = disc.apply(np.array([c]))[0] / ctx_total[(a, b)]
            assert p == pytest.approx(expect, rel=1e-6)


def test_size_cap_keeps_most_frequent_contexts(tmp_path):
    files = _write_corpus(tmp_path / "c")
    fit_ngram(files, TOKENIZER, tmp_path / "capped.npz", NgramFitConfig(show_progress=False, max_contexts=40))
    fit_ngram(files, TOKENIZER, tmp_path / "full.npz", QUIET)
    capped, full = NgramModel.load(tmp_path / "capped.npz"), NgramModel.load(tmp_path / "full.npz")
    assert len(capped.bi.keys) + len(capped.tri.keys) == 40 < len(full.bi.keys) + len(full.tri.keys)
    v = capped.vocab_size
    assert set((capped.tri.keys % v).tolist()) <= set(capped.bi.keys.tolist())

    # the kept contexts are the most frequent ones (counted independently here)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(TOKENIZER))
    stream = [0]
    for f in files:
        stream += tok.encode(f.read_text(), add_special_tokens=False).ids + [0]
    freq = Counter(stream[:-1]) + Counter((a * v + b) + v for a, b in zip(stream, stream[1:-1]))
    kept = set(capped.bi.keys.tolist()) | {k + v for k in capped.tri.keys.tolist()}
    assert min(freq[k] for k in kept) >= max(c for k, c in freq.items() if k not in kept)

    # dropped contexts back off and still give proper distributions and top lists
    for key in full.tri.keys.tolist():
        ctx = (key // v, key % v)
        p = capped.distribution(ctx)
        assert abs(p.sum() - 1) < 1e-6
        ids, probs = capped.successors(ctx, 5)
        np.testing.assert_allclose(p[ids], probs, rtol=1e-6)
        np.testing.assert_allclose(probs, np.sort(p)[::-1][:5], rtol=1e-6)


def test_npz_is_plain_arrays_and_entry_is_filled(synthetic):
    files, out, entry, model = synthetic
    with np.load(out, allow_pickle=False) as z:
        assert all(z[name].dtype != object for name in z.files)
        assert int(z["order"]) == 3
    assert entry.file == out.name and entry.sha256 == sha256_file(out)
    assert entry.order == 3 and entry.topk == 16 and entry.n_tokens > 100
    assert [f.name for f in files] == [f"mod{i}.py" for i in range(len(SYNTHETIC))]  # no notes.txt


def test_resolve_corpus_exclusion_and_explicit_files(tmp_path):
    files = _write_corpus(tmp_path / "pkg")
    kept = resolve_corpus([tmp_path / "pkg", tmp_path / "pkg" / "notes.txt"], exclude=["pkg/mod1.py"])
    names = [f.name for f in kept]
    assert "mod1.py" not in names and "notes.txt" in names and len(names) == len(files)
    # the fit config's exclude list drops the same file
    cfg = NgramFitConfig(show_progress=False, exclude=("pkg/mod1.py",))
    with_excl = fit_ngram(files, TOKENIZER, tmp_path / "a.npz", cfg)
    without = fit_ngram([f for f in files if f.name != "mod1.py"], TOKENIZER, tmp_path / "b.npz", QUIET)
    assert with_excl.n_tokens == without.n_tokens and with_excl.sha256 == without.sha256


def test_resolve_stdlib_leaves_out_site_packages_and_val_files():
    all_files = resolve_corpus(["stdlib"])
    assert all("site-packages" not in f.parts for f in all_files)
    assert any(f.name == "decoder.py" and f.parent.name == "json" for f in all_files)
    kept = resolve_corpus(["stdlib"], exclude=["json/decoder.py", "site-packages/x/y.py"])
    assert len(kept) == len(all_files) - 1
    assert not any(f.name == "decoder.py" and f.parent.name == "json" for f in kept)


def test_missing_corpus_path_is_one_line_error(tmp_path):
    with pytest.raises(StagedxError, match="corpus path not found") as err:
        resolve_corpus([tmp_path / "nope"])
    assert "\n" not in str(err.value)
    with pytest.raises(StagedxError, match="corpus is empty"):
        resolve_corpus([tmp_path])
