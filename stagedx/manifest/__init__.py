"""The bundle manifest: the only contract between export, engines and runtime.

A bundle is a folder holding ``manifest.json`` plus the files it names. Export writes it,
``build-engine`` and ``tune`` add to it (atomically), the runtime only reads it. This module
package imports nothing but the standard library so that every stage can use it.

Schema (version 1), as JSON::

    {
      "schema_version": 1,
      "stagedx_version": "0.1.0",
      "created_utc": "2026-11-24T12:00:00Z",
      "batch_size": 1,
      "tokenizer": {"file": "tokenizer.json", "sha256": "...", "eos_token_id": 0,
                    "bos_token_id": 0, "vocab_size": 8192, "chat_template": "{% for m in messages %}..." | null,
                    "add_bos_token": true (optional; absent = false: prompts get no leading bos)},
      "models": {
        "oracle": ModelEntry, "draft": ModelEntry
      },
      "draft2": {"kind": "ngram" | "prompt-lookup" | "both" | "none",
                 "ngram": NgramEntry | null},
      "kv_reserved_slots": {"onnxruntime": 0, "tensorrt": 1},
      "reference": ReferenceEntry | null,
      "engines": [EngineEntry, ...],
      "tuning": {"<device>|<backend>|<threads>": TuningEntry}
    }

ReferenceEntry (export's transformers reference, read by ``stagedx validate``)::

    {"file": "reference.npz", "sha256": "...", "tolerance": {"fp32": 1e-4, "fp16": 2e-2}}

EngineEntry (one TensorRT plan, written by ``build-engine``)::

    {"role": "oracle", "file": "engines/oracle-....plan", "sha256": "...", "onnx_sha256": "...",
     "tensorrt_version": "10.9.0", "gpu_name": "...", "compute_capability": "9.0",
     "precision": "fp16", "max_tree": 64, "max_context": 1024, "reserved_slots": 1,
     "profiles": [{"input_ids": {"min": [1], "opt": [16], "max": [64]}, ...}], "built_utc": "..."}

TuningEntry (``stagedx tune``; a mode's object holds TreeConfig fields, the search's evidence
and optionally its best ``three_stage`` tree)::

    {"greedy": {...}, "sample": {...}, "tuned_utc": "...", "calibration": {...}, "past_len": 256,
     "oracle_latency_s": {"1": 0.004, ...}, "draft_latency_s": {...},
     "in_loop_factors": {"oracle": 1.1, "draft": 1.2}}

Keys an entry does not know are kept as written (``other``); absent keys stay absent.

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

Package map (one door: import every name from ``stagedx.manifest``): this module holds the
manifest and its entries, reading and writing; ``graph.py`` the graph contract (the ordered
I/O list, dtypes, tolerances); ``tuning.py`` tuning entries and their keys; ``check.py`` the
field checks a loaded manifest passes; ``jsonobj.py`` typed entry <-> JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import StagedxError
from ..files import MANIFEST_NAME as MANIFEST_NAME
from ..files import sha256_file, write_atomic
from .check import check_manifest, check_object
from .entries import QUANT_BITS as QUANT_BITS
from .entries import ArchDims as ArchDims
from .entries import Draft2Entry as Draft2Entry
from .entries import EngineEntry as EngineEntry
from .entries import FileRef as FileRef
from .entries import ModelEntry as ModelEntry
from .entries import NgramEntry as NgramEntry
from .entries import QuantEntry as QuantEntry
from .entries import ReferenceEntry as ReferenceEntry
from .entries import TokenizerEntry as TokenizerEntry
from .graph import DEFAULT_IO as DEFAULT_IO
from .graph import DTYPES as DTYPES
from .graph import KV_KEYS as KV_KEYS
from .graph import NUMPY_DTYPE as NUMPY_DTYPE
from .graph import ORT_TYPE as ORT_TYPE
from .graph import TOLERANCE as TOLERANCE
from .graph import GraphIO as GraphIO
from .tuning import TUNED_MODES as TUNED_MODES
from .tuning import TuningEntry, parse_tuning_key
from .tuning import TuningKey as TuningKey
from .tuning import find_tuning as find_tuning
from .tuning import tuning_key as tuning_key

SCHEMA_VERSION = 1
ROLES = ("oracle", "draft")
DRAFT2_KINDS = ("ngram", "prompt-lookup", "both", "none")
DRAFT2_NGRAM = ("ngram", "both")  # the kinds that carry an n-gram model file
DRAFT2_LOOKUP = ("prompt-lookup", "both")  # the kinds that look up the prompt
NGRAM_FORMAT_VERSION = 1  # format_version inside draft2_ngram.npz
DEFAULT_KV_RESERVED_SLOTS = {"onnxruntime": 0, "tensorrt": 1}


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
    reference: ReferenceEntry | None = None
    engines: tuple = ()  # of EngineEntry, written by stagedx.engines
    tuning: dict = field(default_factory=dict)  # key "<device>|<backend>|<threads>" -> TuningEntry

    def __post_init__(self) -> None:
        """Entries given as JSON objects (tests, hand-built manifests) become typed ones."""
        if isinstance(self.reference, dict):
            object.__setattr__(self, "reference", ReferenceEntry.from_dict(self.reference))
        if any(isinstance(e, dict) for e in self.engines):
            engines = tuple(EngineEntry.from_dict(e) if isinstance(e, dict) else e for e in self.engines)
            object.__setattr__(self, "engines", engines)
        if isinstance(self.tuning, dict) and any(isinstance(v, dict) for v in self.tuning.values()):
            tuning = {k: TuningEntry.from_dict(v, k) if isinstance(v, dict) else v for k, v in self.tuning.items()}
            object.__setattr__(self, "tuning", tuning)

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
            yield FileRef(self.reference.file, self.reference.sha256)
        for eng in self.engines:
            yield FileRef(eng.file, eng.sha256)

    # -- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not self.tokenizer.add_bos_token:  # written only when true: older readers keep reading the rest
            del d["tokenizer"]["add_bos_token"]
        d["reference"] = None if self.reference is None else self.reference.to_dict()
        d["engines"] = [e.to_dict() for e in self.engines]
        d["tuning"] = {k: v.to_dict() for k, v in self.tuning.items()}
        return d

    @staticmethod
    def from_dict(d: dict) -> Manifest:
        if not isinstance(d, dict):
            raise StagedxError(f"manifest.json must hold a JSON object, not a {type(d).__name__}")
        version = d.get("schema_version")
        if type(version) is not int:
            raise StagedxError("manifest.json has no integer schema_version: not a stagedx bundle")
        if version < 1:
            raise StagedxError(
                f"bundle manifest has schema version {version}; this stagedx reads 1 to {SCHEMA_VERSION}"
            )
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
                reference=None if d.get("reference") is None else ReferenceEntry.from_dict(d["reference"]),
                engines=_engines(d.get("engines", [])),
                tuning=_tuning(d.get("tuning", {})),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StagedxError(f"manifest.json is malformed: {type(exc).__name__} {exc}") from exc
        check_manifest(manifest)
        return manifest


def _engines(records: list) -> tuple:
    check_object("engines", records, "a list", list)
    return tuple(EngineEntry.from_dict(r, f"engines[{i}]") for i, r in enumerate(records))


def _tuning(tuning: dict) -> dict:
    check_object("tuning", tuning)
    for key in tuning:
        parse_tuning_key(key)
    return {key: TuningEntry.from_dict(entry, key) for key, entry in tuning.items()}


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
