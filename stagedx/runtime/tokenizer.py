"""Tokenizer wrapper (HF ``tokenizers``, no transformers) and a UTF-8-safe stream decoder."""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
from tokenizers import Tokenizer as _HFTokenizer

from ..errors import StagedxError

REPLACEMENT = "\ufffd"  # what a byte-level decode shows for an incomplete UTF-8 sequence


class Tokenizer:
    """``encode(text) -> int64 [N]``, ``decode(ids) -> str`` over ``tokenizer.json``.

    ``bos_token_id``: put before every encoded text that does not already start with it (a
    chat template that renders ``{{ bos_token }}`` keeps its one); for models trained with a
    leading ``<bos>`` (Gemma), as the manifest's ``tokenizer.add_bos_token`` says."""

    def __init__(self, path: str | os.PathLike, bos_token_id: int | None = None):
        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises plain Exception subclasses
            raise StagedxError(f"cannot load tokenizer {path}: {exc}") from exc
        self.bos_token_id = bos_token_id

    @classmethod
    def for_bundle(cls, bundle_dir: str | os.PathLike, entry) -> Tokenizer:
        """The prompt tokenizer of a bundle: ``entry`` is its manifest's TokenizerEntry."""
        bos = entry.bos_token_id if getattr(entry, "add_bos_token", False) else None
        return cls(os.path.join(bundle_dir, entry.file), bos)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_bos: bool = True) -> np.ndarray:
        """``text``'s token ids, led by ``bos_token_id`` when set (``add_bos=False``: never)."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # e.g. a lone surrogate from a mis-decoded argument
            raise StagedxError(f"the prompt is not valid Unicode text ({exc.reason} at position {exc.start})") from exc
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if add_bos and self.bos_token_id is not None and ids[:1] != [self.bos_token_id]:
            ids = [self.bos_token_id, *ids]
        return np.asarray(ids, dtype=np.int64)

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class StreamDecoder:
    """Turn a growing token list into text pieces that never split a UTF-8 character.

    Pieces are differences of decodes over a short window: ``decode(ids[prefix:])`` minus
    ``decode(ids[prefix:read])``, where ``read`` is the end of what was already emitted and
    ``prefix`` the start of the previous piece (decoders that treat a leading token specially
    see the same context twice). While the window's decode ends in U+FFFD, a byte-level BPE
    token stopped inside a character: hold it back until the next tokens complete it.
    """

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # end of the tokens already emitted as text

    def push(self, tokens: Iterable[int] | np.ndarray) -> str:
        """Add tokens; return the text that is now complete (possibly "")."""
        self.ids.extend(int(t) for t in tokens)
        if len(self.ids) == self._read:
            return ""
        done = self.tokenizer.decode(self.ids[self._prefix : self._read])
        text = self.tokenizer.decode(self.ids[self._prefix :])
        if len(text) <= len(done) or text.endswith(REPLACEMENT) or not text.startswith(done):
            return ""
        self._prefix, self._read = self._read, len(self.ids)
        return text[len(done) :]

    def flush(self) -> str:
        """Everything still held back (an incomplete character decodes as U+FFFD)."""
        if len(self.ids) == self._read:
            return ""
        done = self.tokenizer.decode(self.ids[self._prefix : self._read])
        text = self.tokenizer.decode(self.ids[self._prefix :])
        self._prefix = self._read = len(self.ids)
        return text[len(done) :] if text.startswith(done) else text
