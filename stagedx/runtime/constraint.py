"""Constrained decoding: what the output must match (``Constraint``) and the per-request
grammar state the decode loop asks (``Guide``), over llguidance (no PyTorch, reads the
bundle's ``tokenizer.json`` as is).

Semantics: at each step the output is distributed as the oracle's warped distribution
restricted to the tokens the grammar allows there and renormalised (temperature, then the
grammar mask, then top-k / top-p on what is left); greedy decoding takes the allowed argmax.
How that stays exact inside a speculation tree: ``constraint_tree.py``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StagedxError

KINDS = ("json_schema", "json_object", "regex", "grammar")


@dataclass(frozen=True)
class Constraint:
    """What the generated text must match. Build one with ``Constraint.json_schema(schema)``
    (a dict or its JSON text), ``Constraint.json_object()`` (any JSON object),
    ``Constraint.regex(pattern)`` or ``Constraint.grammar(lark_text)`` (llguidance's Lark
    dialect). Checked when built: a bad schema, regex or grammar raises ``StagedxError``."""

    kind: str
    source: str  # the schema as JSON text, the regex, or the Lark grammar

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise StagedxError(f"constraint kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not isinstance(self.source, str):
            raise StagedxError(f"constraint source must be a str, got {type(self.source).__name__}")
        error = _llg().LLMatcher.validate_grammar(self.grammar_text())
        if error:
            raise StagedxError(f"invalid {self.kind.replace('_', ' ')}: {error.strip().splitlines()[0]}")

    @staticmethod
    def json_schema(schema: dict | str) -> Constraint:
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise StagedxError(f"invalid json schema: not JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(schema, (dict, bool)):
            raise StagedxError(f"invalid json schema: must be a JSON object, got {type(schema).__name__}")
        return Constraint("json_schema", json.dumps(schema))  # key order kept: it is the output order

    @staticmethod
    def json_object() -> Constraint:
        return Constraint("json_object", json.dumps({"type": "object"}))

    @staticmethod
    def regex(pattern: str) -> Constraint:
        return Constraint("regex", pattern)

    @staticmethod
    def grammar(lark: str) -> Constraint:
        return Constraint("grammar", lark)

    def grammar_text(self) -> str:
        """The llguidance grammar (compact JSON: no free whitespace between tokens)."""
        m = _llg().LLMatcher
        try:
            if self.kind in ("json_schema", "json_object"):
                return m.grammar_from_json_schema(self.source, defaults={"whitespace_flexible": False})
            if self.kind == "regex":
                return m.grammar_from_regex(self.source)
            return m.grammar_from_lark(self.source)
        except Exception as exc:  # llguidance raises ValueError / RuntimeError
            raise StagedxError(f"invalid {self.kind.replace('_', ' ')}: {exc}") from exc


def _llg():
    try:
        import llguidance
    except ImportError as exc:  # pragma: no cover - a core dependency
        raise StagedxError("constrained decoding needs llguidance: pip install 'llguidance>=1.9,<2'") from exc
    return llguidance


class GrammarTokenizer:
    """llguidance's view of a bundle's tokenizer (built once per Generator, on first use)."""

    def __init__(self, tokenizer_json: Path, vocab: int, eos: int):
        self.path, self.vocab, self.eos = Path(tokenizer_json), int(vocab), int(eos)
        self._tok = None
        self._lock = threading.Lock()

    def get(self):
        with self._lock:
            if self._tok is None:
                llg = _llg()
                try:  # llguidance reads the usual tokenizer.json kinds (byte-level BPE, ...) itself
                    self._tok = llg.LLTokenizer(
                        self.path.read_text(encoding="utf-8"), n_vocab=self.vocab, eos_token=self.eos
                    )
                except ValueError:  # others (e.g. a char-level WordLevel): give it each token's text
                    wrapper = llg.TokenizerWrapper(_TokenTexts(self.path, self.vocab, self.eos))
                    self._tok = llg.LLTokenizer(wrapper, n_vocab=self.vocab, eos_token=self.eos)
            return self._tok

    def guide(self, constraint: Constraint) -> Guide:
        return Guide(_llg().LLMatcher(self.get(), constraint.grammar_text()), self.vocab, self.eos)


class _TokenTexts:
    """The vocabulary as llguidance's ``TokenizerWrapper`` wants it: each token's bytes (its
    decoded text), the special tokens, and an encoder."""

    def __init__(self, path: Path, vocab: int, eos: int):
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(path))
        special = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
        self.tokens = [self._tok.decode([i], skip_special_tokens=False).encode("utf-8") for i in range(vocab)]
        self.special_token_ids = sorted(i for i in special if i < vocab)
        self.eos_token_id, self.bos_token_id = eos, None

    def __call__(self, text: str) -> list:
        return self._tok.encode(text, add_special_tokens=False).ids


class Guide:
    """The grammar state of one request, at its committed generated tokens. Paths below
    (``path``: tokens after the committed ones) are explored and rolled back, never kept."""

    def __init__(self, matcher, vocab: int, eos: int):
        self.m, self.vocab, self.eos = matcher, vocab, eos
        if matcher.is_error():
            raise StagedxError(f"cannot start the grammar: {matcher.get_error()}")
        self.masks = 0  # masks computed
        self.seconds = 0.0  # time in the grammar engine

    def forced(self) -> list:
        """Tokens the grammar forces next (possibly empty)."""
        t0 = time.perf_counter()
        out = [] if self.m.is_stopped() else list(self.m.compute_ff_tokens())
        self.seconds += time.perf_counter() - t0
        return out

    def legal(self, path: list) -> int:
        """How many leading tokens of ``path`` the grammar accepts."""
        if not path:
            return 0
        t0 = time.perf_counter()
        n = int(self.m.validate_tokens([int(t) for t in path]))
        self.seconds += time.perf_counter() - t0
        return n

    def allowed(self, path: list) -> np.ndarray:
        """[V] bool: the tokens allowed after ``path`` (which must be legal)."""
        t0 = time.perf_counter()
        if path and not self.m.consume_tokens([int(t) for t in path]):
            raise StagedxError(f"grammar refused a path it had validated: {self.m.get_error()}")
        try:
            bits = np.frombuffer(self.m.compute_bitmask(), np.uint8)
        finally:
            if path:
                self.m.rollback(len(path))
        mask = np.unpackbits(bits, bitorder="little")[: self.vocab].astype(bool)
        self.masks += 1
        self.seconds += time.perf_counter() - t0
        return mask

    def commit(self, tokens: list) -> None:
        """Advance past ``tokens`` (a final EOS ends the decode: not fed to the grammar)."""
        t0 = time.perf_counter()
        if tokens and tokens[-1] == self.eos:
            tokens = tokens[:-1]
        if tokens and not self.m.consume_tokens([int(t) for t in tokens]):
            raise StagedxError(f"grammar refused an accepted token: {self.m.get_error()}")
        self.seconds += time.perf_counter() - t0

    @property
    def done(self) -> bool:
        """The grammar accepts nothing more (only EOS may follow)."""
        return bool(self.m.is_stopped())
