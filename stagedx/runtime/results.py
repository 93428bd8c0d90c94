"""What a decode gives back: ``GenerationResult`` (text, tokens, finish reason, ``Stats``) and,
for ``Generator.stream``, the ``Stream`` whose iteration yields the text as it is accepted."""

from __future__ import annotations

from collections.abc import Generator as Coroutine  # a Python generator, not stagedx.runtime.Generator
from dataclasses import dataclass, field

from ..errors import StagedxError


@dataclass
class Stats:
    strategy: str
    sampling: str
    oracle_calls: int = 0
    draft_calls: int = 0
    new_tokens: int = 0
    rounds: int = 0
    accepted_by_stage: dict = field(default_factory=lambda: {"draft2": 0, "draft": 0, "grammar": 0, "oracle": 0})
    accepted_by_depth: list = field(default_factory=list)
    time_s: dict = field(
        default_factory=lambda: {
            "prefill": 0.0,
            "draft2": 0.0,
            "draft": 0.0,
            "oracle": 0.0,
            "grammar": 0.0,
            "other": 0.0,
            "total": 0.0,
        }
    )
    call_sizes: dict = field(default_factory=lambda: {"oracle": {}, "draft": {}})  # model -> {tokens: calls}
    planner: object = None  # strategy "auto": a planner.PlannerStats (choices, stages on, overhead)
    grammar_masks: int = 0  # allowed-token masks computed (constrained decoding)
    grammar_forced: int = 0  # tokens the grammar forced into trees (proposed; accepted: accepted_by_stage)

    def add_draft(self, cost) -> None:
        """Count one proposal's draft work (a ``proposal.DraftCost``)."""
        self.draft_calls += cost.calls
        self.count_calls("draft", cost.sizes)
        self.time_s["draft"] += cost.time_draft
        self.time_s["draft2"] += cost.time_draft2

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
            "grammar_masks": self.grammar_masks,
            "grammar_forced": self.grammar_forced,
            "call_sizes": {m: {str(t): n for t, n in sorted(h.items())} for m, h in self.call_sizes.items()},
            **({"planner": self.planner.as_dict()} if self.planner is not None else {}),
        }


@dataclass(frozen=True)
class GenerationResult:
    text: str
    tokens: list  # new tokens, without a final EOS
    prompt_tokens: int
    finish_reason: str  # "length" | "eos" | "stop" | "context"
    stats: Stats


class Stream:
    """The text of one ``Generator.stream`` call as it is accepted: iterating yields pieces that
    never split a UTF-8 character and hold back text that may begin a stop string. Once the
    iteration is exhausted ``result`` holds the ``GenerationResult``. The Generator's lock is
    held from the first piece until the stream ends or is closed (``close()`` or the end of a
    ``with`` block); a stream that is never iterated never takes it."""

    def __init__(self, pieces: Coroutine[str, None, GenerationResult]):
        self._pieces = pieces  # yields the text, returns the result
        self._result: GenerationResult | None = None

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._pieces)
        except StopIteration as end:
            self._result = self._result or end.value
            raise

    @property
    def result(self) -> GenerationResult:
        if self._result is None:
            raise StagedxError(
                "the stream has not finished: its result exists once it is iterated to the end "
                "(a stream closed early has none)"
            )
        return self._result

    def close(self) -> None:
        """End the decode now (idempotent): releases the Generator's lock; ``result`` stays unset."""
        self._pieces.close()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
