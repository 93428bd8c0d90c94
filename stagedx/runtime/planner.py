"""The online planner of ``--strategy auto``: before each round it picks the proposal (no
speculation, the draft's chain, a draft2 tree of some depth, a draft tree fed by draft2, the
tuned tree) that maximises expected tokens per second, from what this Generator has measured.

- **Acceptance** per family of proposals (``draft2``, ``chain``, each staged tree, ``tuned``)
  and per depth: the conditional probability that the walk accepts a node at depth d once it
  reached depth d - 1, kept as exponentially decayed hit / trial counts over the rounds that
  ran that family, with a built-in conservative prior (a tuned tree gets a warmer one). A
  round whose walk stops at depth k < the depth limit is a failed trial at depth k + 1, whether
  the oracle rejected the children or the tree had none there: the estimate is what a tree of
  that family really yields.
- **Cost** (``planner_cost.CostModel``): a round's oracle-side seconds (the call, verification,
  commit, planning) by tree tokens and past length, per sampling mode; draft seconds by batch;
  draft2 seconds per family.
- **Choice**: expected tokens ``1 + sum_d prod_{j<=d} a_j`` over each candidate's depth,
  divided by its predicted seconds, for every candidate at once (NumPy over ~35 options);
  ties go to the earlier (cheaper) option; a choice is reused for ``REFRESH`` rounds
  (``REFRESH_OFF`` while it is no speculation). A family unused for ``PROBE_EVERY`` rounds is
  probed once if it could still beat the best at optimistic acceptance (the gap doubles after
  each probe that does not win it back), so a stage switched off is tried again at shrinking
  cost; the best family runs once at each untimed call size that might be worth as much.

Exactness and seeds: the choice reads only past rounds (their accepted depths and timings),
never the round's own oracle output, so greedy output is token-exact and sampled output
follows the oracle's law whatever is chosen. Greedy decisions use everything live: the
Generator's acceptance and its measured costs, carried from request to request. Sampled: which
text a seed gives depends on the proposal only for drawn ones (the draft's drawn chain or
tree); per-node trees and no speculation emit the baseline's text seed for seed (one draw
from the oracle per emitted token). So whether sampled requests may use drawn proposals is
fixed per bundle and device (the fixed cost model at the prior acceptance, by a clear margin:
in practice, a draft cheap beside its oracle). Without them, the sampled plan is live like greedy's and the
text is the baseline's. With them, a decision depends only on the request and the bundle:
acceptance starts from the priors at every request and learns from that request's own rounds,
and costs come from the fixed model (the manifest's tuned curves, else the built-in prior),
never from live timings. Either way the same seeded request gives the same text on every call,
every launch and under any load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .planner_cost import MAX_TOKENS, CostModel, prior_from
from .proposers import CHAIN, DRAFT2_TREE, DRAFT_TREE, NONE, SAMPLED_TREE
from .shapes import (
    CHEAP_DRAFT_TREES,
    GREEDY,
    NO_DRAFT2_TREES,
    SAMPLE,
    THREE_STAGE_TREES,
    TreeConfig,
)

MAX_DEPTH = 16  # deepest node any option proposes
PRIOR_WEIGHT = 2.0  # trials the prior counts for
DECAY = 0.95  # per observation: old counts fade, so acceptance follows the text's character
PROBE_EVERY = 16  # rounds after which an unused family is first tried again (doubling while it loses)
MAX_GAP = 512
SIZE_MARGIN = 0.8  # an option whose call size was never timed is run once if worth this share of the best
REFRESH = 4  # rounds a choice is reused (the estimates move little in fewer)
REFRESH_OFF = 16  # ... when it is no speculation (only the 1-token call's timing is new)
# sampled requests may use drawn proposals (whose text depends on the proposal) only when the
# fixed cost model at the prior acceptance says they beat every per-node one by this factor:
# a margin for what the prior does not see (a sampled draft call fetches and warps the whole
# vocabulary; per-node trees are priced live, drawn ones are not)
DRAWN_MARGIN = 1.15
# conservative built-in priors: conditional acceptance per depth, by family and mode
PRIORS = {
    GREEDY: {"draft2": 0.4, "chain": 0.55, "staged": 0.55, "staged2": 0.55, "staged4": 0.55, "tuned": 0.7},
    SAMPLE: {"draft2": 0.3, "chain": 0.5, "drawn": 0.5, "drawn3": 0.5, "staged": 0.4, "tuned": 0.55},
}
FAN15 = (2,) + (1,) * 14  # draft2's thin tree: a fork at the root, then its best chain


@dataclass(frozen=True)
class Option:
    """One candidate proposal: the proposer ``kind``, its tree shape and deepest node, and
    the ``family`` whose acceptance statistics price it."""

    family: str
    kind: str
    depth: int
    tree: TreeConfig
    label: str

    @property
    def nodes(self) -> int:  # most tree nodes below the root
        return self.depth if self.kind == CHAIN else self.tree.budget

    @property
    def draft_calls(self) -> int:
        t = self.tree
        if self.kind == CHAIN:
            return self.depth
        if self.kind == SAMPLED_TREE:  # one call per drawn level, fewer with draft2 lookahead
            return -(-len(t.widths) // (1 + t.lookahead))
        return t.draft_calls if self.kind == DRAFT_TREE else 0


def menu(mode: str, has_draft2: bool, tuned: TreeConfig | None = None) -> tuple[Option, ...]:
    """The candidates for a sampling mode: no speculation, draft2 trees of every depth, the
    draft's chain, draft trees fed by draft2 (greedy) or drawn trees (sampled), the tuned tree."""
    greedy = mode == GREEDY
    opts = [Option("none", NONE, 0, TreeConfig(budget=0), "none")]
    if has_draft2:
        head = 2 if greedy else 3  # draft2's fan-out at the root, then its best chain
        for depth in range(1, 16 if greedy else 7):
            tree = TreeConfig(budget=head + depth - 1, max_depth=depth, fanouts=(head,) + (1,) * (depth - 1))
            opts.append(Option("draft2", DRAFT2_TREE, depth, tree, f"draft2:{depth}"))
    opts += [Option("chain", CHAIN, k, TreeConfig(spec_k=k), f"chain:{k}") for k in range(1, 9 if greedy else 7)]
    fan = FAN15 if has_draft2 else ()
    if greedy:
        staged = [
            ("staged", THREE_STAGE_TREES[GREEDY] if has_draft2 else NO_DRAFT2_TREES[GREEDY]),
            ("staged2", TreeConfig(budget=16, max_depth=15, fanouts=fan, draft_calls=2, stop_p=0.5)),
            ("staged4", TreeConfig(budget=24, max_depth=15, fanouts=fan, draft_calls=4, stop_p=0.5)),
        ]
    else:
        drawn = CHEAP_DRAFT_TREES[SAMPLE] if has_draft2 else NO_DRAFT2_TREES[SAMPLE]
        staged = [("drawn", drawn), ("staged", TreeConfig(budget=6, max_depth=4, fanouts=fan[:4], draft_calls=2))]
        if has_draft2:  # a drawn chain with draft2 scored ahead and two of its candidates as leaves
            staged.append(("drawn3", THREE_STAGE_TREES[SAMPLE]))
    for name, tree in staged:
        opts.append(Option(name, _kind(tree, greedy), tree.max_depth, tree, name))
    if tuned is not None and tuned.budget > 0:
        opts.append(Option("tuned", _kind(tuned, greedy), min(tuned.max_depth, MAX_DEPTH), tuned, "tuned"))
    return tuple(opts)


def _kind(tree: TreeConfig, greedy: bool) -> str:
    if tree.widths and not greedy:
        return SAMPLED_TREE
    return DRAFT2_TREE if tree.draft_calls == 0 else DRAFT_TREE


class Acceptance:
    """Decayed hit / trial counts per family and depth (index 0 unused), with a prior."""

    def __init__(self, priors: dict):
        self.families = list(priors)
        f = len(self.families)
        self.prior = np.asarray([priors[k] for k in self.families], np.float64)[:, None]  # [F, 1]
        self.hits = np.zeros((f, MAX_DEPTH + 1))
        self.trials = np.zeros((f, MAX_DEPTH + 1))

    def observe(self, family: str, reached: int, limit: int) -> None:
        """A round of ``family`` accepted ``reached`` nodes under a depth limit ``limit``."""
        i = self.families.index(family)
        d = np.arange(MAX_DEPTH + 1)
        tried = (d >= 1) & (d <= min(reached + 1, limit))
        self.hits[i, tried] = DECAY * self.hits[i, tried] + (d[tried] <= reached)
        self.trials[i, tried] = DECAY * self.trials[i, tried] + 1

    def fade(self, family: int, factor: float = 0.5) -> None:
        """Age a family's evidence (a probe skipped: what it measured is getting old)."""
        self.hits[family] *= factor
        self.trials[family] *= factor

    def rates(self, optimistic: bool = False) -> np.ndarray:
        """[F, MAX_DEPTH + 1] conditional acceptance per depth. Depth 1 shrinks to the prior;
        depth d > 1 to the estimate at depth d - 1 (``a_d = (h_d + W a_{d-1}) / (t_d + W)``),
        so depths a family has rarely reached are priced like the deepest it has (a copying
        streak accepted at depth 4 is worth trying at depth 5), in closed form:
        ``a_d = K_d (p + sum_{j<=d} c_j / K_j)`` with ``k = W / (t + W)``, ``K = cumprod(k)``,
        ``c = h / (t + W)``."""
        den = self.trials[:, 1:] + PRIOR_WEIGHT
        k = np.cumprod(PRIOR_WEIGHT / den, axis=1)
        prior = 1.0 if optimistic else self.prior
        a = k * (prior + np.cumsum(self.hits[:, 1:] / den / k, axis=1))
        return np.concatenate([np.ones((len(a), 1)), np.minimum(a, 1.0)], axis=1)

    def expected(self, optimistic: bool = False) -> np.ndarray:
        """[F, MAX_DEPTH + 1]: expected tokens of a round whose deepest node is at depth L.
        ``optimistic``: with a prior of 1 (what the family could still be worth: certain
        acceptance where it has no evidence, its own evidence where it has some)."""
        a = self.rates(optimistic)
        return np.cumsum(np.cumprod(a, axis=1), axis=1)  # column 0: the oracle's own token


@dataclass
class PlannerStats:
    """What ``Stats.planner`` reports for one request."""

    choices: dict = field(default_factory=dict)  # option label -> rounds
    stages: dict = field(default_factory=lambda: {"draft2": 0, "draft": 0})  # rounds each stage ran
    probes: int = 0
    overhead_s: float = 0.0
    trace: list = field(default_factory=list)  # per round: (tokens generated before it, option label, seconds)

    def as_dict(self) -> dict:
        return {
            "choices": dict(sorted(self.choices.items(), key=lambda kv: -kv[1])),
            "stages": dict(self.stages),
            "probes": self.probes,
            "overhead_s": self.overhead_s,
        }


class ModePlan:
    """The planner's state for one sampling mode: options, acceptance, fill, draft2 time."""

    def __init__(self, options: tuple[Option, ...], priors: dict):
        self.options = options
        fams = list(dict.fromkeys(o.family for o in options if o.family != "none"))
        self.acc = Acceptance({f: priors[f] for f in fams})
        fi = {f: i for i, f in enumerate(fams)}
        self.fam = np.asarray([fi.get(o.family, -1) for o in options])  # -1: none
        self.fam0 = np.maximum(self.fam, 0)  # for gathers (none's depth 0 reads column 0: 1 token)
        self.real = self.fam >= 0  # options that speculate
        self.depth = np.asarray([o.depth for o in options])
        self.nodes = np.asarray([o.nodes for o in options])
        self.chain = np.asarray([o.kind == CHAIN for o in options])
        self.calls = np.asarray([o.draft_calls for o in options])
        self.batch = np.asarray([o.tree.draft_batch for o in options])
        self.draft_rows = np.asarray([o.kind == DRAFT_TREE for o in options], np.int64)  # draft2 nodes ride along
        self.fill = np.ones(len(fams))  # tree nodes proposed / nodes allowed
        self.draft2_s = np.zeros(len(fams))  # seconds in draft2 per round
        self.last_used = np.full(len(fams), -1)
        self.gap = np.full(len(fams), PROBE_EVERY)  # rounds before the family is probed again
        self.rounds = 0
        self.sized = 0  # round of the last size probe (``Planner._size_probe``)
        self.cached: tuple | None = None  # (where, band, option index) of the last full choice


class Planner:
    """One per Generator: the greedy plan and the per-node sampled plan live (acceptance and
    costs carried across requests); the drawn sampled plan fresh per request (see the module)."""

    def __init__(self, costs: CostModel, menus: dict):
        self.costs = costs  # live, greedy rounds (the draft's cost: every round)
        self.sampled = CostModel(costs.prior)  # live, sampled rounds (verification costs more per node)
        self.fixed = CostModel(costs.prior)  # never observed: prices the drawn sampled plan
        self.menus = dict(menus)
        probe = ModePlan(menus[SAMPLE], PRIORS[SAMPLE])
        value, _ = self.values(probe, self.fixed, (MAX_DEPTH, 200))
        # drawn proposals (the draft's drawn chain or tree) change which text a seed gives, so
        # whether sampled requests may use them is fixed per bundle and device: when, priced by
        # the fixed model at the prior acceptance, a drawn option beats every per-node one by
        # DRAWN_MARGIN (clearly paying: a cheap draft beside its oracle)
        drawn = np.asarray([o.kind in (CHAIN, SAMPLED_TREE) for o in probe.options])
        self.drawn = bool(value[drawn].max(initial=0.0) >= DRAWN_MARGIN * value[~drawn].max())
        if not self.drawn:
            self.menus[SAMPLE] = tuple(o for o in menus[SAMPLE] if o.kind not in (CHAIN, SAMPLED_TREE))
        self.plans = {mode: ModePlan(options, PRIORS[mode]) for mode, options in self.menus.items()}

    @staticmethod
    def for_bundle(entry, manifest, has_draft2: bool, tuned: dict) -> Planner:
        """Priors from the manifest's tuning ``entry`` for this device (or None) and its
        validated trees ``tuned`` ({mode: tree dict}), else the built-in ones."""
        prior = prior_from(entry, manifest.oracle.weight_bytes, manifest.draft.weight_bytes)
        menus = {}
        for mode in (GREEDY, SAMPLE):
            tree = TreeConfig.from_dict(tuned[mode]) if mode in tuned else None
            menus[mode] = menu(mode, has_draft2, tree)
        return Planner(CostModel(prior), menus)

    def begin(self, mode: str) -> None:
        """A request starts: a drawn sampled plan starts again from the priors."""
        if mode != GREEDY and self.drawn:
            self.plans[mode] = ModePlan(self.menus[mode], PRIORS[mode])

    def live(self, mode: str) -> bool:
        """Whether ``mode``'s decisions read live timings (all but a drawn sampled plan)."""
        return mode == GREEDY or not self.drawn

    def costs_for(self, mode: str) -> CostModel:
        if mode == GREEDY:
            return self.costs
        return self.fixed if self.drawn else self.sampled

    def observe_timing(self, mode: str, tokens: int, past: int, seconds: float) -> None:
        """One round's seconds outside the draft and draft2 (its oracle call, verification,
        commit and planning) for a tree of ``tokens`` tokens after ``past`` committed rows."""
        (self.costs if mode == GREEDY else self.sampled).observe_oracle(tokens, past, seconds)

    def choose(self, mode: str, room: int, past: int, stats: PlannerStats) -> tuple[Option, int]:
        """This round's option and depth limit. ``room``: free context rows below the root;
        ``past``: committed tokens."""
        t0 = time.perf_counter()
        p = self.plans[mode]
        costs = self.costs_for(mode)
        key = (min(room, MAX_DEPTH), costs.band(past))
        probe = self._probe_due(p)
        every = REFRESH_OFF if p.cached is not None and p.fam[p.cached[1]] < 0 else REFRESH
        if probe is not None or p.cached is None or p.cached[0] != key or p.rounds % every == 0:
            value, seconds = self.values(p, costs, (room, past))
            i = int(np.argmax(value))
            if p.fam[i] >= 0:
                p.gap[p.fam[i]] = PROBE_EVERY  # chosen on its merits: probe it early again once it loses
            p.cached = (key, i)
            if probe is not None and probe != p.fam[i]:
                j = self._probe(p, probe, (value, seconds), i, room)
                p.gap[probe] = min(MAX_GAP, 2 * p.gap[probe])
                p.last_used[probe] = p.rounds + 1  # probed or passed over: due again after its gap
                if j is not None:  # this round only; the cached choice stays
                    i, stats.probes = j, stats.probes + 1
            elif self.live(mode) and p.rounds - p.sized >= PROBE_EVERY:
                j = self._size_probe(p, costs, value, i, (room, past))
                if j is not None:  # this round only, as a probe
                    i, p.sized, stats.probes = j, p.rounds, stats.probes + 1
        else:
            i = p.cached[1]
        opt = p.options[i]
        limit = min(opt.depth, room)
        if limit <= 0:
            opt, limit = p.options[0], 0
        p.rounds += 1
        if p.fam[i] >= 0:
            p.last_used[p.fam[i]] = p.rounds
        stats.choices[opt.label] = stats.choices.get(opt.label, 0) + 1
        stats.overhead_s += time.perf_counter() - t0
        return opt, limit

    @staticmethod
    def values(p: ModePlan, costs: CostModel, where: tuple) -> tuple[np.ndarray, np.ndarray]:
        """Predicted tokens per second of every option (``-inf`` where it cannot run), and
        its predicted seconds; ``where`` = (room, past) as ``choose`` takes them."""
        room, past = where
        depth = Planner._depths(p, room)
        tokens = p.acc.expected()[p.fam0, depth]  # column 0 (no speculation) is 1 token
        nodes = Planner._nodes(p, room)
        cost = costs.oracle_curve(past)[np.minimum(1 + nodes, MAX_TOKENS).astype(np.int64)]
        # the rows the draft lacks (its catch-up after rounds without it) are a one-time cost
        # that the following rounds share: not charged to one round, which would keep a draft
        # that was off for a while (or at a request's start) off for good
        batch = np.minimum(p.draft_rows * nodes + 1, p.batch).astype(np.int64)
        more = np.minimum(p.draft_rows * nodes + 1, p.batch).astype(np.int64)
        calls = np.where(p.chain, depth, p.calls)
        draft = costs.draft_seconds
        cost += draft(batch) * (calls > 0) + draft(more) * np.maximum(calls - 1, 0)
        cost += p.draft2_s[p.fam0] * p.real
        value = tokens / cost
        if room < MAX_DEPTH:
            value[(depth == 0) & p.real] = -np.inf
        return value, cost

    @staticmethod
    def _probe_due(p: ModePlan) -> int | None:
        """The family to probe this round: unused for its gap (``PROBE_EVERY`` rounds, doubled
        after each probe that did not win it back), the one unused the longest; else None."""
        if not len(p.last_used):
            return None
        due = p.rounds - p.last_used >= p.gap
        if not due.any():
            return None
        return int(np.flatnonzero(due)[np.argmin(p.last_used[due])])

    @staticmethod
    def _depths(p: ModePlan, room: int) -> np.ndarray:
        return p.depth if room >= MAX_DEPTH else np.minimum(p.depth, max(room, 0))

    @staticmethod
    def _nodes(p: ModePlan, room: int) -> np.ndarray:
        """Expected tree nodes below the root of every option (a tree fills ``fill`` of its budget)."""
        depth = Planner._depths(p, room)
        return np.where(p.chain, depth, np.ceil(p.fill[p.fam0] * np.minimum(p.nodes, room + 1)))

    @staticmethod
    def _size_probe(p: ModePlan, costs: CostModel, value: np.ndarray, best: int, where: tuple) -> int | None:
        """An option of the best one's family worth about as much (``SIZE_MARGIN``) whose oracle call size has
        never been timed at this past: its cost is the prior's shape scaled from other sizes,
        which can be off by tens of percent (the CPU's staircase), enough to keep the best
        option from ever being measured. Run once, its size is measured for good."""
        room, past = where
        sizes = np.minimum(1 + Planner._nodes(p, room), MAX_TOKENS).astype(np.int64)
        ok = (p.fam == p.fam[best]) & np.isfinite(value) & (value >= SIZE_MARGIN * value[best])
        ok &= ~costs.measured(past)[sizes]
        if not ok.any():
            return None
        return int(np.flatnonzero(ok)[np.argmax(value[ok])])

    @staticmethod
    def _probe(p: ModePlan, f: int, priced: tuple, best: int, room: int) -> int | None:
        """The option of family ``f`` to probe, or None when even its optimistic value (prior
        1: certain acceptance where it has no evidence) cannot beat the best option: a stage
        that cannot pay at any acceptance it might still have is not run at all, and its
        evidence ages (``fade``) so that it is tried again later. The probe: the option of best
        optimistic value among those costing at most 1.5 times the best round (so it
        measures acceptance deep enough to show what the family can do), else its cheapest."""
        value, seconds = priced
        ok = (p.fam == f) & np.isfinite(value)
        if not ok.any():
            return None
        hope = p.acc.expected(optimistic=True)[p.fam0, Planner._depths(p, room)] / seconds
        if not (hope[ok] > value[best]).any():
            p.acc.fade(f)
            return None
        cheap = ok & (seconds <= 1.5 * seconds[best])
        if not cheap.any():
            return int(np.flatnonzero(ok)[np.argmin(seconds[ok])])
        return int(np.flatnonzero(cheap)[np.argmax(hope[cheap])])

    def observe(self, mode: str, opt: Option, limit: int, proposal, reached: int, stats: PlannerStats) -> None:
        """Fold one verified round in: ``reached`` tree nodes accepted (before finish rules)."""
        t0 = time.perf_counter()
        p = self.plans[mode]
        if opt.family != "none":
            f = p.acc.families.index(opt.family)
            p.acc.observe(opt.family, reached, limit)
            room = max(1, min(opt.nodes, limit if opt.kind == CHAIN else opt.nodes))
            p.fill[f] = DECAY * p.fill[f] + (1 - DECAY) * min(1.0, (len(proposal.tree.tokens) - 1) / room)
            if self.live(mode):  # a timing: drawn sampled decisions never read one
                p.draft2_s[f] = DECAY * p.draft2_s[f] + (1 - DECAY) * proposal.cost.time_draft2
        if proposal.cost.calls:
            self.costs.observe_draft(proposal.cost.sizes, proposal.cost.time_draft)
            if mode != GREEDY:
                self.sampled.observe_draft(proposal.cost.sizes, proposal.cost.time_draft)
            stats.stages["draft"] += 1
        if proposal.cost.time_draft2 > 0:
            stats.stages["draft2"] += 1
        stats.overhead_s += time.perf_counter() - t0
