"""Tree shapes, defined once: ``TreeConfig`` (one shape, validated however it was built), the
built-in shapes per sampling mode, and the choice a decode makes between an explicit, a tuned
and a built-in tree.

``TreeConfig()`` is the runtime default for greedy decoding (``DEFAULT_TREES["greedy"]``); the
other tables write their shapes' tree fields out in full, so none depends on the defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ..errors import StagedxError
from ..manifest import TuningEntry
from .sampling import SamplingConfig

MAX_TREE_FIELD = 4096  # far above any useful tree; keeps a typo from allocating gigabytes


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


@dataclass(frozen=True)
class TreeConfig:
    """Tree shape. The defaults are the untuned runtime default for greedy decoding (see
    ``DEFAULT_TREES``); the paper's GPU shape is
    ``TreeConfig(budget=64, max_depth=8, fanouts=(12, 7, 4, 1, 1, 1), draft_calls=3)``."""

    budget: int = 16  # oracle tree nodes per call besides the root (0 = no speculation)
    max_depth: int = 15  # deepest tree node below the root
    fanouts: tuple[int, ...] = (2,) + (1,) * 14  # draft2 fan-outs per level
    draft_calls: int = 0  # sequential draft calls per round (staged; 0 = draft2 feeds the oracle)
    draft_batch: int = 32  # nodes per draft call, chain included
    tau: float = 0.1  # greedy ranking temperature
    spec_k: int = 4  # chain length of the classic speculative strategy
    stop_p: float = 0.0  # dynamic depth: no further draft call once the path's ranking prob < stop_p
    widths: tuple[int, ...] = ()  # sampled modes: children drawn from q per level (sampled.py); () = best-first
    extra: int = 0  # sampled trees: deterministic root leaves (draft2's, then the draft's top tokens)
    lookahead: int = 0  # sampled chains: draft2 levels (fanouts[:lookahead]) each draft call scores ahead

    def __post_init__(self) -> None:
        """Refuse shapes the decode loop cannot run, however the config was built."""
        for name, low in (("budget", 0), ("max_depth", 1), ("draft_calls", 0), ("draft_batch", 1), ("spec_k", 1)):
            value = getattr(self, name)
            if not _is_int(value) or not low <= value <= MAX_TREE_FIELD:
                raise StagedxError(f"tree {name} must be an integer in [{low}, {MAX_TREE_FIELD}], got {value!r}")
        if not isinstance(self.fanouts, tuple) or not all(
            _is_int(f) and 1 <= f <= MAX_TREE_FIELD for f in self.fanouts
        ):
            raise StagedxError(
                f"tree fanouts must be a tuple of integers in [1, {MAX_TREE_FIELD}], got {self.fanouts!r}"
            )
        if not isinstance(self.tau, (int, float)) or isinstance(self.tau, bool) or not 0 < self.tau < float("inf"):
            raise StagedxError(f"tree tau (greedy ranking temperature) must be a finite number > 0, got {self.tau!r}")
        for name in ("extra", "lookahead"):
            value = getattr(self, name)
            if not _is_int(value) or not 0 <= value <= MAX_TREE_FIELD:
                raise StagedxError(f"tree {name} must be an integer in [0, {MAX_TREE_FIELD}], got {value!r}")
        if not isinstance(self.widths, tuple) or not all(_is_int(w) and 1 <= w <= MAX_TREE_FIELD for w in self.widths):
            raise StagedxError(f"tree widths must be a tuple of integers in [1, {MAX_TREE_FIELD}], got {self.widths!r}")
        stop_p = self.stop_p
        if not isinstance(stop_p, (int, float)) or isinstance(stop_p, bool) or not 0 <= stop_p <= 1:
            raise StagedxError(f"tree stop_p (dynamic depth threshold) must be a number in [0, 1], got {stop_p!r}")

    @staticmethod
    def from_dict(d: dict) -> TreeConfig:
        """A shape stored in a manifest (``stagedx tune`` writes every field); a missing field
        takes its value from ``FROM_DICT_BASE``, so entries written by older versions decode
        as they always did."""
        if not isinstance(d, dict):
            raise StagedxError(f"a tree shape must be a JSON object, got {type(d).__name__}")
        names = TreeConfig.__dataclass_fields__
        kw = {k: v for k, v in d.items() if k in names}
        for name in ("fanouts", "widths"):
            if name in kw:
                if not isinstance(kw[name], (list, tuple)):
                    raise StagedxError(f"tree {name} must be a list of integers, got {kw[name]!r}")
                kw[name] = tuple(kw[name])
        return dataclasses.replace(FROM_DICT_BASE, **kw)

    def to_dict(self) -> dict:
        """Every field, as ``stagedx tune`` stores a shape in the manifest (JSON lists)."""
        d = dataclasses.asdict(self)
        d["fanouts"], d["widths"] = list(d["fanouts"]), list(d["widths"])
        return d


def _runs(values: tuple) -> str:
    """(2, 1, 1, 1) -> "2, 1x3": a level list as people read it."""
    out: list = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return ", ".join(f"{v}x{n}" if n > 1 else str(v) for v, n in out) or "none"


def describe(tree: TreeConfig) -> str:
    """One short line for people: the kind of tree and the fields that matter for that kind."""
    if tree.budget == 0:
        return "no speculation (budget 0)"
    if tree.widths:
        kind = f"sampled tree: drawn widths {_runs(tree.widths)}, {tree.extra} extra root leaves"
        if tree.lookahead:
            kind += f", draft2 lookahead {tree.lookahead} level(s)"
    elif tree.draft_calls == 0:
        kind = f"draft2 tree: fan-outs {_runs(tree.fanouts)}"
    else:
        kind = f"draft tree: {tree.draft_calls} draft call(s) of up to {tree.draft_batch} tokens"
        kind += f", draft2 fan-outs {_runs(tree.fanouts)}" if tree.fanouts else ", no draft2"
        if tree.stop_p:
            kind += f", stop below path p {tree.stop_p:g}"
    return f"{kind}; {tree.budget} nodes, depth <= {tree.max_depth}; speculative chain {tree.spec_k}"


GREEDY, SAMPLE = "greedy", "sample"  # the sampling modes a tree shape is chosen for


def sampling_mode(cfg: SamplingConfig) -> str:
    return GREEDY if cfg.greedy else SAMPLE


# Untuned defaults: the fastest shapes measured on the default backend (ONNX Runtime, 2-core
# CPU) for the vendored pair. There a draft call costs ~1.5 ms inside the loop against ~3.6
# ms for the oracle, and draft2's proposals (n-gram + prompt lookup, ~0.05 ms) are accepted
# about as often, so draft2 feeds the oracle directly (draft_calls=0). `stagedx tune` redoes
# this choice for each device, backend and thread count.
DEFAULT_TREES = {
    GREEDY: TreeConfig(),  # the field defaults: budget=16, max_depth=15, fanouts=(2, 1 x 14), draft_calls=0
    SAMPLE: TreeConfig(budget=3, max_depth=3, fanouts=(3,), draft_calls=0),
}

FAN10 = (2,) + (1,) * 9  # ten levels of thin draft2 chains below a fork at the root

# Trees that always run all three stages (draft2 -> draft -> oracle): the best such shapes
# measured on a 2-core CPU for the vendored pair. Greedy acceptance runs deep (deep, thin
# tree: thin draft2 chains, as a draft call's cost grows with its batch there). Sampled: the
# draft's drawn chain (so the draft is used exactly as ``speculative`` uses it) with draft2
# proposing ahead of it for the draft to score (``lookahead``: fewer draft calls) and two of
# draft2's candidates as extra root leaves. Measured top-k 50, 10 HumanEval prompts x 128,
# 2 threads, decode tok/s over baseline: shipped draft 0.94x (speculative 0.82x, the former
# (2, 1, 1, 1)-wide default 0.72x), distilled draft 1.08x (speculative 1.00x, former 0.88x).
THREE_STAGE_TREES = {
    GREEDY: TreeConfig(budget=12, max_depth=10, fanouts=FAN10, draft_calls=1),
    SAMPLE: TreeConfig(budget=5, max_depth=3, fanouts=(2, 1), draft_calls=1, widths=(1, 1, 1), lookahead=2, extra=2),
}

# Without draft2 (a bundle exported with ``--draft2 none``) draft2-only trees propose nothing:
# the defaults then grow the tree with the draft alone, at least as deep as speculative's chain.
NO_DRAFT2_TREES = {
    GREEDY: TreeConfig(budget=11, max_depth=12, fanouts=(), draft_calls=6, stop_p=0.05),
    SAMPLE: TreeConfig(budget=7, max_depth=4, fanouts=FAN10, draft_calls=1, widths=(2, 1, 1), extra=1),
}

# A draft whose weights are under this share of the oracle's costs little beside an oracle call
# wherever decoding streams the weights from memory (the paper's regime: a 40M draft for a 762M
# oracle, share 0.05). There, in sampled modes, the draft's drawn chain (classic speculative
# sampling, verified by the recursive rule) beats draft2 alone. Measured untuned on a 2-core CPU,
# top-k 50, 5 HumanEval prompts x 128 tokens: at GPT-2-L cost (share 0.055) the chain earns 2.22
# tokens per oracle call and 1.50x against 1.33 and 1.15x for the draft2-only default; on the
# vendored pair (share 0.19: per-call overhead makes a draft call ~40% of an oracle call there)
# draft2 alone wins (1.18x against 0.84x). Greedy keeps the draft2-only default at both sizes
# (4.74x against 2.54x for the draft's chain at GPT-2-L cost).
CHEAP_DRAFT_SHARE = 0.1
CHEAP_DRAFT_TREES = {
    SAMPLE: TreeConfig(budget=4, max_depth=4, fanouts=FAN10, draft_calls=1, widths=(1, 1, 1, 1), extra=0),
}

# The base ``from_dict`` fills missing fields from: the field defaults before the runtime
# default became ``TreeConfig()`` (they were the three-stage greedy tree).
FROM_DICT_BASE = THREE_STAGE_TREES[GREEDY]


@dataclass(frozen=True)
class TreeChoice:
    """Which tree a decode uses for a sampling mode: an explicit tree, else the bundle's tuned
    entry for this device, else the built-in default (``NO_DRAFT2_TREES`` without draft2). A
    tree passed to one ``generate`` / ``stream`` call overrides all of this."""

    explicit: TreeConfig | None = None  # the Generator's tree, for every mode
    budget: int | None = None  # only the oracle's node budget, over whichever tree
    tuned: dict = field(default_factory=dict)  # {"greedy": {fields..., "three_stage": {...}}, "sample": ...}
    has_draft2: bool = True  # False for a bundle exported with --draft2 none
    cheap_draft: bool = False  # draft weights under CHEAP_DRAFT_SHARE of the oracle's (``cheap_draft``)

    def tree(self, mode: str) -> TreeConfig:
        if self.explicit is not None:
            tree = self.explicit
        elif mode in self.tuned:
            tree = TreeConfig.from_dict(self.tuned[mode])
        elif not self.has_draft2:
            tree = NO_DRAFT2_TREES[mode]
        else:
            tree = CHEAP_DRAFT_TREES.get(mode, DEFAULT_TREES[mode]) if self.cheap_draft else DEFAULT_TREES[mode]
        return tree if self.budget is None else dataclasses.replace(tree, budget=self.budget)

    def three_stage(self, mode: str) -> TreeConfig:
        """A tree that always runs draft2 -> draft -> oracle: tune's best such one, else the
        default. Without draft2 there is no third stage: the draft-only tree (tuned, else default)."""
        if not self.has_draft2:
            return self.tree(mode) if self.explicit is None and mode in self.tuned else NO_DRAFT2_TREES[mode]
        tuned = self.tuned.get(mode, {}).get("three_stage")
        return TreeConfig.from_dict(tuned) if tuned else THREE_STAGE_TREES[mode]


def cheap_draft(oracle_weight_bytes: int, draft_weight_bytes: int) -> bool:
    """Whether the untuned defaults may treat a draft call as cheap (``CHEAP_DRAFT_SHARE``)."""
    return draft_weight_bytes < CHEAP_DRAFT_SHARE * oracle_weight_bytes


def tuned_trees(entry: TuningEntry | None, key: str) -> dict:
    """``{mode: tree dict}`` of a manifest's tuning entry (``manifest.find_tuning``), each mode's
    tree shape validated here, at load, so a bad entry is one clear line before any decode."""
    if entry is None:
        return {}
    modes = entry.modes()
    for mode, tree in modes.items():
        try:
            TreeConfig.from_dict(tree)
        except (StagedxError, TypeError) as exc:
            raise StagedxError(f"manifest tuning[{key!r}][{mode!r}] is invalid: {exc}; rerun stagedx tune") from None
    return modes
