"""Text for ``stagedx distill``: corpus files -> a training token stream and a held-out one.

Held-out text comes from the files that ``--exclude-from`` names (the pair's validation
split) when any of them are in the corpus, otherwise from a seeded 2% of the corpus files
(at least one; a one-file corpus gives its last 10% of tokens).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StagedxError

HELDOUT_FRACTION = 0.02  # of the files, when no --exclude-from file is in the corpus
HELDOUT_MAX_TOKENS = 400_000  # the metrics read far fewer; no need to tokenise more
BATCH_FILES = 64  # files per encode_batch call


@dataclass(frozen=True)
class CorpusSpec:
    paths: tuple[str, ...]  # files, folders, or the word "stdlib"
    exclude_from: Path | None = None  # JSON list of held-out paths (relative to the stdlib root)
    max_tokens: int = 10_000_000  # training tokens read at most (files in seeded random order)
    seed: int = 0


@dataclass(frozen=True)
class TokenData:
    train: np.ndarray  # [N] int32 stream: doc, EOS, doc, EOS, ...
    heldout: np.ndarray  # [M] int32, same layout
    train_files: int
    heldout_files: int
    heldout_source: str  # where the held-out text came from, for the model card


def _split_files(spec: CorpusSpec) -> tuple[list[Path], list[Path], str]:
    """(training files, held-out files, description of the held-out files)."""
    from .corpus import read_exclude_list, resolve_corpus

    everything = resolve_corpus(spec.paths)
    exclude = read_exclude_list(spec.exclude_from)
    if exclude:
        kept = set(resolve_corpus(spec.paths, exclude))
        held = [f for f in everything if f not in kept]
        if held:
            return sorted(kept), held, f"the {len(held)} corpus files listed in {spec.exclude_from}"
    files = list(everything)
    random.Random(spec.seed).shuffle(files)
    if len(files) < 2:
        return files, [], "the last 10% of the tokens of the only corpus file"
    n_held = max(1, round(HELDOUT_FRACTION * len(files)))
    return files[n_held:], files[:n_held], f"{n_held} corpus files drawn with seed {spec.seed}"


def _load_tokenizer(tokenizer_file: Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # tokenizers raises its own exception types
        raise StagedxError(f"cannot load tokenizer {tokenizer_file}: {exc}") from exc


def _tokenize(files: Sequence[Path], tok, eos_id: int, max_tokens: int, order_seed: int | None) -> np.ndarray:
    """Files (shuffled when ``order_seed`` is set) into one stream, stopping near ``max_tokens``."""
    files = list(files)
    if order_seed is not None:
        random.Random(order_seed).shuffle(files)
    eos = np.array([eos_id], np.int32)
    pieces, n = [], 0
    for start in range(0, len(files), BATCH_FILES):
        texts = []
        for f in files[start : start + BATCH_FILES]:
            try:
                texts.append(f.read_text(encoding="utf-8", errors="replace"))
            except OSError as exc:
                raise StagedxError(f"cannot read corpus file {f}: {exc.strerror}") from exc
        for enc in tok.encode_batch([t for t in texts if t.strip()], add_special_tokens=False):
            if enc.ids:
                pieces += [np.asarray(enc.ids, np.int32), eos]
                n += len(enc.ids) + 1
        if n >= max_tokens:
            break
    return np.concatenate(pieces)[:max_tokens] if pieces else np.zeros(0, np.int32)


def load_tokens(spec: CorpusSpec, tokenizer_file: Path, eos_id: int, min_tokens: int) -> TokenData:
    """Tokenise the corpus with the oracle's tokenizer. ``min_tokens``: the fewest training
    tokens that make one training sample; fewer is an error (a corpus with no usable text)."""
    train_files, held_files, source = _split_files(spec)
    tok = _load_tokenizer(tokenizer_file)
    train = _tokenize(train_files, tok, eos_id, spec.max_tokens, spec.seed)
    if held_files:
        heldout = _tokenize(held_files, tok, eos_id, HELDOUT_MAX_TOKENS, None)
    else:
        cut = len(train) - max(1, len(train) // 10)
        train, heldout = train[:cut], train[cut:]
    where = ", ".join(map(str, spec.paths))
    if len(train) < min_tokens:
        raise StagedxError(
            f"corpus has no usable text: {len(train)} training tokens in {len(train_files)} "
            f"files of {where} (need at least {min_tokens}: one sequence of --seq-len + 1)"
        )
    return TokenData(
        train=train, heldout=heldout, train_files=len(train_files), heldout_files=len(held_files), heldout_source=source
    )


class BatchSampler:
    """Random windows of ``seq_len`` tokens from a stream; its state survives a resume."""

    def __init__(self, stream: np.ndarray, batch: int, seq_len: int, seed: int):
        self.stream, self.batch, self.seq_len = stream, batch, seq_len
        self.rng = np.random.default_rng(seed)

    def next(self) -> np.ndarray:
        starts = self.rng.integers(0, len(self.stream) - self.seq_len + 1, self.batch)  # [B]
        return np.stack([self.stream[s : s + self.seq_len] for s in starts]).astype(np.int64)  # [B, T]

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state


def eval_contexts(heldout: np.ndarray, n: int, length: int) -> np.ndarray:
    """``n`` evenly spaced windows of ``length`` held-out tokens: [n, length] int64."""
    if len(heldout) < length:
        raise StagedxError(
            f"held-out text too short: {len(heldout)} tokens, the metrics need {length} "
            "(lower --eval-len or give a larger corpus)"
        )
    starts = np.linspace(0, len(heldout) - length, n).round().astype(np.int64)  # [n]
    return np.stack([heldout[s : s + length] for s in starts]).astype(np.int64)  # [n, length]
