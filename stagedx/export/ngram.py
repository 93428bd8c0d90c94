"""Fit draft2's Katz back-off trigram model (Spector & Re 2023) and store it as an ``.npz``.

The model, over the oracle's tokenizer (vocabulary V)::

    p(w | a, b) = c*(a, b, w) / c(a, b)            if (a, b, w) was seen
                = alpha(a, b) * p(w | b)           otherwise
    p(w | b)    = c*(b, w) / c(b)                  if (b, w) was seen
                = alpha(b) * p_uni(w)              otherwise
    p_uni(w)    = (c(w) + 1) / (N + V)             (add-one: every token has mass)

``c*`` is the discounted count (Katz: Good-Turing for counts up to 5, else absolute
discounting, see ``_Discount``); ``c(ctx)`` is the number of times the context was followed
by anything. The back-off weight hands the discounted mass to the unseen words, renormalised
by what the lower order gives them::

    alpha(ctx) = (1 - sum_{w seen} c*(ctx, w) / c(ctx)) / (1 - sum_{w seen} p_lower(w))

so every row sums to 1 over the whole vocabulary. A context that was not stored (unseen, or
pruned by the size cap) simply backs off: its distribution is the lower order's. Pruning keeps
the most frequent contexts and, since ``c(a, b) <= c(b)``, never keeps a trigram context
whose bigram suffix is dropped; alphas are computed against the stored lower order, so the
runtime's distribution is exactly the one fitted here.

File layout (``np.savez``, no pickled objects): ``vocab_size``, ``order``, ``topk``,
``n_tokens``, ``eos_id``, ``format_version``; ``uni_p [V] f64``, ``uni_top_ids [k] i32``,
``uni_top_p [k] f32``; and for ``L`` in (``bi``, ``tri``): ``L_keys [C] i64`` (sorted context
keys: ``b`` / ``a * V + b``), ``L_ptr [C+1] i64`` (CSR offsets), ``L_ids [E]`` (seen
successors, sorted per context), ``L_p [E] f32`` (discounted probabilities), ``L_alpha [C]
f64``, ``L_top_ids [C, k]`` and ``L_top_p [C, k] f32`` (top-k of the FULL back-off
distribution, ties broken by lower id). Token id arrays are uint16 when V <= 65536, else
int32.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StagedxError
from ..files import sha256_file
from ..manifest import NGRAM_FORMAT_VERSION, NgramEntry
from .corpus import is_excluded, stdlib_root

GT_MAX = 5  # Katz: Good-Turing discounts for counts 1..GT_MAX, counts above are reliable
RANK_SLACK = 256  # trigram contexts with more seen successors get a dense top-k pass


@dataclass(frozen=True)
class NgramFitConfig:
    topk: int = 16  # successors precomputed per context
    max_contexts: int = 1_000_000  # cap on stored bigram + trigram contexts (most frequent kept)
    exclude: tuple[str, ...] = ()  # paths relative to lib/pythonX.Y, or path suffixes
    show_progress: bool = True
    min_count: int = 1  # contexts followed fewer times than this are not stored (back off)
    eos_id: int = 0  # separator written between documents
    batch_files: int = 128  # files per encode_batch call


# -- progress ---------------------------------------------------------------------------------
class _Progress:
    """tqdm when installed, otherwise a few stderr lines; silent when disabled."""

    def __init__(self, total: int, desc: str, enabled: bool, unit: str = "it"):
        self.bar = None
        self.enabled, self.desc, self.total, self.done, self.t0 = enabled, desc, total, 0, time.time()
        self.next_print = 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=sys.stderr)
            except ImportError:
                pass

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note)
            self.bar.update(n)
        elif self.enabled and (time.time() >= self.next_print or self.done >= self.total):
            self.next_print = time.time() + 2.0
            print(f"{self.desc}: {self.done}/{self.total} {note}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- tokenising and counting ----------------------------------------------------------------
def _tokenize(corpus: Sequence[Path], tokenizer_file: Path, cfg: NgramFitConfig) -> tuple[np.ndarray, int]:
    """One int64 stream: EOS, doc 1, EOS, doc 2, ..., EOS (EOS also opens the first file)."""
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # tokenizers raises its own exception types
        raise StagedxError(f"cannot load tokenizer {tokenizer_file}: {exc}") from exc
    vocab = tok.get_vocab_size(with_added_tokens=True)
    sizes = [f.stat().st_size for f in corpus]
    bar = _Progress(sum(sizes), "tokenise", cfg.show_progress, unit="B")
    pieces = [np.array([cfg.eos_id], np.int64)]
    for start in range(0, len(corpus), cfg.batch_files):
        batch = corpus[start : start + cfg.batch_files]
        texts = [f.read_text(encoding="utf-8", errors="replace") for f in batch]
        for enc in tok.encode_batch(texts, add_special_tokens=False):
            pieces.append(np.asarray(enc.ids, np.int64))
            pieces.append(pieces[0])
        bar.update(sum(sizes[start : start + cfg.batch_files]))
    bar.close()
    return np.concatenate(pieces), vocab


@dataclass(frozen=True)
class _Discount:
    """Katz discounting of one order: ``c* = d_c * c``.

    Good-Turing (Katz 1987): with ``n_r`` the number of n-gram types seen r times,
    ``r* = (r + 1) n_{r+1} / n_r`` and for ``1 <= r <= K``
    ``d_r = (r*/r - (K+1) n_{K+1}/n_1) / (1 - (K+1) n_{K+1}/n_1)``, ``d_r = 1`` above K.
    On small corpora these can leave (0, 1); then absolute discounting ``c* = c - D`` with
    ``D = n_1 / (n_1 + 2 n_2)`` (Ney et al.) is used instead.
    """

    gt: np.ndarray | None  # [K+1] d_r (index r), or None for absolute discounting
    absolute: float

    @staticmethod
    def fit(counts: np.ndarray) -> _Discount:
        n = np.bincount(counts[counts <= GT_MAX + 1], minlength=GT_MAX + 2).astype(np.float64)
        if np.all(n[1:] > 0):
            r = np.arange(1, GT_MAX + 1, dtype=np.float64)
            big = (GT_MAX + 1) * n[GT_MAX + 1] / n[1]
            d = ((r + 1) * n[2:] / n[1:-1] / r - big) / (1.0 - big)
            if np.all((d > 0) & (d < 1)) and big < 1:
                return _Discount(gt=np.concatenate([[1.0], d]), absolute=0.0)
        n1, n2 = n[1], n[2]
        dabs = float(np.clip(n1 / (n1 + 2 * n2), 0.05, 0.95)) if n1 + n2 > 0 else 0.5
        return _Discount(gt=None, absolute=dabs)

    def apply(self, counts: np.ndarray) -> np.ndarray:
        c = counts.astype(np.float64)
        if self.gt is None:
            return c - self.absolute
        small = counts <= GT_MAX
        c[small] *= self.gt[counts[small]]
        return c


@dataclass
class _Level:
    """One order's stored contexts in CSR form (see the module docstring)."""

    keys: np.ndarray  # [C] int64 sorted context keys
    ptr: np.ndarray  # [C+1] int64
    ids: np.ndarray  # [E] int32 seen successors
    p: np.ndarray  # [E] float32 discounted probabilities
    alpha: np.ndarray  # [C] float64 back-off weights

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.ptr)

    def entry_keys(self, vocab: int) -> np.ndarray:
        """[E] sorted int64 ``context_index * V + successor``."""
        return np.repeat(np.arange(len(self.keys), dtype=np.int64), self.counts) * vocab + self.ids


def _group(keys: np.ndarray, counts: np.ndarray, vocab: int):
    """Split sorted n-gram keys into (context keys, successor ids, context starts, totals)."""
    ctx = keys // vocab
    starts = np.flatnonzero(np.r_[True, ctx[1:] != ctx[:-1]])
    return ctx[starts], keys % vocab, starts, np.add.reduceat(counts, starts)


def _select_contexts(tot2: np.ndarray, tot3: np.ndarray, cfg: NgramFitConfig):
    """Masks of kept bigram / trigram contexts: the ``max_contexts`` most frequent overall.

    Ties go to the bigram, so (with ``c(a, b) <= c(b)``) a kept trigram context always has its
    bigram suffix kept too.
    """
    tot = np.concatenate([tot2, tot3])
    order = np.lexsort((np.r_[np.zeros(len(tot2)), np.ones(len(tot3))], -tot))
    keep = np.zeros(len(tot), bool)
    keep[order[: cfg.max_contexts]] = True
    keep &= tot >= cfg.min_count
    return keep[: len(tot2)], keep[len(tot2) :]


def _build_level(grouped, keep_ctx: np.ndarray, disc: _Discount, lower: Callable) -> _Level:
    """Discounted probabilities and alphas of the kept contexts of one order.

    ``lower(context_keys_per_entry, successors) -> float64`` is the stored lower order's
    probability of each seen successor (needed by alpha's denominator).
    """
    ctx, succ, starts, tot, counts = grouped
    lens = np.diff(np.r_[starts, len(succ)])
    entry_keep = np.repeat(keep_ctx, lens)
    kctx, klens, ktot = ctx[keep_ctx], lens[keep_ctx], tot[keep_ctx]
    ids = succ[entry_keep]
    ent_tot = np.repeat(ktot, klens)
    p = (disc.apply(counts[entry_keep]) / ent_tot).astype(np.float32)
    ptr = np.r_[0, np.cumsum(klens)].astype(np.int64)
    if len(kctx) == 0:
        return _Level(kctx, ptr, ids.astype(np.int32), p, np.zeros(0))
    seg = ptr[:-1]
    left = np.maximum(1.0 - np.add.reduceat(p.astype(np.float64), seg), 0.0)
    denom = 1.0 - np.add.reduceat(lower(np.repeat(kctx, klens), ids), seg)
    ok = denom > 1e-12
    alpha = np.where(ok, left / np.where(ok, denom, 1.0), 0.0)
    if not ok.all():  # seen successors cover (nearly) the whole vocabulary: renormalise them
        bad = np.repeat(~ok, klens)
        p[bad] = (p[bad] / np.repeat(1.0 - left[~ok], klens[~ok])).astype(np.float32)
    return _Level(kctx, ptr, ids.astype(np.int32), p, alpha)


# -- top-k of the full back-off distribution ---------------------------------------------------
def _segments(ptr: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row position, entry index) for every stored entry of ``rows``."""
    lens = ptr[rows + 1] - ptr[rows]
    rep = np.repeat(np.arange(len(rows)), lens)
    first = np.repeat(ptr[rows] - np.r_[0, np.cumsum(lens)[:-1]], lens)
    return rep, first + np.arange(len(rep))


@dataclass
class _Lower:
    """The next-lower order as seen from a level: ranked prefixes and dense rows."""

    rank_ids: np.ndarray  # [R, Lk] ids of each lower row's distribution, best first
    rank_p: np.ndarray  # [R, Lk] their probabilities
    row: np.ndarray  # [C] lower row used by each context of the level
    dense: Callable[[np.ndarray], np.ndarray]  # rows -> [n, V] full lower distributions


def _top_lists(level: _Level, lower: _Lower, k: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """[C, k] ids and probabilities of the top successors under the full back-off distribution.

    For a context with seen set S, the unseen words get ``alpha * p_lower``, a positive
    rescaling, so their best k are the first k words of the lower ranking that are not in S:
    they lie in the lower ranking's first ``k + |S|`` entries. Candidates are S plus that
    prefix (minus S); contexts whose prefix would be longer than stored get a dense pass.
    Order: probability descending, then id ascending (the stable argsort of the full row).
    """
    n_ctx, cnt = len(level.keys), level.counts
    out_ids = np.zeros((n_ctx, k), np.int32)
    out_p = np.zeros((n_ctx, k), np.float64)
    ekeys = level.entry_keys(vocab)
    lo, avail = 0, lower.rank_ids.shape[1]
    for s in (4, 16, 64, RANK_SLACK):
        if s + k > avail:
            break
        sel_all = np.flatnonzero((cnt > lo) & (cnt <= s))
        lo = s
        step = max(1, (1 << 21) // (2 * s + k))
        for c0 in range(0, len(sel_all), step):
            sel = sel_all[c0 : c0 + step]
            cols = np.arange(s)
            valid = cols < cnt[sel, None]
            pos = np.where(valid, level.ptr[sel, None] + cols, 0)
            sid = np.where(valid, level.ids[pos], -1)
            sp = np.where(valid, level.p[pos].astype(np.float64), -1.0)
            rows = lower.row[sel]
            lid = lower.rank_ids[rows, : k + s].astype(np.int64)
            lp = lower.rank_p[rows, : k + s] * level.alpha[sel, None]
            q = sel[:, None].astype(np.int64) * vocab + lid
            hit = ekeys[np.minimum(np.searchsorted(ekeys, q), len(ekeys) - 1)] == q
            cid = np.concatenate([sid, np.where(hit, -1, lid)], axis=1)
            cp = np.concatenate([sp, np.where(hit, -1.0, lp)], axis=1)
            order = np.lexsort((cid, -cp), axis=-1)[:, :k]
            out_ids[sel] = np.take_along_axis(cid, order, 1)
            out_p[sel] = np.take_along_axis(cp, order, 1)
    dense_sel = np.flatnonzero(cnt > lo)
    step = max(1, (1 << 22) // vocab)
    for c0 in range(0, len(dense_sel), step):
        sel = dense_sel[c0 : c0 + step]
        full = lower.dense(lower.row[sel]) * level.alpha[sel, None]
        rep, ent = _segments(level.ptr, sel)
        full[rep, level.ids[ent]] = level.p[ent]
        order = np.argsort(-full, axis=1, kind="stable")[:, :k]
        out_ids[sel] = order
        out_p[sel] = np.take_along_axis(full, order, 1)
    return out_ids, out_p


def _unigram_rank(p_uni: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-p_uni, kind="stable")[:k]


# -- the fit ----------------------------------------------------------------------------
@dataclass
class _Counts:
    """Unigram counts and the grouped bigram / trigram counts of a token stream."""

    uni: np.ndarray  # [V] float64
    g2: tuple  # (contexts, successors, starts, totals, counts) of bigram keys a * V + b
    g3: tuple  # the same for trigram keys (a * V + b) * V + c


def _count(tokens: np.ndarray, vocab: int) -> _Counts:
    """Unigram by bincount, bigram / trigram by np.unique over int64 keys."""
    uni = np.bincount(tokens, minlength=vocab).astype(np.float64)  # [V]
    k2, c2 = np.unique(tokens[:-1] * vocab + tokens[1:], return_counts=True)
    k3, c3 = np.unique((tokens[:-2] * vocab + tokens[1:-1]) * vocab + tokens[2:], return_counts=True)
    return _Counts(uni, (*_group(k2, c2, vocab), c2), (*_group(k3, c3, vocab), c3))


@dataclass
class _Bigram:
    """The discounted bigram level and the lookups the trigram level backs off through."""

    level: _Level
    row: np.ndarray  # [V] token -> bigram row (C2 = not stored)
    alpha_ext: np.ndarray  # [C2 + 1] back-off weights; an unstored context backs off with 1
    p_uni: np.ndarray  # [V]
    ekeys: np.ndarray  # [E2] sorted entry keys row * V + w of the stored bigrams

    def p(self, ctx3: np.ndarray, w: np.ndarray, vocab: int) -> np.ndarray:
        """Stored Katz p(w | b) for trigram context keys ``a * V + b``."""
        bi, ekeys = self.level, self.ekeys
        row = self.row[ctx3 % vocab]
        backoff = self.alpha_ext[row] * self.p_uni[w]
        if len(ekeys) == 0:
            return backoff
        q = row * vocab + w
        i = np.minimum(np.searchsorted(ekeys, q), len(ekeys) - 1)
        return np.where(ekeys[i] == q, bi.p[i].astype(np.float64), backoff)

    def dense(self, rows: np.ndarray) -> np.ndarray:
        """[n, V] full Katz distributions of bigram rows (C2: the unigram)."""
        bi = self.level
        full = self.p_uni[None, :] * self.alpha_ext[rows][:, None]
        stored = np.flatnonzero(rows < len(bi.keys))
        rep, ent = _segments(bi.ptr, rows[stored])
        full[stored[rep], bi.ids[ent]] = bi.p[ent]
        return full


def _discount(counts: _Counts, config: NgramFitConfig, vocab: int) -> tuple[np.ndarray, _Bigram, _Level]:
    """(add-one unigram p, the bigram level, the trigram level): Good-Turing discounts and
    Katz back-off weights of the kept contexts."""
    g2, g3 = counts.g2, counts.g3
    keep2, keep3 = _select_contexts(g2[3], g3[3], config)
    p_uni = (counts.uni + 1.0) / (counts.uni.sum() + vocab)  # [V]
    bi = _build_level(g2, keep2, _Discount.fit(g2[4]), lambda ctx, w: p_uni[w])
    row = np.full(vocab, len(bi.keys), np.int64)
    row[bi.keys] = np.arange(len(bi.keys))
    bigram = _Bigram(bi, row, np.r_[bi.alpha, 1.0], p_uni, bi.entry_keys(vocab))
    tri = _build_level(g3, keep3, _Discount.fit(g3[4]), lambda ctx, w: bigram.p(ctx, w, vocab))
    return p_uni, bigram, tri


def _rank_levels(p_uni: np.ndarray, bigram: _Bigram, tri: _Level, k: int, steps) -> dict:
    """Top-k lists: unigram, then bigram (ranked deeper, k + RANK_SLACK, to serve the
    trigrams), then trigram. Returns ``{"uni": ids, "bi": (ids, p), "tri": (ids, p)}``."""
    vocab, bi = len(p_uni), bigram.level
    uni_rank = _unigram_rank(p_uni, vocab)  # [V]
    uni_lower = _Lower(
        uni_rank[None, :],
        p_uni[uni_rank][None, :],
        np.zeros(len(bi.keys), np.int64),
        lambda rows: np.tile(p_uni, (len(rows), 1)),
    )
    deep = min(vocab, k + RANK_SLACK)
    bi_rank_ids, bi_rank_p = _top_lists(bi, uni_lower, deep, vocab)  # [C2, deep]
    steps.update(1, "bigram top-k")
    uni_deep = uni_rank[:deep]
    tri_lower = _Lower(
        np.vstack([bi_rank_ids, uni_deep[None, :]]),
        np.vstack([bi_rank_p, p_uni[uni_deep][None, :]]),
        bigram.row[tri.keys % vocab],
        bigram.dense,
    )
    tri_top = _top_lists(tri, tri_lower, k, vocab)  # [C3, k] each
    steps.update(1, "trigram top-k")
    return {"uni": uni_rank, "bi": (bi_rank_ids[:, :k], bi_rank_p[:, :k]), "tri": tri_top}


def _arrays(p_uni: np.ndarray, levels: dict, ranked: dict, header: dict) -> dict:
    """The .npz arrays (module docstring): ``header`` scalars, unigram, then bi / tri levels."""
    k, uni_rank = int(header["topk"]), ranked["uni"]
    arrays = {
        "format_version": np.int64(NGRAM_FORMAT_VERSION),
        **{n: np.int64(v) for n, v in header.items()},
        "uni_p": p_uni,
        "uni_top_ids": uni_rank[:k].astype(np.int32),
        "uni_top_p": p_uni[uni_rank[:k]].astype(np.float32),
    }
    for name, level in levels.items():
        top_ids, top_p = ranked[name]
        arrays.update(
            {
                f"{name}_keys": level.keys.astype(np.int64),
                f"{name}_ptr": level.ptr,
                f"{name}_ids": level.ids,
                f"{name}_p": level.p,
                f"{name}_alpha": level.alpha,
                f"{name}_top_ids": np.ascontiguousarray(top_ids, dtype=np.int32),
                f"{name}_top_p": np.ascontiguousarray(top_p, dtype=np.float32),
            }
        )
    if len(p_uni) <= 1 << 16:  # token ids fit in uint16: halves the largest arrays
        for key in ("bi_ids", "bi_top_ids", "tri_ids", "tri_top_ids", "uni_top_ids"):
            arrays[key] = arrays[key].astype(np.uint16)
    return arrays


def fit_ngram(
    corpus: Sequence[Path], tokenizer_file: Path, out_file: Path, config: NgramFitConfig = NgramFitConfig()
) -> NgramEntry:
    """Fit the Katz trigram model on ``corpus`` files and write ``out_file`` (.npz).

    ``config.exclude`` is applied here too (as in ``resolve_corpus``), so either place works.
    """
    if config.exclude:
        excl = frozenset(str(e).strip("/") for e in config.exclude)
        corpus = [f for f in corpus if not is_excluded(Path(f), stdlib_root(), excl)]
    if not corpus:
        raise StagedxError("n-gram corpus is empty")
    tokens, vocab = _tokenize(corpus, Path(tokenizer_file), config)
    if vocab >= 1 << 21:
        raise StagedxError(f"vocabulary of {vocab} tokens is too large for int64 trigram keys")
    k = min(config.topk, vocab)
    steps = _Progress(5, "n-gram", config.show_progress)
    n_tokens = int(len(tokens))
    counts = _count(tokens, vocab)
    del tokens
    steps.update(1, "counted")
    p_uni, bigram, tri = _discount(counts, config, vocab)
    del counts
    steps.update(1, "discounted")
    ranked = _rank_levels(p_uni, bigram, tri, k, steps)
    header = {"vocab_size": vocab, "order": 3, "topk": k, "n_tokens": n_tokens, "eos_id": config.eos_id}
    arrays = _arrays(p_uni, {"bi": bigram.level, "tri": tri}, ranked, header)
    out_file = Path(out_file)
    with open(out_file, "wb") as f:
        np.savez(f, **arrays)
    steps.update(1, f"wrote {out_file.name}")
    steps.close()
    common = os.path.commonpath([str(p) for p in corpus]) if corpus else ""
    return NgramEntry(
        file=out_file.name,
        sha256=sha256_file(out_file),
        order=3,
        topk=k,
        n_tokens=n_tokens,
        corpus=(f"{common} ({len(corpus)} files)",),
    )
