"""``stagedx tune``: choose the tree shape that maximises expected tokens/s on this device.

Method (all measured here, nothing assumed):

1. **Latency curves.** Through the runners, with a committed past of ``past_len`` tokens:
   the oracle's call latency against the number of new tokens T (tree size), the draft's
   against its batch size. Median of a few calls each.
2. **Acceptance.** Real staged generations on calibration prompts (HumanEval 82-163 by
   default, disjoint from a benchmark over the first 82 or fewer) for each candidate tree
   configuration; the decode statistics give, per round, the accepted tokens (and their
   depths), the draft calls and the Python overhead (draft2 + bookkeeping time).
3. **Cost model.** expected tokens/s = tokens / (sum over the runs' draft calls of draft
   latency(call size) x f_draft + sum over oracle calls of oracle latency(tree size) x f_oracle
   + Python overhead). Every call's size is counted by the decode loop (``Stats.call_sizes``),
   so dynamic depth and pruned trees are priced as they really ran. ``f_draft`` / ``f_oracle``
   are in-loop factors: the phase times of a short staged run on the tuned bundle divided by
   what the isolated curves predict for the same calls (a draft call right after an oracle call
   costs more than in isolation). Acceptance counts are properties of the models, the costs
   come from smooth curves, so noise from a shared machine barely moves the choice.
4. **Search.** Coordinate ascent over a per-mode space (budget up to 63 tree nodes, depth,
   draft2 fan-outs, draft calls, dynamic-depth threshold, draft batch; for sampled modes also
   drawn-children widths and deterministic extras), from several starts (draft2-only, draft
   chain, three-stage; sampled chain and sampled tree) sharing one cache of evaluations.
   Every evaluated candidate is kept in the result; the best three-stage candidate (draft2 ->
   draft -> oracle) is stored beside the winner for ``bench``'s ``staged3``.
5. **A large oracle without hours of generation** (``acceptance_from``): acceptance depends
   only on what the models compute, so a bundle that computes the same functions (the small
   pair a cost-scaled twin was built from) runs the calibration generations, while the latency
   curves and in-loop factors are measured on the tuned bundle itself.

The winners are stored in the bundle's manifest under ``tuning["<device>|<backend>|<threads>"]``
as ``{"greedy": {TreeConfig fields...}, "sample": {...}, <measured curves>}`` with one atomic
manifest update; the runtime uses the entry whose device and backend match its own (nearest
thread count), and in it the mode of the request, so a GPU budget is never used on a CPU.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .costs import (
    DRAFT_SIZES,
    ORACLE_SIZES,
    in_loop_factors,
    latency_curve,
    predict_tokens_per_s,
    stored_curves,
)

SEARCH_SPACE = {  # greedy
    "budget": (0, 2, 4, 7, 11, 15, 23, 31, 47, 63),  # 0: no speculation; budget + 1 = tree tokens
    "max_depth": (3, 4, 6, 8, 10, 12, 16),
    "fanouts": (
        (),
        (2, 1, 1, 1, 1, 1),
        (2,) + (1,) * 9,
        (1,) * 15,
        (2,) + (1,) * 15,
        (4, 2, 1, 1, 1, 1),
        (4, 2) + (1,) * 8,
        (8, 4, 2, 1, 1, 1),
        (12, 7, 4, 1, 1, 1),
        (16, 8, 4, 2, 1, 1),
    ),
    "draft_calls": (0, 1, 2, 3, 4, 6, 8),  # 0: draft2 feeds the oracle directly
    "stop_p": (0.0, 0.05, 0.2, 0.5),  # dynamic depth (with draft_calls as the cap)
    "draft_batch": (8, 16, 32, 48),
}
SAMPLED_SPACE = {  # sampled modes: drawn children (widths) or, with widths (), best-first trees
    "budget": SEARCH_SPACE["budget"][1:],
    "widths": (
        (),
        (1, 1, 1),
        (1, 1, 1, 1),
        (1, 1, 1, 1, 1),
        (1, 1, 1, 1, 1, 1),
        (2, 1, 1),
        (2, 1, 1, 1),
        (2, 1, 1, 1, 1, 1),
        (3, 1, 1, 1),
        (4, 1, 1),
        (4, 1, 1, 1),
        (4, 2, 1),
        (8, 1, 1),
        (4, 2, 1, 1),
    ),
    "extra": (0, 1, 2, 4),
    "max_depth": (3, 4, 6, 8),
    "lookahead": (0, 2, 3, 5),  # draft2 levels a drawn chain's draft calls score ahead
    "fanouts": SEARCH_SPACE["fanouts"][:2] + ((4, 2, 1), (3,), (2, 1, 1, 1, 1), (1, 1, 1, 1, 1), (3, 2, 1, 1, 1)),
    "draft_calls": (0, 1, 2, 3),
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
    acceptance_from: str | None = None  # a bundle computing the same functions runs the generations
    reuse_curves: bool = False  # price with the curves and factors already stored for this device


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
    call_sizes: dict = dataclasses.field(default_factory=dict)

    @property
    def tokens_per_round(self) -> float:
        return self.new_tokens / max(1, self.rounds)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["tokens_per_round"] = self.tokens_per_round
        d["measured_tokens_per_s"] = self.new_tokens / self.wall_s if self.wall_s > 0 else None
        return d


# -- acceptance on calibration prompts ---------------------------------------------------------
def evaluate(gen, cfg, prompts, tune: TuneConfig, curves: tuple, factors: dict | None = None) -> Evaluation:
    """Staged runs of every calibration prompt with tree config ``cfg``."""
    sums = {
        "new_tokens": 0,
        "rounds": 0,
        "draft_calls": 0,
        "overhead_s": 0.0,
        "call_sizes": {"oracle": {}, "draft": {}},
    }
    wall, depth = 0.0, np.zeros(cfg.max_depth, np.int64)
    for i, prompt in enumerate(prompts):
        t0 = time.perf_counter()
        res = gen.generate(
            prompt.text,
            max_new_tokens=tune.max_new_tokens,
            sampling=tune.samplings[0],
            seed=tune.seed + i,
            strategy="staged",
            ignore_eos=True,
            truncate=True,
            tree=cfg,
        )
        wall += time.perf_counter() - t0
        s = res.stats.as_dict()
        sums["new_tokens"] += s["new_tokens"]
        sums["rounds"] += s.get("rounds", s["oracle_calls"])
        sums["draft_calls"] += s["draft_calls"]
        sums["overhead_s"] += s["time_s"]["draft2"] + s["time_s"]["other"]
        for m, hist in s.get("call_sizes", {}).items():
            for t, n in hist.items():
                sums["call_sizes"][m][int(t)] = sums["call_sizes"][m].get(int(t), 0) + n
        acc = np.asarray(s["accepted_by_depth"][: cfg.max_depth], np.int64)
        depth[: len(acc)] += acc
    tree = cfg.to_dict()
    pred = predict_tokens_per_s(sums, tree, *curves, factors)
    return Evaluation(
        tree,
        sums["new_tokens"],
        sums["rounds"],
        sums["draft_calls"],
        sums["overhead_s"],
        wall,
        tuple(int(x) for x in depth),
        pred,
        {m: {str(t): n for t, n in sorted(h.items())} for m, h in sums["call_sizes"].items()},
    )


def coordinate_search(
    start,
    score: Callable,
    passes: int = 1,
    on_eval: Callable | None = None,
    space: dict | None = None,
    cache: dict | None = None,
) -> tuple:
    """Coordinate ascent over ``space`` (default SEARCH_SPACE) from ``start`` (a TreeConfig);
    ``score(cfg)`` returns an Evaluation; ``cache`` (cfg -> Evaluation) may be shared between
    starts. Returns (best Evaluation, best TreeConfig, all evaluations)."""
    cache = {} if cache is None else cache
    space = SEARCH_SPACE if space is None else space

    def get(cfg):
        key = effective(cfg)
        if key not in cache:
            cache[key] = score(cfg)
            if on_eval:
                on_eval(cache[key])
        return cache[key]

    best = start
    get(best)
    for _ in range(passes):
        for name, values in space.items():
            if not _relevant(name, best):
                continue
            cands = [dataclasses.replace(best, **{name: v}) for v in values]
            cands = [c for c in cands if _valid(c)]
            best = max([best] + cands, key=lambda c: get(c).predicted_tokens_per_s)
    return get(best), best, list(cache.values())


def effective(cfg):
    """The config with every field that cannot change what it does normalised, so configs that
    behave alike are evaluated once (e.g. a budget above the nodes a shape can propose)."""
    base = type(cfg)()
    if cfg.budget == 0:  # no speculation, whatever the shape
        return dataclasses.replace(base, budget=0, tau=cfg.tau, spec_k=cfg.spec_k)
    if cfg.widths:
        widths = cfg.widths[: cfg.max_depth]
        nodes = int(np.sum(np.cumprod(widths))) + cfg.extra
        look = min(cfg.lookahead, len(widths) - 1, len(cfg.fanouts))  # levels whose q can be needed
        return dataclasses.replace(
            base,
            budget=min(cfg.budget, nodes),
            max_depth=len(widths),
            widths=widths,
            extra=cfg.extra,
            lookahead=look,
            fanouts=cfg.fanouts[:look] if look else base.fanouts,
            draft_batch=cfg.draft_batch if look else base.draft_batch,
            tau=cfg.tau,
            spec_k=cfg.spec_k,
        )
    if cfg.draft_calls == 0:
        nodes = int(sum(cfg.fanouts[: cfg.max_depth]))
        return dataclasses.replace(
            cfg, budget=min(cfg.budget, nodes), stop_p=base.stop_p, draft_batch=base.draft_batch, extra=0
        )
    return dataclasses.replace(cfg, extra=0)


def _relevant(name: str, cfg) -> bool:
    """Whether ``name`` changes what a tree config does (skip evaluations that cannot differ)."""
    if cfg.widths:  # a sampled tree: draws per level, extras, budget, depth, draft2 lookahead
        return name in ("budget", "widths", "extra", "max_depth", "lookahead") or (
            name == "fanouts" and cfg.lookahead > 0
        )
    if name in ("extra", "lookahead"):
        return False
    if cfg.draft_calls == 0:
        return name not in ("stop_p", "draft_batch")
    return True


def _valid(cfg) -> bool:
    return cfg.budget >= 0 and cfg.max_depth >= 1 and cfg.draft_batch >= 2 and cfg.draft_calls >= 0


# -- the command ---------------------------------------------------------------------------------
def tune_bundle(bundle, gen, tune: TuneConfig, echo: Callable = print, twin=None) -> dict:
    """Measure, search, store. ``twin``: a Generator on ``tune.acceptance_from`` that runs the
    calibration generations in place of ``gen`` (curves and factors still come from ``gen``).
    Returns the stored entry."""
    from ..files import utc_now
    from ..manifest import TuningEntry, load_manifest, update_manifest
    from ..runtime.sampling import SamplingConfig
    from ..runtime.shapes import sampling_mode
    from .prompts import load_prompts, render_chat

    prompts = render_chat(load_prompts(tune.calibration, tune.limit), gen.manifest, gen.tokenizer)
    ids = np.concatenate([np.asarray(gen.tokenizer.encode(p.text), np.int64) for p in prompts])
    need = tune.past_len
    context = np.resize(ids, need) if len(ids) else np.zeros(need, np.int64)
    tuning = dict(load_manifest(bundle, check_files=False).tuning)
    key = tuning_key(gen)
    stored = tuning.get(key, TuningEntry())
    entry = stored.to_dict()  # this run's JSON object: modes not searched now are kept
    if tune.reuse_curves:
        curves, factors, need = stored_curves(stored, key)
        echo(f"pricing with the curves stored under {key!r} (past {need} tokens)")
    else:
        echo(f"measuring oracle latency vs tree size and draft latency vs batch (past {need} tokens) ...")
        oracle_curve = latency_curve(gen.oracle, ORACLE_SIZES, context, tune.latency_repeats)
        draft_curve = latency_curve(gen.draft, DRAFT_SIZES, context, tune.latency_repeats)
        curves = (oracle_curve, draft_curve)
        factors = in_loop_factors(gen, prompts[0], curves)
    echo("  oracle ms: " + "  ".join(f"T={t}:{1e3 * s:.2f}" for t, s in curves[0].items()))
    echo("  draft  ms: " + "  ".join(f"B={t}:{1e3 * s:.2f}" for t, s in curves[1].items()))
    echo(
        f"  in-loop factors (phase time / isolated curve): oracle {factors['oracle']:.2f}, draft {factors['draft']:.2f}"
    )
    oracle_curve, draft_curve = curves
    if twin is not None:
        echo(f"calibration generations run on {tune.acceptance_from} (same functions, acceptance only)")

    for sampling in tune.samplings:
        mode = sampling_mode(SamplingConfig.parse(sampling))
        entry[mode] = search_mode(
            twin or gen, prompts, dataclasses.replace(tune, samplings=(sampling,)), curves, echo, factors
        )
    entry.update(
        {
            "tuned_utc": utc_now(),
            "calibration": {
                "prompts": tune.calibration,
                "n_prompts": len(prompts),
                "max_new_tokens": tune.max_new_tokens,
                "acceptance_from": tune.acceptance_from,
            },
            "past_len": need,
            "oracle_latency_s": {str(k): v for k, v in oracle_curve.items()},
            "draft_latency_s": {str(k): v for k, v in draft_curve.items()},
            "in_loop_factors": factors,
        }
    )
    tuning[key] = TuningEntry.from_dict(entry, key)
    update_manifest(bundle, tuning=tuning)
    echo(f"stored tuning[{key!r}]: one tree for greedy decoding, one for sampled modes ({', '.join(tune.samplings)})")
    return tuning[key]


def _starts(gen, mode: str) -> list:
    """Starting points: the runtime default, a draft chain (what speculative does), a
    three-stage tree; for sampled modes a drawn chain and a drawn tree too."""
    from ..runtime.shapes import DEFAULT_TREES, FAN10, THREE_STAGE_TREES, TreeConfig

    starts = [DEFAULT_TREES[mode], THREE_STAGE_TREES[mode]]
    if mode == "greedy":
        starts.append(TreeConfig(budget=11, max_depth=12, fanouts=(), draft_calls=6, stop_p=0.05))
    else:
        starts += [
            TreeConfig(budget=4, max_depth=4, fanouts=FAN10, draft_calls=1, widths=(1, 1, 1, 1)),
            TreeConfig(budget=11, max_depth=6, fanouts=FAN10, draft_calls=1, widths=(3, 1, 1, 1)),
            TreeConfig(budget=6, max_depth=4, fanouts=(2, 1, 1), draft_calls=1, widths=(1, 1, 1, 1), lookahead=3),
        ]
    if not gen.draft2.active:  # draft2-only trees propose nothing
        starts = [dataclasses.replace(s, lookahead=0) for s in starts if s.draft_calls > 0 or s.widths]
    return list(dict.fromkeys(starts))


def is_three_stage(tree: dict, draft2_kind: str) -> bool:
    """Whether a tree runs draft2 -> draft -> oracle: the draft is called and draft2 feeds it
    (best-first trees) or, in sampled trees, adds candidates beside the drawn children or
    proposes ahead of the drawn chain for the draft to score (``lookahead``)."""
    if draft2_kind == "none":
        return False
    if tree.get("widths"):
        return int(tree.get("extra", 0)) > 0 or int(tree.get("lookahead", 0)) > 0
    return int(tree["draft_calls"]) > 0 and len(tree["fanouts"]) > 0


def search_mode(gen, prompts, tune: TuneConfig, curves: tuple, echo: Callable, factors: dict | None = None) -> dict:
    """Coordinate search for one sampling mode; returns its entry (TreeConfig fields + evidence)."""
    from ..runtime.sampling import SamplingConfig
    from ..runtime.shapes import sampling_mode

    sampling = tune.samplings[0]
    mode = sampling_mode(SamplingConfig.parse(sampling))
    echo(
        f"searching tree shapes on {len(prompts)} calibration prompts ({tune.calibration}), "
        f"{tune.max_new_tokens} tokens each, {sampling} ..."
    )

    show = lambda ev: None  # noqa: E731  (candidates are summed up below, not printed one by one)
    space = SEARCH_SPACE if mode == "greedy" else SAMPLED_SPACE
    cache: dict = {}
    best_ev = best_cfg = None
    for start in _starts(gen, mode):
        ev, cfg, _ = coordinate_search(
            start, lambda c: evaluate(gen, c, prompts, tune, curves, factors), tune.passes, show, space, cache
        )
        if best_ev is None or ev.predicted_tokens_per_s > best_ev.predicted_tokens_per_s:
            best_ev, best_cfg = ev, cfg
    evals = list(cache.values())
    echo(f"  {len(evals)} tree shapes evaluated")
    echo(
        f"best for {sampling}: {_describe(best_ev)} "
        f"(predicted {best_ev.predicted_tokens_per_s:.1f} tokens/s, {best_ev.tokens_per_round:.2f} tokens/round)"
    )
    kind = gen.draft2.kind
    three = [e for e in evals if is_three_stage(e.tree, kind)]
    out = {
        **best_cfg.to_dict(),
        "sampling": sampling,
        "overhead_s_per_round": best_ev.overhead_s / max(1, best_ev.rounds),
        "tokens_per_round": best_ev.tokens_per_round,
        "accepted_by_depth_per_round": [x / max(1, best_ev.rounds) for x in best_ev.accepted_by_depth],
        "predicted_tokens_per_s": best_ev.predicted_tokens_per_s,
        "candidates": [e.as_dict() for e in evals],
    }
    if three:
        best3 = max(three, key=lambda e: e.predicted_tokens_per_s)
        out["three_stage"] = dict(best3.tree)
        echo(
            f"best three-stage for {sampling}: {_describe(best3)} "
            f"(predicted {best3.predicted_tokens_per_s:.1f} tokens/s)"
        )
    return out


def _describe(ev: Evaluation) -> str:
    from ..runtime.shapes import TreeConfig, describe

    return describe(TreeConfig.from_dict(ev.tree))


def tuning_key(gen) -> str:
    from ..manifest import tuning_key as build_key

    return getattr(gen, "tuning_key", None) or build_key(gen.device, gen.backend, gen.threads)
