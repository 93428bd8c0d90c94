"""``stagedx tune``: choose the tree shape that maximises expected tokens/s on this device.

Method (all measured here, nothing assumed):

1. **Latency curves.** Through the runners, with a committed past of ``past_len`` tokens:
   the oracle's call latency against the number of new tokens T (tree size), the draft's
   against its batch size. Median of a few calls each.
2. **Acceptance.** Real staged generations on calibration prompts (HumanEval 82-163 by
   default, disjoint from a benchmark over the first 82 or fewer) for each candidate tree
   configuration; the decode statistics give, per round, the accepted tokens (and their
   depths), the draft calls and the Python overhead (draft2 + bookkeeping time).
3. **Cost model.** expected tokens/s = (tokens per round) / (draft calls per round x
   draft latency(batch) + oracle latency(budget + 1) + overhead per round). Acceptance
   counts are properties of the models (deterministic for greedy decoding), the costs come
   from the smooth latency curves, so noise from a shared machine barely moves the choice.
4. **Search.** Coordinate ascent from the runtime defaults over budget, max depth, draft2
   fan-outs, draft calls and draft batch; every evaluated candidate is kept in the result.

The winners are stored in the bundle's manifest under ``tuning["<device>|<backend>|<threads>"]``
as ``{"greedy": {TreeConfig fields...}, "sample": {...}, <measured curves>}`` with one atomic
manifest update; the runtime uses the entry whose device and backend match its own (nearest
thread count), and in it the mode of the request, so a GPU budget is never used on a CPU.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

ORACLE_SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64)
DRAFT_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64)
SEARCH_SPACE = {
    "budget": (0, 2, 4, 6, 8, 12, 16, 24, 32, 48),  # 0: no speculation (never slower than baseline)
    "max_depth": (3, 4, 6, 8, 10, 12),
    "fanouts": ((2, 1, 1, 1, 1, 1), (2, 1, 1, 1, 1, 1, 1, 1, 1, 1), (4, 2, 1, 1, 1, 1), (4, 2, 1, 1, 1, 1, 1, 1, 1, 1),
                (8, 4, 2, 1, 1, 1), (12, 7, 4, 1, 1, 1), (16, 8, 4, 2, 1, 1)),  # fmt: skip
    "draft_calls": (0, 1, 2, 3, 4),  # 0: draft2 feeds the oracle directly
    "draft_batch": (8, 16, 32, 48),
}


@dataclass(frozen=True)
class TuneConfig:
    calibration: str = "humaneval:82-163"
    limit: int | None = 8
    max_new_tokens: int = 64
    samplings: tuple = ("greedy", "topk:50")  # one search per mode, stored per mode
    past_len: int = 200
    latency_repeats: int = 7
    passes: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Evaluation:
    """Raw counts of the staged runs of one candidate, and the cost-model prediction."""

    tree: dict
    new_tokens: int
    rounds: int
    draft_calls: int
    overhead_s: float  # draft2 + other (Python) time, prefill excluded
    wall_s: float
    accepted_by_depth: tuple
    predicted_tokens_per_s: float

    @property
    def tokens_per_round(self) -> float:
        return self.new_tokens / max(1, self.rounds)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tokens_per_round"] = self.tokens_per_round
        d["measured_tokens_per_s"] = self.new_tokens / self.wall_s if self.wall_s > 0 else None
        return d


# -- latency curves --------------------------------------------------------------------------
def latency_curve(runner, sizes: Sequence[int], context: np.ndarray, repeats: int) -> dict:
    """Median seconds of ``runner.run`` for T new tokens after ``len(context)`` committed ones."""
    from ..runtime.runner import chain_mask

    runner.truncate(0)
    p = len(context)
    runner.run(context, np.arange(p), chain_mask(p))
    runner.commit(np.arange(p))
    rng = np.random.default_rng(0)
    vocab = runner.entry.arch.vocab_size
    curve = {}
    for t in sizes:
        if p + t > getattr(runner, "max_context", p + t):
            break
        tokens = rng.integers(0, vocab, t).astype(np.int64)
        pos, mask = p + np.arange(t), chain_mask(t)
        runner.run(tokens, pos, mask)  # warm this shape
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            runner.run(tokens, pos, mask)
            times.append(time.perf_counter() - t0)
        curve[int(t)] = float(np.median(times))
    runner.truncate(0)
    return curve


def interp(curve: dict, t: float) -> float:
    xs = sorted(curve)
    return float(np.interp(t, xs, [curve[x] for x in xs]))


# -- cost model ------------------------------------------------------------------------------
def draft_batch_size(tree: dict) -> float:
    """Nodes per draft call: the chain end plus draft2's candidates, capped by the batch."""
    depth = int(tree["max_depth"])
    return float(min(int(tree["draft_batch"]), 1 + sum(tree["fanouts"][:depth])))


def predict_tokens_per_s(ev_counts: dict, tree: dict, oracle_curve: dict, draft_curve: dict) -> float:
    """ev_counts: new_tokens, rounds, draft_calls, overhead_s (sums over calibration runs)."""
    rounds = max(1, ev_counts["rounds"])
    round_s = (
        ev_counts["draft_calls"] / rounds * interp(draft_curve, draft_batch_size(tree))
        + interp(oracle_curve, int(tree["budget"]) + 1)
        + ev_counts["overhead_s"] / rounds
    )
    return (ev_counts["new_tokens"] / rounds) / round_s


def tree_dict(cfg) -> dict:
    d = dataclasses.asdict(cfg)
    d["fanouts"] = list(d["fanouts"])
    return d


# -- acceptance on calibration prompts ---------------------------------------------------------
def evaluate(gen, cfg, prompts, tune: TuneConfig, curves: tuple) -> Evaluation:
    """Staged runs of every calibration prompt with tree config ``cfg``."""
    gen.tree = cfg
    sums = {"new_tokens": 0, "rounds": 0, "draft_calls": 0, "overhead_s": 0.0}
    wall, depth = 0.0, np.zeros(cfg.max_depth, np.int64)
    for i, prompt in enumerate(prompts):
        t0 = time.perf_counter()
        res = gen.generate(prompt.text, tune.max_new_tokens, sampling=tune.samplings[0], seed=tune.seed + i,
                           strategy="staged", ignore_eos=True, truncate=True)  # fmt: skip
        wall += time.perf_counter() - t0
        s = res.stats.as_dict()
        sums["new_tokens"] += s["new_tokens"]
        sums["rounds"] += s.get("rounds", s["oracle_calls"])
        sums["draft_calls"] += s["draft_calls"]
        sums["overhead_s"] += s["time_s"]["draft2"] + s["time_s"]["other"]
        acc = np.asarray(s["accepted_by_depth"][: cfg.max_depth], np.int64)
        depth[: len(acc)] += acc
    tree = tree_dict(cfg)
    pred = predict_tokens_per_s(sums, tree, *curves)
    return Evaluation(tree, sums["new_tokens"], sums["rounds"], sums["draft_calls"], sums["overhead_s"], wall,
                      tuple(int(x) for x in depth), pred)  # fmt: skip


def coordinate_search(start, score: Callable, passes: int = 1, on_eval: Callable | None = None) -> tuple:
    """Coordinate ascent over SEARCH_SPACE from ``start`` (a TreeConfig); ``score(cfg)`` returns an
    Evaluation. Returns (best Evaluation, best TreeConfig, all evaluations)."""
    cache: dict = {}

    def get(cfg):
        if cfg not in cache:
            cache[cfg] = score(cfg)
            if on_eval:
                on_eval(cache[cfg])
        return cache[cfg]

    best = start
    for _ in range(passes):
        for name, values in SEARCH_SPACE.items():
            cands = [dataclasses.replace(best, **{name: v}) for v in values]
            cands = [c for c in cands if _valid(c)]
            best = max([best] + cands, key=lambda c: get(c).predicted_tokens_per_s)
    return cache[best], best, list(cache.values())


def _valid(cfg) -> bool:
    return cfg.budget >= 0 and cfg.max_depth >= 1 and cfg.draft_batch >= 2 and cfg.draft_calls >= 0


# -- the command ---------------------------------------------------------------------------------
def tune_bundle(bundle, gen, tune: TuneConfig, echo: Callable = print) -> dict:
    """Measure, search, store. Returns the stored entry."""
    from ..manifest import load_manifest, update_manifest, utc_now
    from ..runtime.generator import sampling_mode
    from ..runtime.sampling import SamplingConfig
    from .prompts import load_prompts

    prompts = load_prompts(tune.calibration, tune.limit)
    ids = np.concatenate([np.asarray(gen.tokenizer.encode(p.text), np.int64) for p in prompts])
    need = tune.past_len
    context = np.resize(ids, need) if len(ids) else np.zeros(need, np.int64)
    echo(f"measuring oracle latency vs tree size and draft latency vs batch (past {need} tokens) ...")
    oracle_curve = latency_curve(gen.oracle, ORACLE_SIZES, context, tune.latency_repeats)
    draft_curve = latency_curve(gen.draft, DRAFT_SIZES, context, tune.latency_repeats)
    echo("  oracle ms: " + "  ".join(f"T={t}:{1e3 * s:.2f}" for t, s in oracle_curve.items()))
    echo("  draft  ms: " + "  ".join(f"B={t}:{1e3 * s:.2f}" for t, s in draft_curve.items()))
    curves = (oracle_curve, draft_curve)

    tuning = dict(load_manifest(bundle, check_files=False).tuning)
    key = tuning_key(gen)
    entry = dict(tuning.get(key, {}))
    for sampling in tune.samplings:
        mode = sampling_mode(SamplingConfig.parse(sampling))
        entry[mode] = search_mode(gen, prompts, dataclasses.replace(tune, samplings=(sampling,)), curves, echo)
    gen.tree = None
    entry.update({
        "tuned_utc": utc_now(),
        "calibration": {"prompts": tune.calibration, "n_prompts": len(prompts), "max_new_tokens": tune.max_new_tokens},
        "past_len": need,
        "oracle_latency_s": {str(k): v for k, v in oracle_curve.items()},
        "draft_latency_s": {str(k): v for k, v in draft_curve.items()},
    })  # fmt: skip
    tuning[key] = entry
    update_manifest(bundle, tuning=tuning)
    echo(f"stored tuning[{key!r}] for {', '.join(m for m in ('greedy', 'sample') if m in entry)}")
    return entry


def search_mode(gen, prompts, tune: TuneConfig, curves: tuple, echo: Callable) -> dict:
    """Coordinate search for one sampling mode; returns its entry (TreeConfig fields + evidence)."""
    from ..runtime.generator import DEFAULT_TREES, sampling_mode
    from ..runtime.sampling import SamplingConfig

    sampling = tune.samplings[0]
    echo(f"searching tree shapes on {len(prompts)} calibration prompts ({tune.calibration}), "
         f"{tune.max_new_tokens} tokens each, {sampling} ...")  # fmt: skip

    def show(ev: Evaluation) -> None:
        t = ev.tree
        echo(f"  budget={t['budget']:<3} depth={t['max_depth']:<3} fanouts={tuple(t['fanouts'])} "
             f"calls={t['draft_calls']} batch={t['draft_batch']:<3} -> {ev.tokens_per_round:.2f} tok/round, "
             f"predicted {ev.predicted_tokens_per_s:.1f} tok/s")  # fmt: skip

    start = DEFAULT_TREES[sampling_mode(SamplingConfig.parse(sampling))]
    best_ev, best_cfg, evals = coordinate_search(
        start, lambda c: evaluate(gen, c, prompts, tune, curves), tune.passes, show
    )
    echo(f"best for {sampling}: budget={best_cfg.budget} max_depth={best_cfg.max_depth} "
         f"fanouts={best_cfg.fanouts} draft_calls={best_cfg.draft_calls} draft_batch={best_cfg.draft_batch} "
         f"(predicted {best_ev.predicted_tokens_per_s:.1f} tokens/s, {best_ev.tokens_per_round:.2f} tokens/round)")  # fmt: skip
    return {
        **tree_dict(best_cfg),
        "sampling": sampling,
        "overhead_s_per_round": best_ev.overhead_s / max(1, best_ev.rounds),
        "tokens_per_round": best_ev.tokens_per_round,
        "accepted_by_depth_per_round": [x / max(1, best_ev.rounds) for x in best_ev.accepted_by_depth],
        "predicted_tokens_per_s": best_ev.predicted_tokens_per_s,
        "candidates": [e.as_dict() for e in evals],
    }


def tuning_key(gen) -> str:
    return getattr(gen, "tuning_key", None) or f"{gen.device}|{gen.backend}|{gen.threads or 0}"
