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
from collections.abc import Generator as Coroutine
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StagedxError
from ..manifest import find_tuning, tuning_key
from . import accept
from .bundle import cross_check, make_runner, open_bundle
from .constraint import GrammarTokenizer, Guide
from .constraint_tree import guided_proposal, verify_guided
from .draft2 import Draft2
from .planner import MAX_DEPTH, Planner, PlannerStats
from .proposal import Proposal, oracle_fetch, verify
from .proposers import Proposers, Round, choose
from .request import DecodeOptions, Request, check_strategy, fit_prompt, prompt_ids
from .results import GenerationResult, Stats, Stream
from .runner import FETCH_LOGITS, RunOutput, chain_mask
from .sampling import SamplingConfig
from .shapes import TreeChoice, TreeConfig, cheap_draft, sampling_mode, tuned_trees
from .tokenizer import StreamDecoder, Tokenizer
from .tree import STAGE_NAMES, OracleTree, ancestor_mask


@dataclass
class DecodeState:
    tokens: list  # committed tokens; tokens[-1] is pending (not in the oracle's KV)
    n_prompt: int
    rng: np.random.Generator
    stats: Stats
    finish: str | None = None
    plan: tuple | None = None  # auto: (Option, depth limit) of the round in progress
    guide: Guide | None = None  # the grammar state of a constrained request

    @property
    def generated(self) -> int:
        return len(self.tokens) - self.n_prompt


class Generator:
    """Decodes with one bundle. Safe to share between threads: each ``generate`` call and each
    ``stream`` (from its first item to its end or ``close()``) holds the Generator's lock, so
    concurrent calls run one after another, never interleaved. A second call from the thread
    that is iterating an unfinished stream is refused (it would wait for itself). ``close()``
    (or the end of a ``with`` block) releases both runners; later calls are refused."""

    def __init__(
        self,
        bundle: str | Path,
        device: str = "auto",
        strategy: str = "auto",
        threads: int | None = None,
        tree: TreeConfig | None = None,
        max_context: int | None = None,
        tree_budget: int | None = None,
    ):
        check_strategy(strategy)
        self.bundle_dir, self.manifest = open_bundle(bundle)
        self.strategy = strategy
        self.tokenizer = Tokenizer.for_bundle(self.bundle_dir, self.manifest.tokenizer)
        self.oracle = make_runner(self.bundle_dir, self.manifest, "oracle", device, threads, max_context)
        self.draft = make_runner(self.bundle_dir, self.manifest, "draft", device, threads, max_context)
        self.draft2 = Draft2.from_manifest(self.bundle_dir, self.manifest)
        self.device, self.backend = self.oracle.device, self.oracle.backend
        self.threads = getattr(self.oracle, "threads", threads) or 0  # what the backend really uses
        self.tuning_key = tuning_key(self.device, self.backend, self.threads)
        entry = find_tuning(self.manifest.tuning, self.device, self.backend, self.threads)
        self.tuned = tuned_trees(entry, self.tuning_key)  # {mode: tree dict}, each validated
        # an explicit tree overrides the tuned / default one for every mode; tree_budget only
        # the oracle's node budget, over whichever tree (a call's own tree overrides both)
        cheap = cheap_draft(self.manifest.oracle.weight_bytes, self.manifest.draft.weight_bytes)
        self.trees = TreeChoice(tree, tree_budget, self.tuned, self.draft2.active, cheap)
        m = self.manifest
        self.context_limit = min(
            m.oracle.arch.max_positions, m.draft.arch.max_positions, self.oracle.max_context, self.draft.max_context
        )
        self.vocab = m.oracle.arch.vocab_size
        self.eos = m.tokenizer.eos_token_id
        self.oracle_weight_bytes = m.oracle.weight_bytes
        self.draft_weight_bytes = m.draft.weight_bytes
        cross_check(self.bundle_dir, m, self.tokenizer, self.draft2, (self.oracle, self.draft))
        self.proposers = Proposers(self.draft, self.draft2, self.vocab)
        self.planner = Planner.for_bundle(entry, m, self.draft2.active, self.tuned)  # strategy "auto"
        self.grammar = GrammarTokenizer(self.bundle_dir / m.tokenizer.file, self.vocab, self.eos)
        self._lock = threading.Lock()  # one decode at a time: the runners' KV caches are shared state
        self._owner: int | None = None  # thread id of the decode in progress
        self._closed = False

    @property
    def tree(self) -> TreeConfig | None:
        """The tree given at construction (read-only: pass ``tree=`` to a call instead)."""
        return self.trees.explicit

    @property
    def tree_budget(self) -> int | None:
        return self.trees.budget

    # -- life cycle ----------------------------------------------------------------------
    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self, timeout: float | None = None) -> bool:
        """Release both runners' sessions / engines and KV caches (idempotent). Waits for a
        decode in another thread to end (at most ``timeout`` seconds: then returns False, and
        nothing is released); refused in the thread iterating an unfinished stream."""
        self._refuse_reentry()
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            return False
        try:
            if not self._closed:
                self._closed = True
                self.oracle.close()
                self.draft.close()
            return True
        finally:
            self._lock.release()

    def _refuse_reentry(self) -> None:
        if self._owner == threading.get_ident():
            raise StagedxError(
                "this Generator is already decoding in this thread (an unfinished stream()?): "
                "exhaust or close() it first"
            )

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        self._refuse_reentry()
        with self._lock:
            if self._closed:
                raise StagedxError("this Generator is closed (its runners were released): make a new one")
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None

    # -- public API ----------------------------------------------------------------------
    def tree_for(self, sampling: SamplingConfig) -> TreeConfig:
        """The tree shape a call without ``tree=`` uses for this sampling mode: the Generator's
        explicit tree, else the tuned one, else the default (``trees.TreeChoice``)."""
        return self.trees.tree(sampling_mode(sampling))

    def three_stage_tree(self, sampling: SamplingConfig) -> TreeConfig:
        """A tree that always runs draft2 -> draft -> oracle (bench's ``staged3``)."""
        return self.trees.three_stage(sampling_mode(sampling))

    def generate(
        self, prompt: str | Sequence[int], *, options: DecodeOptions | None = None, **keywords
    ) -> GenerationResult:
        """Decode a continuation of ``prompt`` (a str or token ids). Options, as keywords or as
        ``options=DecodeOptions(...)`` (keywords override its fields): ``max_new_tokens``
        (128), ``sampling`` ("greedy", "topk:50", "topp:0.9", ... or a SamplingConfig),
        ``seed``, ``stop`` (strings), ``strategy`` (default: the Generator's), ``ignore_eos``,
        ``truncate`` (drop the prompt's start when it does not fit), ``tree`` (the tree shape
        for this call only), ``constraint`` (a ``Constraint``: JSON schema, regex or grammar
        the text must match); see ``DecodeOptions``."""
        req = self._request(prompt, DecodeOptions.build(options, keywords))
        with self._exclusive():
            st = self._start(req)
            for _ in self._rounds(req, st):
                pass
            return self._result(req, st)

    def stream(self, prompt: str | Sequence[int], *, options: DecodeOptions | None = None, **keywords) -> Stream:
        """Like ``generate`` (same options), as a ``Stream``: iterate it for the text as it is
        accepted (never splitting a UTF-8 character); its ``result`` is set once it is
        exhausted. The options are checked here; the Generator's lock is held from the first
        item until the stream ends or is closed."""
        return Stream(self._pieces(self._request(prompt, DecodeOptions.build(options, keywords))))

    def _pieces(self, req: Request) -> Coroutine[str, None, GenerationResult]:
        with self._exclusive():
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
            result = self._result(req, st)
            final = result.text  # cut before a stop string, without EOS
            if len(final) > sent:
                yield final[sent:]
            return result

    # -- request set-up ------------------------------------------------------------------
    def _request(self, prompt, opts: DecodeOptions) -> Request:
        ids = fit_prompt(prompt_ids(prompt, self.tokenizer), opts, self.vocab, self.context_limit)
        cfg = opts.sampling_config()
        strategy = check_strategy(opts.strategy or self.strategy)
        if strategy == "auto" and (opts.tree is not None or self.tree is not None or self.tree_budget is not None):
            strategy = "staged"  # an explicit tree (or node budget) is run as given, fixed
        return Request(
            ids,
            int(opts.max_new_tokens),
            cfg,
            opts.seed,
            opts.stop_strings(),
            strategy,
            bool(opts.ignore_eos),
            opts.tree or self.tree_for(cfg),
            opts.constraint,
        )

    def _start(self, req: Request) -> DecodeState:
        """Reset both caches and prefill the oracle with every prompt token but the last."""
        t0 = time.perf_counter()
        self.oracle.truncate(0)
        self.draft.truncate(0)
        auto = req.strategy == "auto"
        depth = max(req.tree.max_depth, req.tree.spec_k, MAX_DEPTH if auto else 0)
        stats = Stats(req.strategy, req.sampling.label, accepted_by_depth=[0] * (depth + 1))
        stats.planner = PlannerStats() if auto else None
        if auto:
            self.planner.begin(sampling_mode(req.sampling))
        st = DecodeState(req.prompt.tolist(), len(req.prompt), np.random.default_rng(req.seed), stats)
        if req.constraint is not None:
            st.guide = self.grammar.guide(req.constraint)
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
            t0 = time.perf_counter()
            if st.guide is None:
                proposal = self._propose(req, st, room).fit(room + 1)  # the oracle's free KV rows
                s.add_draft(proposal.cost)
                out = self._score(proposal.tree, n, req.sampling, s)
                verdict = verify(proposal, out, req.sampling, st.rng)
            else:
                proposal, verdict = self._guided_round(req, st, room)
            kept = self._commit(req, st, proposal, verdict)
            if st.plan is not None and st.guide is None:  # the whole round, commit included
                self._observe(req, st, (proposal, verdict, n), time.perf_counter() - t0)
            s.rounds += 1
            if kept:
                yield kept
        s.time_s["total"] = time.perf_counter() - t_start + s.time_s["prefill"]
        if st.guide is not None:
            s.time_s["grammar"], s.grammar_masks = st.guide.seconds, st.guide.masks
        s.time_s["other"] = s.time_s["total"] - sum(
            s.time_s[k] for k in ("prefill", "draft2", "draft", "oracle", "grammar")
        )

    def _guided_round(self, req: Request, st: DecodeState, room: int) -> tuple[Proposal, accept.Verdict]:
        """A round under the request's grammar (``constraint_tree``): forced tokens first, the
        usual proposal below them, refused nodes pruned, p and q masked when verifying."""
        build = lambda extra, depth: self._propose(req, dataclasses.replace(st, tokens=st.tokens + extra), depth)  # noqa: E731
        guided = guided_proposal(st.guide, build, st.tokens[-1], room, req.strategy != "baseline")
        st.stats.add_draft(guided.proposal.cost)
        st.stats.grammar_forced += guided.forced
        deepest = int(guided.proposal.tree.depth.max())  # forced chains may reach below the tree's depth
        st.stats.accepted_by_depth += [0] * (deepest + 1 - len(st.stats.accepted_by_depth))
        out = self._score(guided.proposal.tree, len(st.tokens), req.sampling, st.stats, (FETCH_LOGITS,))
        return guided.proposal, verify_guided(guided, out, st.guide, req.sampling, st.rng)

    def _score(self, tree: OracleTree, n: int, sampling: SamplingConfig, s: Stats, fetch=None) -> RunOutput:
        """One oracle call over the tree; its root sits at row ``n - 1``, the first the oracle lacks."""
        t0 = time.perf_counter()
        fetch = fetch or oracle_fetch(sampling)
        out = self.oracle.run(tree.tokens, n - 1 + tree.depth, ancestor_mask(tree.parents), fetch)
        s.time_s["oracle"] += time.perf_counter() - t0
        s.oracle_calls += 1
        s.count_calls("oracle", (len(tree.tokens),))
        return out

    def _propose(self, req: Request, st: DecodeState, room: int) -> Proposal:
        """This round's proposal. ``auto``: the planner's choice, from the committed tokens and
        past rounds only; otherwise the fixed rule ``proposers.choose`` (strategy, tree shape)."""
        tree = req.tree
        if req.strategy == "auto":
            mode = sampling_mode(req.sampling)
            st.plan = self.planner.choose(mode, room, len(st.tokens), st.stats.planner)
            (kind, tree), limit = (st.plan[0].kind, st.plan[0].tree), st.plan[1]
        else:
            kind, limit = choose(req.strategy, tree, req.sampling.greedy, room)
        return self.proposers.build(kind, Round(st.tokens, tree, req.sampling, st.rng, limit))

    def _observe(self, req: Request, st: DecodeState, round_: tuple, seconds: float) -> None:
        """Fold the round (``round_`` = proposal, verdict, committed tokens before it; ``seconds``:
        proposal, oracle call, verification and commit) into the planner."""
        proposal, verdict, n = round_
        opt, limit = st.plan
        st.stats.planner.trace.append((n - st.n_prompt, opt.label, seconds))
        c = proposal.cost
        mode = sampling_mode(req.sampling)
        rest = seconds - c.time_draft - c.time_draft2  # the oracle call, verification, commit, planning
        self.planner.observe_timing(mode, len(proposal.tree.tokens), n, rest)
        self.planner.observe(mode, opt, limit, proposal, len(verdict.path) - 1, st.stats.planner)

    def _commit(self, req: Request, st: DecodeState, proposal: Proposal, verdict: accept.Verdict) -> list:
        """Keep what the finish rules allow, then commit KV rows and tokens consistently."""
        s, tree = st.stats, proposal.tree
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
        if st.guide is not None:
            st.guide.commit(emitted[:keep].tolist())
        common = accept.common_prefix(np.asarray(proposal.draft_path, np.int64), emitted[:keep])
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
