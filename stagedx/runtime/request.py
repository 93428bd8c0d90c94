"""One decode request: the caller's options (``DecodeOptions``, checked as they are built) and
the ``Request`` the decode loop runs (prompt ids that fit, parsed sampling, the tree to use)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import StagedxError
from . import STRATEGIES
from .constraint import Constraint
from .sampling import SamplingConfig
from .shapes import TreeConfig
from .tokenizer import Tokenizer


def _is_count(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclass(frozen=True)
class DecodeOptions:
    """The options of one decode (``Generator.generate`` / ``stream`` take them as keywords or
    as ``options=``; the server builds one per request), each checked on its own."""

    max_new_tokens: int = 128
    sampling: str | SamplingConfig = "greedy"  # "greedy", "topk:50", "topp:0.9", ... or a SamplingConfig
    seed: int | None = None  # same seed + options = same output in sampled modes
    stop: str | Sequence[str] = ()  # stop strings: the text ends before the first one
    strategy: str | None = None  # one of STRATEGIES; None: the Generator's
    ignore_eos: bool = False
    truncate: bool = False  # keep the end of a prompt longer than the context
    tree: TreeConfig | None = None  # for this call only; None: the Generator's (explicit, tuned, default)
    constraint: Constraint | None = None  # the text must match it (JSON schema, regex, grammar)

    def __post_init__(self) -> None:
        n = self.max_new_tokens
        if not _is_count(n) or n < 1:
            raise StagedxError(f"max_new_tokens must be an integer >= 1, got {n!r}")
        if self.seed is not None and (not _is_count(self.seed) or self.seed < 0):
            raise StagedxError(f"seed must be an integer >= 0 (or None), got {self.seed!r}")
        if not isinstance(self.sampling, (str, SamplingConfig)):
            raise StagedxError(f"sampling must be a str such as 'topk:50' or a SamplingConfig, got {self.sampling!r}")
        if self.tree is not None and not isinstance(self.tree, TreeConfig):
            raise StagedxError(f"tree must be a TreeConfig, got {type(self.tree).__name__}")
        if self.constraint is not None and not isinstance(self.constraint, Constraint):
            raise StagedxError(f"constraint must be a Constraint, got {type(self.constraint).__name__}")
        if self.constraint is not None and self.ignore_eos:
            raise StagedxError("ignore_eos cannot be combined with a constraint (the grammar ends the text with EOS)")
        stop = self.stop
        if not isinstance(stop, str) and not (
            isinstance(stop, (list, tuple)) and all(isinstance(x, str) for x in stop)
        ):
            raise StagedxError(f"stop must be a str or a sequence of str, got {stop!r}")
        if stop == "" or (not isinstance(stop, str) and "" in stop):
            raise StagedxError("stop strings must not be empty (an empty string would end every decode at once)")

    @staticmethod
    def build(options: DecodeOptions | None, keywords: dict) -> DecodeOptions:
        """``options`` (default: all defaults) with the given keyword options replacing fields."""
        if options is not None and not isinstance(options, DecodeOptions):
            raise TypeError(f"options must be a DecodeOptions, got {type(options).__name__}")
        unknown = sorted(set(keywords) - set(DecodeOptions.__dataclass_fields__))
        if unknown:
            names = ", ".join(DecodeOptions.__dataclass_fields__)
            raise TypeError(f"unexpected decode option {', '.join(map(repr, unknown))}: the options are {names}")
        base = options or DecodeOptions()
        return dataclasses.replace(base, **keywords) if keywords else base

    def stop_strings(self) -> tuple:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def sampling_config(self) -> SamplingConfig:
        return self.sampling if isinstance(self.sampling, SamplingConfig) else SamplingConfig.parse(self.sampling)


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
    constraint: Constraint | None = None


def check_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise StagedxError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    return strategy


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


def fit_prompt(ids: np.ndarray, opts: DecodeOptions, vocab: int, context: int) -> np.ndarray:
    """Prompt ids [n] checked against the vocabulary and the context (cut when ``truncate``)."""
    if ids.size == 0:
        raise StagedxError("empty prompt: give at least one token")
    if ids.min() < 0 or ids.max() >= vocab:
        raise StagedxError(f"prompt token ids must lie in [0, {vocab})")
    if len(ids) > context:
        if not opts.truncate:
            raise StagedxError(
                f"prompt has {len(ids)} tokens, more than the context of {context} (use --truncate to keep its end)"
            )
        ids = ids[-max(1, context - min(opts.max_new_tokens, context // 2)) :]
    return ids.astype(np.int64)  # [n']
