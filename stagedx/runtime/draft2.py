"""draft2: the cheapest speculation stage (Spector & Re 2023): n-gram and prompt lookup.

``Draft2.propose_tree`` builds the candidate subtree that the draft scores in one batch:
the ``fanouts[0]`` best successors of the path end, then ``fanouts[1]`` successors of the
best of those, and so on along the most likely branch (the authors' code uses 12, 7, 4, 1, 1,
1). Sources, per the manifest's ``draft2.kind``:

- ``ngram``: the Katz back-off trigram model fitted at export (``stagedx.export.ngram``); the
  top successors of every stored context are precomputed from the full back-off distribution,
  so a lookup is one binary search over sorted int64 keys and a slice.
- ``prompt-lookup``: tokens that followed earlier occurrences of the longest suffix n-gram of
  the history (prompt + text generated so far): free, and very good at copying.
- ``both``: prompt-lookup candidates first, then n-gram ones not already proposed.

NumPy and the standard library only: this module runs in the latency-critical decode loop.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StagedxError
from ..manifest import DRAFT2_KINDS, DRAFT2_LOOKUP, DRAFT2_NGRAM, NGRAM_FORMAT_VERSION

DEFAULT_FANOUTS = (12, 7, 4, 1, 1, 1)
_EMPTY_IDS = np.zeros(0, np.int64)
_EMPTY_P = np.zeros(0, np.float32)
_LEVEL_KEYS = ("keys", "ptr", "ids", "p", "alpha", "top_ids", "top_p")


@dataclass(frozen=True)
class _Table:
    """One order's stored contexts: CSR successor lists, back-off weights, top-k lists."""

    keys: np.ndarray  # [C] int64 sorted context keys (b, or a * V + b)
    ptr: np.ndarray  # [C+1] int64
    ids: np.ndarray  # [E] int32
    p: np.ndarray  # [E] float32 discounted probabilities of seen successors
    alpha: np.ndarray  # [C] float64 back-off weights
    top_ids: np.ndarray  # [C, k] int32
    top_p: np.ndarray  # [C, k] float32

    def find(self, key: int) -> int:
        """Row of ``key``, or -1 when the context is not stored."""
        i = int(self.keys.searchsorted(key))
        return i if i < len(self.keys) and self.keys[i] == key else -1


class NgramModel:
    """The fitted Katz trigram model (see ``stagedx/export/ngram.py`` for the maths)."""

    def __init__(self, arrays: dict):
        self.vocab_size = int(arrays["vocab_size"])
        self.topk = int(arrays["topk"])
        self.n_tokens = int(arrays["n_tokens"])
        self.uni_p = arrays["uni_p"]
        self.uni_top_ids = arrays["uni_top_ids"].astype(np.int64)
        self.uni_top_p = arrays["uni_top_p"]
        self.bi = _Table(**{k: arrays[f"bi_{k}"] for k in _LEVEL_KEYS})
        self.tri = _Table(**{k: arrays[f"tri_{k}"] for k in _LEVEL_KEYS})
        # bigram contexts are at most V: a dense token -> row map makes their lookup O(1)
        self._bi_row = np.full(self.vocab_size, -1, np.int64)
        self._bi_row[self.bi.keys] = np.arange(len(self.bi.keys))
        self._bi_row_list = self._bi_row.tolist()

    @classmethod
    def load(cls, path: str | Path) -> NgramModel:
        path = Path(path)
        if not path.is_file():
            raise StagedxError(f"n-gram file not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # empty / truncated / not npz
            raise StagedxError(f"cannot read n-gram file {path}: {type(exc).__name__}: {exc}") from exc
        try:
            version = int(arrays.get("format_version", -1))
        except (TypeError, ValueError):
            version = -1
        if version != NGRAM_FORMAT_VERSION:
            raise StagedxError(f"{path}: n-gram format {version}, expected {NGRAM_FORMAT_VERSION}")
        try:
            return cls(arrays)
        except KeyError as exc:
            raise StagedxError(f"{path}: n-gram file lacks array {exc}") from exc
        except (ValueError, IndexError, TypeError) as exc:
            raise StagedxError(f"{path}: n-gram tables are inconsistent ({exc})") from exc

    def _rows(self, context: Sequence[int]) -> tuple[int, int]:
        """(trigram row, bigram row) of the context's last two tokens; -1 where not stored."""
        n = len(context)
        if n == 0:
            return -1, -1
        b = int(context[-1])
        bi = self._bi_row_list[b] if 0 <= b < self.vocab_size else -1
        if n < 2 or bi < 0:  # a stored trigram context always has its bigram suffix stored
            return -1, bi
        return self.tri.find(int(context[-2]) * self.vocab_size + b), bi

    def successors(self, context: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` (at most ``topk``) most likely next tokens, best first, and their probs."""
        tri, bi = self._rows(context)
        if tri >= 0:
            return self.tri.top_ids[tri, :k].astype(np.int64), self.tri.top_p[tri, :k]
        if bi >= 0:
            return self.bi.top_ids[bi, :k].astype(np.int64), self.bi.top_p[bi, :k]
        return self.uni_top_ids[:k], self.uni_top_p[:k]

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """[V] float64: the full Katz back-off distribution p(. | last two tokens)."""
        tri, bi = self._rows(context)
        p = self.uni_p.copy()
        for table, row in ((self.bi, bi), (self.tri, tri)):
            if row >= 0:  # unseen successors: alpha * lower order; seen: discounted estimate
                p *= table.alpha[row]
                lo, hi = table.ptr[row], table.ptr[row + 1]
                p[table.ids[lo:hi]] = table.p[lo:hi]
        return p


class PromptLookup:
    """Continuations of the longest suffix n-gram (``min_ngram..max_ngram``) seen earlier.

    For the history ``s`` (prompt + generated text, optionally followed by a speculative
    ``path``), take the longest ``n <= max_ngram`` whose last-``n`` tokens occurred before
    (ending at ``j <= len(s) - 2``); the candidates are the tokens ``s[j + 1]`` that followed
    the latest ``MAX_MATCHES`` such occurrences, ranked by count, then by recency, scored by
    count / matches (in (0, 1]).

    The history only grows between decode rounds, so an index ``n-gram -> end positions`` is
    kept and extended incrementally (a changed prefix, e.g. a new prompt, rebuilds it): a
    query is a few dict lookups instead of a scan of the history.
    """

    MAX_MATCHES = 64

    def __init__(self, max_ngram: int = 3, min_ngram: int = 1):
        if not 1 <= min_ngram <= max_ngram:
            raise StagedxError(f"prompt lookup needs 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self._hist = np.zeros(0, np.int64)  # the history the index covers
        self._tok: list[int] = []
        self._index: dict[tuple, list[int]] = {}  # n-gram -> ends j (with s[j + 1] known)

    def _sync(self, history: np.ndarray) -> None:
        n_old, n_new = len(self._tok), len(history)
        if n_new < n_old or not np.array_equal(history[:n_old], self._hist[:n_old]):
            self._tok, self._index, n_old = [], {}, 0
        if n_new == n_old:
            return
        self._hist = np.array(history, np.int64)
        tok = self._tok
        tok.extend(self._hist[n_old:].tolist())
        index = self._index
        for j in range(max(n_old - 1, 0), n_new - 1):  # ends that just got a follower
            for n in range(1, min(self.max_ngram, j + 1) + 1):
                index.setdefault(tuple(tok[j - n + 1 : j + 1]), []).append(j)

    def continuations(self, history: np.ndarray, path: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Successors of ``history`` followed by the short token list ``path``."""
        self._sync(np.asarray(history, np.int64))
        ids, scores = self._query(path, k)
        return np.array(ids, np.int64), np.array(scores, np.float32)

    def successors(self, history: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` distinct next tokens of ``history``, best first, with scores."""
        return self.continuations(history, (), k)

    def _query(self, path: Sequence[int], k: int) -> tuple[list, list]:
        """Lists (ids, scores) for the synced history followed by ``path``."""
        if k <= 0:
            return [], []
        n_hist = len(self._tok)
        total = n_hist + len(path)
        t0 = max(0, n_hist - self.max_ngram)  # tail = s[t0:]: enough for ends near the end
        tail = self._tok[t0:] + list(path)
        for n in range(min(self.max_ngram, total - 1), self.min_ngram - 1, -1):
            gram = tuple(tail[len(tail) - n :])
            ends = self._index.get(gram, [])[-self.MAX_MATCHES :]
            # ends at j >= n_hist - 1 involve the path (or its first token as follower)
            extra = [
                j for j in range(max(n_hist - 1, n - 1), total - 1) if tuple(tail[j - n + 1 - t0 : j + 1 - t0]) == gram
            ]
            if not ends and not extra:
                continue
            follow = [self._tok[j + 1] for j in ends] + [tail[j + 1 - t0] for j in extra]
            return _rank(follow[-self.MAX_MATCHES :], k)
        return [], []


def _rank(follow: list, k: int) -> tuple[list, list]:
    """Distinct followers by count, then latest occurrence; scores = count / len(follow)."""
    counts: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, t in enumerate(follow):
        counts[t] = counts.get(t, 0) + 1
        last[t] = i
    best = sorted(counts, key=lambda t: (-counts[t], -last[t]))[:k]
    scale = 1.0 / len(follow)
    return best, [counts[t] * scale for t in best]


class Draft2:
    """draft2 of one bundle: successors of a history and the candidate tree below its end."""

    def __init__(self, kind: str, ngram: NgramModel | None = None, lookup: PromptLookup | None = None):
        if kind not in DRAFT2_KINDS:
            raise StagedxError(f"unknown draft2 kind {kind!r}; expected one of {', '.join(DRAFT2_KINDS)}")
        if kind in DRAFT2_NGRAM and ngram is None:
            raise StagedxError(f"draft2 kind {kind!r} needs an n-gram model")
        self.kind = kind
        self.ngram = ngram if kind in DRAFT2_NGRAM else None
        self.lookup = (lookup or PromptLookup()) if kind in DRAFT2_LOOKUP else None

    @property
    def active(self) -> bool:
        """False for the null draft2 (``NO_DRAFT2``, a bundle exported with ``--draft2 none``),
        which proposes nothing."""
        return self.kind != "none"

    @classmethod
    def from_manifest(cls, bundle_dir: str | Path, manifest) -> Draft2:
        """``manifest``: a ``stagedx.manifest.Manifest`` (its ``draft2`` entry is used)."""
        entry = manifest.draft2
        ngram = None
        if entry.kind in DRAFT2_NGRAM:
            if entry.ngram is None:
                raise StagedxError(f"manifest draft2 kind {entry.kind!r} names no n-gram file")
            ngram = NgramModel.load(Path(bundle_dir) / entry.ngram.file)
        return cls(entry.kind, ngram)

    def _candidates(self, history: np.ndarray, path: list, k: int) -> tuple[list, list]:
        """(ids, scores) lists after ``history`` + ``path``; prompt lookup must be synced."""
        if self.kind == "none" or k <= 0:
            return [], []
        ng_ids: list = []
        ng_p: list = []
        if self.ngram is not None:
            tail = (history[-2:].tolist() + path)[-2:] if len(path) < 2 else path[-2:]
            ids, probs = self.ngram.successors(tail, k)
            ng_ids, ng_p = ids.tolist(), probs.tolist()
            if self.lookup is None:
                return ng_ids, ng_p
        pl_ids, pl_p = self.lookup._query(path, k)
        if not pl_ids or len(pl_ids) >= k:
            return (pl_ids, pl_p) if pl_ids else (ng_ids, ng_p)
        # both: prompt-lookup first, then n-gram candidates that are new
        taken = set(pl_ids)
        fresh = [i for i, t in enumerate(ng_ids) if t not in taken][: k - len(pl_ids)]
        return pl_ids + [ng_ids[i] for i in fresh], pl_p + [ng_p[i] for i in fresh]

    def _prepare(self, history: np.ndarray) -> np.ndarray:
        history = np.asarray(history, np.int64)
        if self.lookup is not None:
            self.lookup._sync(history)
        return history

    def successors(self, history: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Up to ``k`` distinct next tokens of ``history`` (int64), best first, with scores."""
        ids, scores = self._candidates(self._prepare(history), [], k)
        return np.array(ids, np.int64), np.array(scores, np.float32)

    def propose_tree(
        self, history: np.ndarray, fanouts: Sequence[int] = DEFAULT_FANOUTS
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate tree below ``history[-1]``: ``tokens [N] int64``, ``parents [N] int32``.

        Level d holds up to ``fanouts[d]`` successors of the best node of level d - 1 (level 0
        hangs below the history's end, parent -1). Nodes are ordered level by level, so every
        prefix of the arrays is a valid tree (parents before children); siblings are distinct.
        """
        history = self._prepare(history)
        tokens: list[int] = []
        parents: list[int] = []
        path: list[int] = []
        parent = -1
        for fan in fanouts:
            ids, _ = self._candidates(history, path, int(fan))
            if not ids:
                break
            start = len(tokens)
            tokens.extend(ids)
            parents.extend([parent] * len(ids))
            parent = start  # the best successor heads the next level
            path.append(ids[0])
        if not tokens:
            return _EMPTY_IDS.copy(), np.zeros(0, np.int32)
        return np.array(tokens, np.int64), np.array(parents, np.int32)


NO_DRAFT2 = Draft2("none")  # the null draft2: no candidates, no successors
