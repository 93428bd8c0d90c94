"""Field-level checks of a parsed manifest: every value a stage will use has the right type and
range, so a tampered or hand-edited ``manifest.json`` fails here, in one line naming the field,
instead of deep inside ONNX Runtime or NumPy. Standard library only, like the rest of ``stagedx.manifest``."""

from __future__ import annotations

import re

from ..errors import StagedxError
from .graph import DEFAULT_IO, DTYPES, KV_KEYS

_SHA256 = re.compile(r"[0-9a-f]{64}")
_ARCH_INTS = ("n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden", "vocab_size", "max_positions")


def _fail(where: str, what: str, value) -> None:
    text = repr(value)
    raise StagedxError(f"manifest.json: {where} must be {what}, got {text[:80]}{'...' if len(text) > 80 else ''}")


def _int(where: str, value, low: int = 0, high: int | None = None) -> None:
    if type(value) is not int or value < low or (high is not None and value > high):
        bound = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        _fail(where, bound, value)


def _file(where: str, file, sha) -> None:
    if not isinstance(file, str) or not file:
        _fail(f"{where}.file", "a file name", file)
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        _fail(f"{where}.sha256", "64 lowercase hex digits", sha)


def check_object(where: str, value, what: str = "an object", kind: type = dict) -> None:
    """Refuse ``value`` unless it is a ``kind`` (a JSON object by default)."""
    if not isinstance(value, kind):
        _fail(where, what, value)


def check_manifest(m) -> None:
    """Raise a StagedxError naming the first field of ``m`` (a ``Manifest``) that is unusable."""
    from . import DRAFT2_KINDS, DRAFT2_NGRAM, ROLES  # the package imports this module first

    _int("batch_size", m.batch_size, 1, 1)
    t = m.tokenizer
    _file("tokenizer", t.file, t.sha256)
    _int("tokenizer.vocab_size", t.vocab_size, 1)
    for name in ("eos_token_id", "bos_token_id"):
        if getattr(t, name) is not None:
            _int(f"tokenizer.{name}", getattr(t, name), 0, t.vocab_size - 1)
    if not isinstance(t.add_bos_token, bool):
        _fail("tokenizer.add_bos_token", "true or false", t.add_bos_token)
    if t.add_bos_token and t.bos_token_id is None:
        _fail("tokenizer.bos_token_id", "a token id (add_bos_token is true)", None)
    if not isinstance(m.models, dict) or set(m.models) != set(ROLES):
        _fail("models", f"an object with exactly {', '.join(ROLES)}", m.models)
    for role in ROLES:
        _check_model(role, m.models[role], DTYPES)
    d2 = m.draft2
    if d2.kind not in DRAFT2_KINDS:
        _fail("draft2.kind", f"one of {', '.join(DRAFT2_KINDS)}", d2.kind)
    if d2.kind in DRAFT2_NGRAM and d2.ngram is None:
        _fail("draft2.ngram", f"an n-gram entry for kind {d2.kind!r}", None)
    if d2.ngram is not None:
        _file("draft2.ngram", d2.ngram.file, d2.ngram.sha256)
        _int("draft2.ngram.topk", d2.ngram.topk, 1)
    if not isinstance(m.kv_reserved_slots, dict):
        _fail("kv_reserved_slots", "an object", m.kv_reserved_slots)
    for backend, slots in m.kv_reserved_slots.items():
        _int(f"kv_reserved_slots.{backend}", slots, 0, 64)
    if m.reference is not None:  # objects, lists and tuning keys were checked while parsing
        _file("reference", m.reference.file, m.reference.sha256)
    for i, eng in enumerate(m.engines):
        _file(f"engines[{i}]", eng.file, eng.sha256)


def _check_model(role: str, e, dtypes) -> None:
    where = f"models.{role}"
    if not isinstance(e.arch.family, str):
        _fail(f"{where}.arch.family", "a string", e.arch.family)
    if e.role != role:
        _fail(f"{where}.role", repr(role), e.role)
    _file(where, e.file, e.sha256)
    if e.external_data is not None:
        _file(f"{where}.external_data", e.external_data.file, e.external_data.sha256)
    if e.dtype not in dtypes:
        _fail(f"{where}.dtype", f"one of {', '.join(dtypes)}", e.dtype)
    a = e.arch
    for name in _ARCH_INTS:
        _int(f"{where}.arch.{name}", getattr(a, name), 1)
    if a.n_heads % a.n_kv_heads:
        _fail(f"{where}.arch.n_kv_heads", f"a divisor of n_heads {a.n_heads}", a.n_kv_heads)
    _int(f"{where}.topk", e.topk, 1, a.vocab_size)
    _int(f"{where}.weight_bytes", e.weight_bytes, 0)

    if (
        not isinstance(e.io, dict)
        or set(DEFAULT_IO) - set(e.io)
        or not all(isinstance(v, str) and v for v in e.io.values())
    ):
        _fail(f"{where}.io", f"an object naming the graph's {', '.join(DEFAULT_IO)}", e.io)
    for key in KV_KEYS:
        if "{i}" not in e.io.get(key, "{i}"):
            _fail(f"{where}.io.{key}", "a name pattern with {i}", e.io.get(key))
    if not isinstance(e.source, dict):
        _fail(f"{where}.source", "an object", e.source)
