"""The bundle manifest: the only contract between export, engines and runtime.

A bundle is a folder holding ``manifest.json`` plus the files it names. Export writes it,
``build-engine`` and ``tune`` add to it (atomically), the runtime only reads it. This module
imports nothing but the standard library so that every stage can use it.

Schema (version 1), as JSON::

    {
      "schema_version": 1,
      "stagedx_version": "0.1.0",
      "created_utc": "2026-11-24T12:00:00Z",
      "batch_size": 1,
      "tokenizer": {"file": "tokenizer.json", "sha256": "...", "eos_token_id": 0,
                    "bos_token_id": 0, "vocab_size": 8192, "chat_template": "{% for m in messages %}..." | null},
      "models": {
        "oracle": ModelEntry, "draft": ModelEntry
      },
      "draft2": {"kind": "ngram" | "prompt-lookup" | "both" | "none",
                 "ngram": NgramEntry | null},
      "kv_reserved_slots": {"onnxruntime": 0, "tensorrt": 1},
      "reference": {"file": "reference.npz", "sha256": "...", "tolerance": 1e-4} | null,
      "engines": [EngineEntry, ...],
      "tuning": {"<device>|<backend>|<threads>": {...}}
    }

ModelEntry::

    {"role": "oracle", "file": "oracle.onnx", "sha256": "...",
     "external_data": {"file": "oracle.onnx.data", "sha256": "..."} | null,
     "dtype": "fp32" | "fp16", "topk": 32, "opset": 18,
     "arch": {"family": "gpt2", "n_layers": 6, "n_heads": 6, "n_kv_heads": 6,
              "head_dim": 64, "hidden": 384, "vocab_size": 8192, "max_positions": 1024},
     "n_params": 14200000, "weight_bytes": 28400000,
     "source": {"checkpoint": "models/stdlib-code-pair/oracle", "model_type": "gpt2",
                "architectures": ["GPT2LMHeadModel"]},
     "io": {"input_ids": "input_ids", "position_ids": "position_ids", "tree_mask": "tree_mask",
            "past_key": "past_key.{i}", "past_value": "past_value.{i}",
            "logits": "logits", "topk_values": "topk_values", "topk_indices": "topk_indices",
            "new_key": "new_key.{i}", "new_value": "new_value.{i}"},
     "verify": {"max_rel_error": 3e-6, "tolerance": 1e-4} | null,
     "quantization": QuantEntry | null}   (absent in older manifests = null)

QuantEntry (weight-only quantization of the verified fp32 graph; ``weight_bytes`` is then the
quantized graph's own, ``verify`` the fp32 graph's parity before quantization)::

    {"method": "matmul-nbits", "bits": 4 | 8, "block_size": 32, "symmetric": false,
     "accuracy_level": 4, "ops": ["MatMul", "Gather"],
     "tool": "onnxruntime 1.32.0 MatMulNBitsQuantizer", "fp32_weight_bytes": 56745984,
     "agreement": 0.97, "max_rel_error": 0.03, "min_agreement": 0.85, "n_tokens": 1024,
     "heldout": "stdlib sample"}

Graph contract (every neural model, batch size 1):
  inputs  input_ids [T] int64, position_ids [T] int64, tree_mask [T, P+T] bool (True = may
          attend), past_key.{i} / past_value.{i} [P, H_kv, D] (model dtype)
  outputs logits [T, V] and topk_values [T, K] in the model dtype (an fp16 bundle returns
          fp16 logits; ModelEntry.dtype says which), topk_indices [T, K] int64,
          new_key.{i} / new_value.{i} [T, H_kv, D] for the new tokens only.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .errors import StagedxError
from .files import sha256_file, write_atomic

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
ROLES = ("oracle", "draft")
DRAFT2_KINDS = ("ngram", "prompt-lookup", "both", "none")
DTYPES = ("fp32", "fp16")
QUANT_BITS = (4, 8)

DEFAULT_IO = {
    "input_ids": "input_ids",
    "position_ids": "position_ids",
    "tree_mask": "tree_mask",
    "past_key": "past_key.{i}",
    "past_value": "past_value.{i}",
    "logits": "logits",
    "topk_values": "topk_values",
    "topk_indices": "topk_indices",
    "new_key": "new_key.{i}",
    "new_value": "new_value.{i}",
}
DEFAULT_KV_RESERVED_SLOTS = {"onnxruntime": 0, "tensorrt": 1}


@dataclass(frozen=True)
class FileRef:
    file: str
    sha256: str


@dataclass(frozen=True)
class ArchDims:
    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    vocab_size: int
    max_positions: int


@dataclass(frozen=True)
class QuantEntry:
    """How a model's weights were quantized and how close it stayed to its fp32 graph."""

    method: str  # "matmul-nbits": onnxruntime.quantization.MatMulNBitsQuantizer
    bits: int  # 4 | 8
    block_size: int  # weights per scale along K
    symmetric: bool
    accuracy_level: int  # MatMulNBits accuracy_level (4: int8 activations on CPU)
    ops: tuple[str, ...]  # op types quantized
    tool: str
    fp32_weight_bytes: int
    agreement: float  # greedy next-token agreement with the fp32 graph on held-out text
    max_rel_error: float  # max|q - fp32| / max|fp32| over the held-out logits
    min_agreement: float  # the threshold export enforced
    n_tokens: int  # held-out positions compared
    heldout: str = ""

    @property
    def kind(self) -> str:
        return f"int{self.bits}"

    @staticmethod
    def from_dict(d: dict) -> "QuantEntry":
        q = QuantEntry(**{**d, "ops": tuple(d.get("ops", ()))})
        b = q.block_size
        if (q.bits not in QUANT_BITS or not isinstance(b, int) or b < 16 or b & (b - 1)
                or not 0.0 <= q.agreement <= 1.0 or not 0.0 <= q.min_agreement <= 1.0):
            raise StagedxError(f"manifest.json has an invalid quantization record: bits {q.bits}, "
                               f"block size {b}, agreement {q.agreement}")
        return q


@dataclass(frozen=True)
class ModelEntry:
    role: str
    file: str
    sha256: str
    dtype: str
    topk: int
    arch: ArchDims
    n_params: int
    weight_bytes: int
    source: dict
    opset: int = 18
    external_data: FileRef | None = None
    io: dict = field(default_factory=lambda: dict(DEFAULT_IO))
    verify: dict | None = None
    quantization: QuantEntry | None = None

    def io_name(self, key: str, layer: int | None = None) -> str:
        name = self.io[key]
        return name.format(i=layer) if layer is not None else name


@dataclass(frozen=True)
class NgramEntry:
    file: str
    sha256: str
    order: int
    topk: int
    n_tokens: int
    corpus: tuple[str, ...] = ()


@dataclass(frozen=True)
class Draft2Entry:
    kind: str
    ngram: NgramEntry | None = None


@dataclass(frozen=True)
class TokenizerEntry:
    file: str
    sha256: str
    eos_token_id: int | None
    bos_token_id: int | None
    vocab_size: int
    chat_template: str | None = None  # Jinja2 source from the checkpoint's tokenizer config


@dataclass(frozen=True)
class Manifest:
    tokenizer: TokenizerEntry
    models: dict  # role -> ModelEntry
    draft2: Draft2Entry
    schema_version: int = SCHEMA_VERSION
    stagedx_version: str = ""
    created_utc: str = ""
    batch_size: int = 1
    kv_reserved_slots: dict = field(default_factory=lambda: dict(DEFAULT_KV_RESERVED_SLOTS))
    reference: dict | None = None
    engines: tuple = ()  # of plain dicts, written by stagedx.engines
    tuning: dict = field(default_factory=dict)  # key "<device>|<backend>|<threads>" -> dict

    @property
    def oracle(self) -> ModelEntry:
        return self.models["oracle"]

    @property
    def draft(self) -> ModelEntry:
        return self.models["draft"]

    def reserved_slots(self, backend: str) -> int:
        return int(self.kv_reserved_slots.get(backend, 0))

    def files(self) -> Iterator[FileRef]:
        """Every file the manifest names, with its expected sha256."""
        yield FileRef(self.tokenizer.file, self.tokenizer.sha256)
        for entry in self.models.values():
            yield FileRef(entry.file, entry.sha256)
            if entry.external_data is not None:
                yield entry.external_data
        if self.draft2.ngram is not None:
            yield FileRef(self.draft2.ngram.file, self.draft2.ngram.sha256)
        if self.reference is not None:
            yield FileRef(self.reference["file"], self.reference["sha256"])
        for eng in self.engines:
            yield FileRef(eng["file"], eng["sha256"])

    # -- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["engines"] = list(self.engines)
        return d

    @staticmethod
    def from_dict(d: dict) -> "Manifest":
        if not isinstance(d, dict):
            raise StagedxError(f"manifest.json must hold a JSON object, not a {type(d).__name__}")
        version = d.get("schema_version")
        if type(version) is not int:
            raise StagedxError("manifest.json has no integer schema_version: not a stagedx bundle")
        if version < 1:
            raise StagedxError(f"bundle manifest has schema version {version}; this stagedx reads 1 to {SCHEMA_VERSION}")
        if version > SCHEMA_VERSION:
            raise StagedxError(
                f"bundle manifest has schema version {version}, newer than this stagedx "
                f"understands ({SCHEMA_VERSION}); upgrade stagedx"
            )
        try:
            models = {role: _model_from_dict(d["models"][role]) for role in ROLES}
            ng = d["draft2"].get("ngram")
            draft2 = Draft2Entry(
                kind=d["draft2"]["kind"],
                ngram=None if ng is None else NgramEntry(**{**ng, "corpus": tuple(ng.get("corpus", ()))}),
            )
            manifest = Manifest(
                tokenizer=TokenizerEntry(**d["tokenizer"]),
                models=models,
                draft2=draft2,
                schema_version=version,
                stagedx_version=d.get("stagedx_version", ""),
                created_utc=d.get("created_utc", ""),
                batch_size=d.get("batch_size", 1),
                kv_reserved_slots=dict(d.get("kv_reserved_slots", DEFAULT_KV_RESERVED_SLOTS)),
                reference=d.get("reference"),
                engines=tuple(d.get("engines", ())),
                tuning=dict(d.get("tuning", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StagedxError(f"manifest.json is malformed: {type(exc).__name__} {exc}") from exc
        from .manifest_check import check_manifest  # noqa: PLC0415 - keeps this module short

        check_manifest(manifest)
        return manifest


def _model_from_dict(d: dict) -> ModelEntry:
    d = dict(d)
    d["arch"] = ArchDims(**d["arch"])
    if d.get("external_data") is not None:
        d["external_data"] = FileRef(**d["external_data"])
    if d.get("quantization") is not None:
        d["quantization"] = QuantEntry.from_dict(d["quantization"])
    return ModelEntry(**d)


def load_manifest(bundle: str | os.PathLike, check_files: bool = True) -> Manifest:
    """Read ``BUNDLE/manifest.json``; with ``check_files``, verify every file's sha256."""
    bundle = Path(bundle)
    path = bundle / MANIFEST_NAME
    if not bundle.is_dir():
        raise StagedxError(f"bundle folder not found: {bundle}")
    if not path.is_file():
        raise StagedxError(f"{bundle} is not a stagedx bundle: no {MANIFEST_NAME}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StagedxError(f"cannot read {path}: {exc}") from exc
    manifest = Manifest.from_dict(data)
    for ref in manifest.files():
        bundle_file(bundle, ref.file)  # confinement is checked even when hashes are not
    if check_files:
        verify_files(bundle, manifest)
    return manifest


def bundle_file(bundle: str | os.PathLike, name: str) -> Path:
    """``bundle / name``, refused (before anything reads it) unless it is a relative path that
    resolves, symbolic links followed, to a place inside the bundle folder."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise StagedxError(f"manifest names an invalid file {name!r}")
    path = Path(bundle) / name
    root = Path(bundle).resolve()
    if Path(name).is_absolute() or not path.resolve().is_relative_to(root):
        raise StagedxError(f"manifest names {name!r}, which lies outside the bundle folder {bundle}: refused")
    return path


def verify_files(bundle: Path, manifest: Manifest) -> None:
    for ref in manifest.files():
        p = bundle_file(bundle, ref.file)
        if not p.is_file():
            raise StagedxError(f"bundle file missing: {p}")
        if sha256_file(p) != ref.sha256:
            raise StagedxError(f"bundle file modified (sha256 mismatch): {p}")


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Path:
    """Write ``manifest.json`` into ``folder`` atomically."""
    return write_atomic(Path(folder) / MANIFEST_NAME, json.dumps(manifest.to_dict(), indent=2) + "\n")


def update_manifest(bundle: str | os.PathLike, **changes: Any) -> Manifest:
    """Replace top-level fields (e.g. ``engines=...``, ``tuning=...``) atomically."""
    manifest = load_manifest(bundle, check_files=False)
    new = dataclasses.replace(manifest, **changes)
    write_manifest(bundle, new)
    return new


