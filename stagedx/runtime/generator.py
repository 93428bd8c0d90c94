"""``Generator``: baseline, classic speculative and staged tree decoding over two runners.

Who owns what during one ``generate`` call (see also docs/design.md):

* ``DecodeState.tokens`` is the only list of committed tokens (prompt + generated). Its last
  token is *pending*: it has been emitted but no model has a KV row for it yet in the oracle;
  it is the root of the next tree.
* The oracle runner owns the oracle KV cache. Invariant between rounds:
  ``oracle.length == len(tokens) - 1``.
* The draft runner owns the draft KV cache: ``draft.length <= len(tokens) - 1`` between
  rounds. During a round it also holds speculative rows (the draft's greedy path).
* ``DecodeState.rng`` is the only source of randomness (numpy PCG64 seeded per call).
* Rollback rule, applied once per round after verification: the oracle commits the rows of
  the root and of the accepted tree nodes (``verdict.path[:keep]``), nothing else; the draft
  truncates to ``n + common_prefix(draft path, emitted)``, capped at ``len(tokens) - 1`` so the
  new root is always re-scored. When EOS, a stop string or ``max_new_tokens`` falls inside an
  accepted run, ``keep`` shrinks first, so both caches match the tokens actually kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import StagedxError
from . import accept
from .bundle import cross_check, make_runner, open_bundle
from .draft2 import Draft2
from .runner import FETCH_LOGITS, FETCH_TOPK, chain_mask
from .sampling import SamplingConfig, rank_logprobs, sample, warp
from .staged import (
    SOURCE_DRAFT,
    SOURCE_DRAFT2,
    OracleTree,
    TreeConfig,
    chain_tree,
    draft2_tree,
    grow_draft_tree,
    oracle_tree,
    root_only,
)
from .sampled import SampledTree, grow_sampled_tree
from .tokenizer import StreamDecoder, Tokenizer
from .tree import ancestor_mask

STRATEGIES = ("baseline", "speculative", "staged")
STAGE_NAMES = {SOURCE_DRAFT2: "draft2", SOURCE_DRAFT: "draft"}


@dataclass
class Stats:
    strategy: str
    sampling: str
    oracle_calls: int = 0
    draft_calls: int = 0
    new_tokens: int = 0
    rounds: int = 0
    accepted_by_stage: dict = field(default_factory=lambda: {"draft2": 0, "draft": 0, "oracle": 0})
    accepted_by_depth: list = field(default_factory=list)
    time_s: dict = field(
        default_factory=lambda: {"prefill": 0.0, "draft2": 0.0, "draft": 0.0, "oracle": 0.0, "other": 0.0, "total": 0.0}
    )
    call_sizes: dict = field(default_factory=lambda: {"oracle": {}, "draft": {}})  # model -> {tokens: calls}

    def count_calls(self, model: str, sizes) -> None:
        hist = self.call_sizes[model]
        for t in sizes:
            hist[int(t)] = hist.get(int(t), 0) + 1

    @property
    def oracle_tokens(self) -> int:
        """Tree tokens scored by the oracle, summed over calls (prefill excluded)."""
        return sum(t * n for t, n in self.call_sizes["oracle"].items())

    @property
    def tokens_per_oracle_call(self) -> float:
        return self.new_tokens / max(1, self.oracle_calls)

    def as_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "sampling": self.sampling,
            "oracle_calls": self.oracle_calls,
            "oracle_tokens": self.oracle_tokens,
            "draft_calls": self.draft_calls,
            "new_tokens": self.new_tokens,
            "rounds": self.rounds,
            "tokens_per_oracle_call": self.tokens_per_oracle_call,
            "accepted_by_stage": dict(self.accepted_by_stage),
            "accepted_by_depth": list(self.accepted_by_depth),
            "time_s": dict(self.time_s),
            "call_sizes": {m: {str(t): n for t, n in sorted(h.items())} for m, h in self.call_sizes.items()},
        }


@dataclass(frozen=True)
class GenerationResult:
    text: str
    tokens: list  # new tokens, without a final EOS
    prompt_tokens: int
    finish_reason: str  # "length" | "eos" | "stop" | "context"
    stats: Stats


@dataclass(frozen=True)
class Request:
    prompt: np.ndarray  # [n] int64
    max_new_tokens: int
    sampling: SamplingConfig
    seed: int | None
    stop: tuple
    strategy: str
    ignore_eos: bool
    tree: TreeConfig


@dataclass
class DecodeState:
    tokens: list  # committed tokens; tokens[-1] is pending (not in the oracle's KV)
    n_prompt: int
    rng: np.random.Generator
    stats: Stats
    finish: str | None = None
    draft_q: list = field(default_factory=list)  # [k][V] q of each sampled draft token (speculative)
    sampled: SampledTree | None = None  # this round's sampled tree (staged, sampled modes)

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.n_prompt


# Trees that always run all three stages (draft2 -> draft -> oracle): the best such shapes
# measured on a 2-core CPU for the vendored pair. Greedy acceptance runs deep (deep, thin
# tree); sampled (top-k 50, T=1) acceptance rarely passes depth 2 (small, shallow tree).
THREE_STAGE_TREES = {
    "greedy": TreeConfig(),
    "sample": TreeConfig(budget=7, max_depth=4, widths=(2, 1, 1, 1), extra=2),  # drawn children + draft2 leaves
}
# Untuned defaults: the fastest shapes measured on the default backend (ONNX Runtime, 2-core
# CPU) for the vendored pair. There a draft call costs ~1.5 ms inside the loop against ~3.6
# ms for the oracle, and draft2's proposals (n-gram + prompt lookup, ~0.05 ms) are accepted
# about as often, so draft2 feeds the oracle directly (draft_calls=0). `stagedx tune` redoes
# this choice for each device, backend and thread count.
DEFAULT_TREES = {
    "greedy": TreeConfig(budget=16, max_depth=15, fanouts=(2,) + (1,) * 14, draft_calls=0),
    "sample": TreeConfig(budget=3, max_depth=3, fanouts=(3,), draft_calls=0),
}


# Without draft2 (a bundle exported with ``--draft2 none``) draft2-only trees propose nothing:
# the defaults then grow the tree with the draft alone, at least as deep as speculative's chain.
NO_DRAFT2_TREES = {
    "greedy": TreeConfig(budget=11, max_depth=12, fanouts=(), draft_calls=6, stop_p=0.05),
    "sample": TreeConfig(budget=7, max_depth=4, widths=(2, 1, 1), extra=1),
}


def fit_tree(tree: OracleTree, rows: int) -> OracleTree:
    """Near the context limit a wide tree may not fit the oracle's free KV rows (the TensorRT
    runner writes every new row into its cache): keep its first ``rows`` nodes, which is
    still a tree because parents come before children."""
    if len(tree.tokens) <= rows:
        return tree
    return OracleTree(tree.tokens[:rows], tree.parents[:rows], tree.depth[:rows], tree.source[:rows])


def sampling_mode(cfg: SamplingConfig) -> str:
    return "greedy" if cfg.greedy else "sample"


def find_tuning(tuning: dict, device: str, backend: str, threads: int | None) -> dict:
    """The tuned entry for this device and backend (never another device's), preferring the
    same thread count, else the nearest one. ``{"greedy": {...}, "sample": {...}}``."""
    same = {int(k.split("|")[2]): v for k, v in tuning.items() if k.startswith(f"{device}|{backend}|")}
    if not same:
        return {}
    want = threads or 0
    return same[min(same, key=lambda t: (abs(t - want), -t))]


def check_tuning(tuned: dict, key: str) -> dict:
    """A tuned entry read from a manifest, with each mode's tree shape validated."""
    for mode in ("greedy", "sample"):
        if mode in tuned:
            try:
                TreeConfig.from_dict(tuned[mode])
            except (StagedxError, TypeError) as exc:
                raise StagedxError(f"manifest tuning[{key!r}][{mode!r}] is invalid: {exc}; rerun stagedx tune") from None
    return tuned


def prompt_ids(prompt, tokenizer: Tokenizer) -> np.ndarray:
    """``str`` (encoded) or a sequence of int token ids; anything else is refused."""
    if isinstance(prompt, str):
        return np.asarray(tokenizer.encode(prompt), np.int64)
    if isinstance(prompt, (bytes, bytearray, memoryview)):
        raise StagedxError("prompt is bytes: pass a str (decode it first) or a sequence of int token ids")
    if not isinstance(prompt, (Sequence, np.ndarray)):
        raise StagedxError(f"prompt must be a str or a sequence of int token ids, got {type(prompt).__name__}")
    ids = np.asarray(prompt)
    if ids.size and (ids.ndim != 1 or ids.dtype.kind not in "iu"):
        raise StagedxError(f"prompt token ids must be a flat sequence of ints, got dtype {ids.dtype} shape {ids.shape}")
    return ids.astype(np.int64).reshape(-1)


class Generator:
    """Decodes with one bundle. Safe to share between threads: each ``generate`` call and each
    ``stream`` iteration (from its first item to its end or ``close()``) holds the Generator's
    lock, so concurrent calls run one after another, never interleaved. A second call from the
    thread that is iterating an unfinished stream is refused (it would wait for itself)."""

    def __init__(
        self,
        bundle: str | Path,
        device: str = "auto",
        strategy: str = "staged",
        threads: int | None = None,
        tree: TreeConfig | None = None,
        max_context: int | None = None,
        tree_budget: int | None = None,
    ):
        if strategy not in STRATEGIES:
            raise StagedxError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        self.bundle_dir, self.manifest = open_bundle(bundle)
        self.strategy = strategy
        self.tokenizer = Tokenizer(self.bundle_dir / self.manifest.tokenizer.file)
        self.oracle = make_runner(self.bundle_dir, self.manifest, "oracle", device, threads, max_context)
        self.draft = make_runner(self.bundle_dir, self.manifest, "draft", device, threads, max_context)
        self.draft2 = Draft2.from_manifest(self.bundle_dir, self.manifest)
        self.device, self.backend = self.oracle.device, self.oracle.backend
        self.threads = getattr(self.oracle, "threads", threads) or 0  # what the backend really uses
        self.tuning_key = f"{self.device}|{self.backend}|{self.threads}"
        self.tuned = check_tuning(find_tuning(self.manifest.tuning, self.device, self.backend, self.threads),
                                  self.tuning_key)  # fmt: skip
        self.tree = tree  # an explicit tree overrides the tuned / default one for every mode
        self.tree_budget = tree_budget  # only the oracle's node budget, over whichever tree
        m = self.manifest
        self.context_limit = min(
            m.oracle.arch.max_positions, m.draft.arch.max_positions, self.oracle.max_context, self.draft.max_context
        )
        self.vocab = m.oracle.arch.vocab_size
        self.eos = m.tokenizer.eos_token_id
        self.oracle_weight_bytes = m.oracle.weight_bytes
        self.draft_weight_bytes = m.draft.weight_bytes
        cross_check(self.bundle_dir, m, self.tokenizer, self.draft2, (self.oracle, self.draft))
        self._lock = threading.Lock()  # one decode at a time: the runners' KV caches are shared state
        self._owner: int | None = None  # thread id of the decode in progress
        self._local = threading.local()  # last_result of each thread's latest stream

    @property
    def last_result(self) -> GenerationResult | None:
        """The result of the latest ``stream`` this thread exhausted (per thread)."""
        return getattr(self._local, "result", None)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        me = threading.get_ident()
        if self._owner == me:
            raise StagedxError("this Generator is already decoding in this thread (an unfinished stream()?): "
                               "exhaust or close() it first")  # fmt: skip
        with self._lock:
            self._owner = me
            try:
                yield
            finally:
                self._owner = None

    # -- public API ----------------------------------------------------------------------
    def tree_for(self, sampling: SamplingConfig) -> TreeConfig:
        """The tree shape used for this sampling mode: explicit, else tuned, else default."""
        mode = sampling_mode(sampling)
        if self.tree is not None:
            tree = self.tree
        elif mode in self.tuned:
            tree = TreeConfig.from_dict(self.tuned[mode])
        else:
            tree = (NO_DRAFT2_TREES if self.draft2.kind == "none" else DEFAULT_TREES)[mode]
        return tree if self.tree_budget is None else dataclasses.replace(tree, budget=self.tree_budget)

    def three_stage_tree(self, sampling: SamplingConfig) -> TreeConfig:
        """A tree that always runs draft2 -> draft -> oracle: tune's best such one, else the default.
        Without draft2 there is no third stage: the draft-only tree (tuned, else default)."""
        mode = sampling_mode(sampling)
        if self.draft2.kind == "none":
            return self.tree_for(sampling) if self.tree is None and mode in self.tuned else NO_DRAFT2_TREES[mode]
        tuned = self.tuned.get(mode, {}).get("three_stage")
        return TreeConfig.from_dict(tuned) if tuned else THREE_STAGE_TREES[mode]

    def generate(self, prompt: str | Sequence[int], max_new_tokens: int = 128, **options) -> GenerationResult:
        """Options: sampling ("greedy", "topk:50", SamplingConfig), seed, stop, strategy,
        ignore_eos, truncate (drop the prompt's start when it does not fit), tree (a
        TreeConfig for this call only)."""
        req = self._request(prompt, max_new_tokens, **options)
        with self._exclusive():
            st = self._start(req)
            for _ in self._rounds(req, st):
                pass
            return self._result(req, st)

    def stream(self, prompt: str | Sequence[int], max_new_tokens: int = 128, **options) -> Iterator[str]:
        """Yield text as it is accepted, never splitting a UTF-8 character; the full result
        is left in ``self.last_result`` when the iterator is exhausted. The Generator's lock is
        held from the first item until the iterator ends or is closed."""
        req = self._request(prompt, max_new_tokens, **options)
        with self._exclusive():
            yield from self._stream(req)

    def _stream(self, req: Request) -> Iterator[str]:
        st = self._start(req)
        decoder = StreamDecoder(self.tokenizer)
        # a stop string may begin in text already decoded: hold back its length minus one
        hold = max((len(s) for s in req.stop), default=1) - 1
        text, sent = "", 0
        for kept in self._rounds(req, st):
            if st.finish == "eos":
                kept = kept[:-1]  # the EOS token is not text
            text += decoder.push(kept)
            if st.finish is None and len(text) - hold > sent:
                yield text[sent : len(text) - hold]
                sent = len(text) - hold
        self._local.result = result = self._result(req, st)
        final = result.text  # cut before a stop string, without EOS
        if len(final) > sent:
            yield final[sent:]

    # -- request set-up ------------------------------------------------------------------
    def _request(self, prompt, max_new_tokens, sampling="greedy", seed=None, stop=(), strategy=None,
                 ignore_eos=False, truncate=False, tree=None) -> Request:  # fmt: skip
        if not isinstance(max_new_tokens, (int, np.integer)) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
            raise StagedxError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0):
            raise StagedxError(f"seed must be an integer >= 0 (or None), got {seed!r}")
        if not isinstance(sampling, (str, SamplingConfig)):
            raise StagedxError(f"sampling must be a str such as 'topk:50' or a SamplingConfig, got {sampling!r}")
        if tree is not None and not isinstance(tree, TreeConfig):
            raise StagedxError(f"tree must be a TreeConfig, got {type(tree).__name__}")
        if not isinstance(stop, str) and not (isinstance(stop, (list, tuple)) and all(isinstance(x, str) for x in stop)):
            raise StagedxError(f"stop must be a str or a sequence of str, got {stop!r}")
        ids = prompt_ids(prompt, self.tokenizer)
        if ids.size == 0:
            raise StagedxError("empty prompt: give at least one token")
        if ids.min() < 0 or ids.max() >= self.vocab:
            raise StagedxError(f"prompt token ids must lie in [0, {self.vocab})")
        if len(ids) > self.context_limit:
            if not truncate:
                raise StagedxError(
                    f"prompt has {len(ids)} tokens, more than the context of {self.context_limit} "
                    "(use --truncate to keep its end)"
                )
            ids = ids[-max(1, self.context_limit - min(max_new_tokens, self.context_limit // 2)) :]
        cfg = sampling if isinstance(sampling, SamplingConfig) else SamplingConfig.parse(sampling)
        strategy = strategy or self.strategy
        if strategy not in STRATEGIES:
            raise StagedxError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
        stop = (stop,) if isinstance(stop, str) else tuple(s for s in stop if s)
        return Request(ids.astype(np.int64), int(max_new_tokens), cfg, seed, stop, strategy, bool(ignore_eos),
                       tree or self.tree_for(cfg))  # fmt: skip

    def _start(self, req: Request) -> DecodeState:
        """Reset both caches and prefill the oracle with every prompt token but the last."""
        t0 = time.perf_counter()
        self.oracle.truncate(0)
        self.draft.truncate(0)
        depth = max(req.tree.max_depth, req.tree.spec_k)
        stats = Stats(req.strategy, req.sampling.label, accepted_by_depth=[0] * (depth + 1))
        st = DecodeState(req.prompt.tolist(), len(req.prompt), np.random.default_rng(req.seed), stats)
        n = len(req.prompt)
        if n > 1:
            self.oracle.run(req.prompt[:-1], np.arange(n - 1), chain_mask(n - 1))
            self.oracle.commit(np.arange(n - 1))
        stats.time_s["prefill"] = time.perf_counter() - t0
        return st

    # -- the decode loop: propose -> verify -> accept -> commit ---------------------------
    def _rounds(self, req: Request, st: DecodeState) -> Iterator[list]:
        t_start = time.perf_counter()
        s = st.stats
        while st.finish is None:
            n = len(st.tokens)
            room = self.context_limit - n  # deepest node the context allows this round
            if room < 0:
                st.finish = "context"
                break
            tree, draft_path = self._propose(req, st, room)
            tree = fit_tree(tree, self.context_limit - n + 1)  # the oracle's free KV rows
            t0 = time.perf_counter()
            fetch = (FETCH_TOPK,) if req.sampling.greedy else (FETCH_LOGITS,)
            out = self.oracle.run(tree.tokens, n - 1 + tree.depth, ancestor_mask(tree.parents), fetch)
            s.time_s["oracle"] += time.perf_counter() - t0
            s.oracle_calls += 1
            s.count_calls("oracle", (len(tree.tokens),))
            verdict = self._verify(req, st, tree, out)
            kept = self._commit(req, st, tree, verdict, draft_path)
            s.rounds += 1
            if kept:
                yield kept
        s.time_s["total"] = time.perf_counter() - t_start + s.time_s["prefill"]
        s.time_s["other"] = s.time_s["total"] - sum(s.time_s[k] for k in ("prefill", "draft2", "draft", "oracle"))

    def _propose(self, req: Request, st: DecodeState, room: int) -> tuple[OracleTree, list]:
        """Returns the tree for the oracle and the draft's speculative path (tokens below the root)."""
        if req.strategy == "baseline":  # before the O(context) history array below
            return root_only(st.tokens[-1]), []
        history = np.asarray(st.tokens, np.int64)
        if req.strategy == "speculative" and min(req.tree.spec_k, room) > 0:
            drafted = self._draft_chain(req, st, history, min(req.tree.spec_k, room))
            return chain_tree(np.concatenate([history[-1:], drafted])), drafted.tolist()[:-1]
        limit = min(req.tree.max_depth, room)
        st.sampled = None
        if req.strategy != "staged" or limit == 0 or req.tree.budget == 0:
            return root_only(st.tokens[-1]), []
        if req.tree.widths and not req.sampling.greedy:
            return self._sampled_tree(req, st, history, limit)
        if req.tree.draft_calls == 0:
            t0 = time.perf_counter()
            tree = draft2_tree(self.draft2, history, req.tree, limit)
            st.stats.time_s["draft2"] += time.perf_counter() - t0
            return tree, []
        cfg, tau = req.sampling, req.tree.tau
        dtree = grow_draft_tree(self.draft, self.draft2, history, req.tree, lambda v: rank_logprobs(v, cfg, tau), limit)
        st.stats.draft_calls += dtree.calls
        st.stats.count_calls("draft", dtree.sizes)
        st.stats.time_s["draft2"] += dtree.time_draft2
        st.stats.time_s["draft"] += dtree.time_draft
        return oracle_tree(dtree, req.tree.budget, limit, self.vocab), dtree.path

    def _sampled_tree(self, req: Request, st: DecodeState, history: np.ndarray, limit: int) -> tuple[OracleTree, list]:
        """Children drawn from the draft's q (``sampled.py``), cut to the node budget."""
        sp = grow_sampled_tree(self.draft, self.draft2, history, req.tree, req.sampling, st.rng, limit)
        st.stats.draft_calls += sp.calls
        st.stats.count_calls("draft", sp.sizes)
        st.stats.time_s["draft"] += sp.time_draft
        st.stats.time_s["draft2"] += sp.time_draft2
        st.sampled = sp
        return fit_tree(sp.tree, req.tree.budget + 1), sp.path

    def _draft_chain(self, req: Request, st: DecodeState, history: np.ndarray, k: int) -> np.ndarray:
        """Classic drafting: k sequential draft calls; sampled drafts keep q for verification."""
        t0 = time.perf_counter()
        chain = history[self.draft.length :]
        drafted, st.draft_q = [], []
        st.stats.count_calls("draft", [len(chain)] + [1] * (k - 1))
        fetch = (FETCH_TOPK,) if req.sampling.greedy else (FETCH_LOGITS,)
        for _ in range(k):
            out = self.draft.run(chain, self.draft.length + np.arange(len(chain)), chain_mask(len(chain)), fetch)
            self.draft.commit(np.arange(len(chain)))
            if req.sampling.greedy:
                x = int(out.topk_indices[-1, 0])
            else:
                q = warp(out.logits[-1], req.sampling)
                x = sample(q, st.rng)
                st.draft_q.append(q)
            drafted.append(x)
            chain = np.asarray([x], np.int64)
        st.stats.draft_calls += k
        st.stats.time_s["draft"] += time.perf_counter() - t0
        return np.asarray(drafted, np.int64)  # the last one has no draft KV row yet

    def _verify(self, req: Request, st: DecodeState, tree: OracleTree, out) -> accept.Verdict:
        if req.sampling.greedy:
            return accept.walk_tree(tree.parents, tree.tokens, accept.greedy_draw(out.topk_indices[:, 0]))
        if st.sampled is not None:
            sp = st.sampled
            return accept.verify_sampled(tree.parents, tree.tokens, sp.drawn[: len(tree.tokens)], sp.q.__getitem__,
                                         lambda v: warp(out.logits[v], req.sampling), st.rng)  # fmt: skip
        if req.strategy == "speculative" and len(tree.tokens) > 1:
            p = warp(out.logits, req.sampling)  # [k+1, V]
            emitted = accept.verify_chain(tree.tokens[1:], np.stack(st.draft_q), p, st.rng)
            return accept.Verdict(np.arange(len(emitted)), emitted)
        return accept.walk_tree(
            tree.parents, tree.tokens, accept.sampled_draw(lambda v: warp(out.logits[v], req.sampling), st.rng)
        )

    def _commit(self, req: Request, st: DecodeState, tree: OracleTree, verdict: accept.Verdict, draft_path: list) -> list:
        """Keep what the finish rules allow, then commit KV rows and tokens consistently."""
        s = st.stats
        emitted = verdict.tokens
        room = req.max_new_tokens - st.generated
        keep, hit_eos = accept.truncate_emitted(emitted, None if req.ignore_eos else self.eos, room)
        if req.stop:
            keep, hit_stop = self._stop_cut(req, st, emitted, keep)
            hit_eos = hit_eos and not hit_stop
            st.finish = "stop" if hit_stop else None
        n = len(st.tokens)
        self.oracle.commit(verdict.path[:keep])
        st.tokens.extend(emitted[:keep].tolist())
        common = accept.common_prefix(np.asarray(draft_path, np.int64), emitted[:keep])
        self.draft.truncate(min(self.draft.length, n + common, len(st.tokens) - 1))

        accepted = verdict.path[1 : keep + 1]  # tree nodes among the kept tokens
        for node in accepted:
            s.accepted_by_depth[int(tree.depth[node]) - 1] += 1
            s.accepted_by_stage[STAGE_NAMES[int(tree.source[node])]] += 1
        s.accepted_by_stage["oracle"] += int(keep == len(emitted))
        s.new_tokens += keep
        if st.finish is None:
            if hit_eos:
                st.finish = "eos"
            elif st.generated >= req.max_new_tokens:
                st.finish = "length"
        return emitted[:keep].tolist()

    def _stop_cut(self, req: Request, st: DecodeState, emitted: np.ndarray, keep: int) -> tuple[int, bool]:
        """Shortest prefix of ``emitted[:keep]`` after which a stop string has appeared."""
        done = self.tokenizer.decode(st.tokens[st.n_prompt :])
        for j in range(1, keep + 1):
            text = self.tokenizer.decode(st.tokens[st.n_prompt :] + emitted[:j].tolist())
            if any(stop in text[max(0, len(done) - len(stop) + 1) :] for stop in req.stop):
                return j, True
        return keep, False

    def _result(self, req: Request, st: DecodeState) -> GenerationResult:
        new = st.tokens[st.n_prompt :]
        if st.finish == "eos" and new and new[-1] == self.eos:
            new = new[:-1]
        text = self.tokenizer.decode(new)
        if st.finish == "stop":
            cut = min((text.find(s) for s in req.stop if s in text), default=-1)
            text = text[:cut] if cut >= 0 else text
        return GenerationResult(text, list(new), st.n_prompt, st.finish or "length", st.stats)
