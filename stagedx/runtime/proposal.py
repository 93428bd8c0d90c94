"""A round's proposal: the tree the oracle verifies, the draft probabilities its verification
needs, and the rule that verification follows (like onnxruntime-genai's ``ProposalMode``,
"how verification interprets the tokens"). Pure NumPy, no model.

Rules (maths in ``accept.py``):

- ``PER_NODE``: a deterministic tree (best-first, draft2's, or the root alone). At each node
  the oracle draws its own token and the walk descends while a child carries it; greedy
  decoding is this rule with the oracle's argmax for every proposal.
- ``CHAIN``: a chain whose tokens were drawn from the draft's q (classic speculative
  sampling); ``q`` is ``[k, V]``, one row per drafted token.
- ``RECURSIVE``: a tree whose children were drawn from q without replacement (``sampled.py``);
  ``q`` maps a node to the q its children were drawn from, ``drawn`` marks the drawn nodes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from . import accept
from .runner import FETCH_LOGITS, FETCH_TOPK, RunOutput
from .sampling import SamplingConfig, warp
from .tree import OracleTree


class Rule(enum.Enum):
    PER_NODE = "per-node"
    CHAIN = "chain"
    RECURSIVE = "recursive"


@dataclass
class DraftCost:
    """What building one proposal cost: the size of each draft call (tokens) and the time spent
    in the draft and in draft2. ``Stats.add_draft`` is the one place it is counted."""

    sizes: list = field(default_factory=list)  # tokens of each draft call (for tune's cost model)
    time_draft: float = 0.0
    time_draft2: float = 0.0

    @property
    def calls(self) -> int:
        return len(self.sizes)

    def add_call(self, size: int, time_draft: float, time_draft2: float = 0.0) -> None:
        self.sizes.append(int(size))
        self.time_draft += time_draft
        self.time_draft2 += time_draft2


@dataclass(frozen=True)
class Proposal:
    """One round's speculation, ready for one oracle call and one ``verify``."""

    tree: OracleTree
    rule: Rule = Rule.PER_NODE
    draft_path: list = field(default_factory=list)  # tokens the draft's cache holds below the root
    cost: DraftCost = field(default_factory=DraftCost)
    q: np.ndarray | dict | None = None  # CHAIN: [k, V]; RECURSIVE: node -> [V]
    drawn: np.ndarray | None = None  # RECURSIVE: [N] bool, children drawn from q

    def fit(self, rows: int) -> Proposal:
        """The first ``rows`` nodes (the oracle's free KV rows near the context limit; the
        TensorRT runner writes every new row into its cache). A prefix is still a tree."""
        if len(self.tree.tokens) <= rows:
            return self
        q = self.q[: rows - 1] if self.rule is Rule.CHAIN else self.q
        drawn = None if self.drawn is None else self.drawn[:rows]
        return Proposal(self.tree.head(rows), self.rule, self.draft_path, self.cost, q, drawn)


def oracle_fetch(sampling: SamplingConfig) -> tuple:
    """What ``verify`` needs from the oracle call: its top tokens (greedy) or its logits."""
    return (FETCH_TOPK,) if sampling.greedy else (FETCH_LOGITS,)


def verify(proposal: Proposal, out: RunOutput, sampling: SamplingConfig, rng: np.random.Generator) -> accept.Verdict:
    """Which of the proposal's tokens the oracle accepts, by the proposal's rule. ``out``: the
    oracle's output over ``proposal.tree`` with ``oracle_fetch(sampling)``."""
    tree = proposal.tree
    if sampling.greedy:
        return accept.walk_tree(tree.parents, tree.tokens, accept.greedy_draw(out.topk_indices[:, 0]))
    z = out.logits  # [N, V]
    if proposal.rule is Rule.RECURSIVE:
        q = proposal.q
        p_at = lambda v: warp(z[v], sampling)  # noqa: E731
        return accept.verify_sampled(tree.parents, tree.tokens, proposal.drawn, q.__getitem__, p_at, rng)
    if proposal.rule is Rule.CHAIN:
        emitted = accept.verify_chain(tree.tokens[1:], proposal.q, warp(z, sampling), rng)  # p: [k+1, V]
        return accept.Verdict(np.arange(len(emitted)), emitted)
    return accept.walk_tree(tree.parents, tree.tokens, accept.sampled_draw(lambda v: warp(z[v], sampling), rng))
