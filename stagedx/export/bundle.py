"""``export_bundle``: checkpoints in, a verified, self-describing bundle folder out.

Everything is written into a temporary folder next to the output (``AtomicFolder``) and
renamed at the very end, so a failed or interrupted export leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import gc
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import StagedxError
from ..files import AtomicFolder, sha256_file, utc_now
from ..manifest import (
    DRAFT2_KINDS,
    DRAFT2_NGRAM,
    DTYPES,
    TOLERANCE,
    Draft2Entry,
    FileRef,
    Manifest,
    ModelEntry,
    ReferenceEntry,
    TokenizerEntry,
    write_manifest,
)
from .arch import Checkpoint, open_checkpoint
from .quantize import QuantizeOptions
from .verify import TreeCase, random_tree, reference_inputs, reference_outputs, verify_graph

REFERENCE_FILE = "reference.npz"
TOKENIZER_FILE = "tokenizer.json"
NGRAM_FILE = "draft2_ngram.npz"
VERIFY_PAST, VERIFY_NODES = 7, 9  # the random tree used for parity and reference.npz


@dataclass(frozen=True)
class ExportConfig:
    oracle: str  # local folder or hub id (local HF cache only)
    draft: str
    output: Path
    draft2: str | None = None  # None: "ngram" with a corpus, "prompt-lookup" without
    corpus: tuple[Path, ...] = ()
    exclude_from: Path | None = None  # JSON list of corpus-relative paths to leave out
    dtype: str = "fp32"
    topk: int = 32
    force: bool = False
    verify: bool = True
    ngram_max_contexts: int | None = None
    seed: int = 0  # of the random verification tree
    progress: bool = False  # progress bar while fitting the n-gram
    quantize: QuantizeOptions = QuantizeOptions()  # no kinds: fp32 / fp16 graphs as exported

    def draft2_kind(self) -> str:
        if self.draft2 is None:
            return "ngram" if self.corpus else "prompt-lookup"
        return self.draft2


def _check_config(cfg: ExportConfig) -> str:
    kind = cfg.draft2_kind()
    if kind not in DRAFT2_KINDS:
        raise StagedxError(f"unknown draft2 kind {kind!r} (choose from {', '.join(DRAFT2_KINDS)})")
    if cfg.dtype not in DTYPES:
        raise StagedxError(f"unknown dtype {cfg.dtype!r} (choose from {', '.join(DTYPES)})")
    if cfg.topk < 1:
        raise StagedxError(f"--topk must be at least 1, got {cfg.topk}")
    if cfg.ngram_max_contexts is not None and cfg.ngram_max_contexts < 1:
        raise StagedxError(f"--ngram-max-contexts must be at least 1, got {cfg.ngram_max_contexts}")
    if kind in DRAFT2_NGRAM and not cfg.corpus:
        raise StagedxError(f"--draft2 {kind} needs --corpus PATH (files or folders to fit the n-gram on)")
    if cfg.corpus and kind not in DRAFT2_NGRAM:
        raise StagedxError(f"--corpus is only used by --draft2 ngram or both, not {kind}")
    cfg.quantize.check()
    if cfg.quantize.kinds and cfg.dtype != "fp32":
        raise StagedxError("--quantize needs --dtype fp32 (weights are quantized, activations stay fp32)")
    return kind


def _tokenizer_vocab(path: Path) -> dict:
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
    except Exception as exc:  # tokenizers raises plain Exception
        raise StagedxError(f"cannot read tokenizer {path}: {' '.join(str(exc).split())}") from exc


def _check_pair(oracle: Checkpoint, draft: Checkpoint) -> dict:
    """Refuse a pair with different vocabularies; return the oracle's tokenizer vocab."""
    if oracle.tokenizer_file is None:
        raise StagedxError(f"oracle checkpoint {oracle.path} has no tokenizer.json")
    vo, vd = oracle.dims.vocab_size, draft.dims.vocab_size
    if vo != vd:
        raise StagedxError(f"vocabulary mismatch: oracle has vocab_size {vo}, draft has {vd}")
    vocab = _tokenizer_vocab(oracle.tokenizer_file)
    if draft.tokenizer_file is not None and _tokenizer_vocab(draft.tokenizer_file) != vocab:
        raise StagedxError(f"vocabulary mismatch: tokenizer.json of {oracle.path} and {draft.path} differ")
    if len(vocab) > vo:
        raise StagedxError(f"tokenizer has {len(vocab)} tokens but the model's vocab_size is {vo}")
    return vocab


def _release_memory() -> None:
    """Collect, then hand freed heap pages back to the OS (glibc keeps them otherwise, and
    the next phase would stack on top of the last one's high-water mark)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reference(ckpt: Checkpoint, case: TreeCase) -> dict:
    """transformers' fp32 outputs on ``case``, its weights streamed from disk one module at a
    time (``reference.py``); the model is freed before this returns."""
    from .reference import streamed_model

    hf = streamed_model(ckpt.path, ckpt.spec.hf_class)
    try:
        return reference_outputs(hf, case, ckpt.dims.n_layers)
    finally:
        del hf
        _release_memory()


def _export_model(role: str, ckpt: Checkpoint, cfg: ExportConfig, work: Path, case: TreeCase):
    """Export one role; returns (ModelEntry, reference arrays, seconds).

    One large thing in memory at a time: transformers' reference outputs are computed first
    (model freed), then our graph is built from the checkpoint's tensors directly in the export
    dtype, written to ONNX and freed, and only then is the ONNX file loaded for verification.
    """
    import torch

    from .distill_vocab import HEAD_VOCAB_FILE, outside_head, read_head_vocab
    from .onnx_export import export_graph
    from .weights import Weights

    t0 = time.perf_counter()
    ref = _reference(ckpt, case)
    dtype = {"fp32": torch.float32, "fp16": torch.float16}[cfg.dtype]
    graph = ckpt.spec.build_graph(ckpt.config, Weights(ckpt.path), cfg.topk, dtype)
    head_ids = read_head_vocab(ckpt.path, ckpt.dims.vocab_size)
    if head_ids is not None:
        if role != "draft" or not hasattr(graph, "restrict_head"):
            raise StagedxError(
                f"{ckpt.path} has a small-vocabulary head ({HEAD_VOCAB_FILE}): only a Llama-family draft may"
            )
        graph.restrict_head(head_ids)
        ref["logits"] = outside_head(ref["logits"], head_ids)
    out = work.parent / f"{role}.onnx"
    exported = export_graph(graph, ckpt.dims, out, work)
    del graph
    _release_memory()
    entry = ModelEntry(
        role=role,
        file=out.name,
        sha256=sha256_file(out),
        dtype=cfg.dtype,
        topk=min(cfg.topk, ckpt.dims.vocab_size),
        arch=ckpt.dims,
        n_params=exported.n_params,
        weight_bytes=exported.weight_bytes,
        source=ckpt.source(),
        external_data=None
        if exported.external_data is None
        else FileRef(exported.external_data.name, sha256_file(exported.external_data)),
    )
    if cfg.verify:
        record, arrays = verify_graph(ref, entry, out, case)
        entry = dataclasses.replace(entry, verify=record)
    else:  # no ORT check, but reference.npz is still written for `stagedx validate`
        arrays = {**reference_inputs(case, ref, ckpt.dims), "logits": ref["logits"]}
    return entry, arrays, time.perf_counter() - t0


def _corpus_files(cfg: ExportConfig) -> list[Path]:
    """The corpus files (folders expanded, ``stdlib`` = this interpreter's standard library)."""
    from .corpus import read_exclude_list, resolve_corpus

    return resolve_corpus(cfg.corpus, read_exclude_list(cfg.exclude_from))


def _fit_ngram(cfg: ExportConfig, files: list[Path], tokenizer_file: Path, folder: Path, eos_id: int | None):
    """Fit draft2's n-gram on ``files`` (the n-gram module's default number of successors)."""
    from .corpus import read_exclude_list
    from .ngram import NgramFitConfig, fit_ngram

    kwargs = {"exclude": read_exclude_list(cfg.exclude_from), "show_progress": cfg.progress}
    if cfg.ngram_max_contexts is not None:
        kwargs["max_contexts"] = cfg.ngram_max_contexts
    if eos_id is not None:
        kwargs["eos_id"] = eos_id
    return fit_ngram(files, tokenizer_file, folder / NGRAM_FILE, NgramFitConfig(**kwargs))


def _log_model(log, entry: ModelEntry, seconds: float) -> None:
    size = entry.weight_bytes / 1e6
    if entry.quantization is not None:
        from .quantize import describe

        log(f"{entry.role}: {entry.file} {describe(entry)}")
        return
    if entry.verify is None:
        log(
            f"{entry.role}: {entry.file} ({size:.1f} MB weights, {entry.n_params:,} params) in "
            f"{seconds:.1f}s; verification skipped"
        )
        return
    v = entry.verify
    log(
        f"{entry.role}: {entry.file} ({size:.1f} MB weights, {entry.n_params:,} params) in "
        f"{seconds:.1f}s; max logit error {v['max_rel_error']:.2e} relative to max|logit| "
        f"{v['max_abs_logit']:.3g} (tolerance {v['tolerance']:g})"
    )


def export_bundle(config: ExportConfig, log: Callable[[str], None] | None = None) -> Path:
    """Export oracle + draft (+ draft2) into ``config.output``; returns the bundle path."""
    log = log or (lambda _msg: None)
    kind = _check_config(config)
    corpus = _corpus_files(config) if kind in DRAFT2_NGRAM else []  # fail before the slow part
    with contextlib.ExitStack() as stack:  # GGUF inputs: temporary checkpoint folders
        oracle, draft = (_open(name, stack, log) for name in (config.oracle, config.draft))
        return _export(config, kind, corpus, oracle, draft, log)


def _open(name: str, stack: contextlib.ExitStack, log) -> Checkpoint:
    """A checkpoint folder, or a GGUF file read into a temporary one (``gguf.py``)."""
    from .gguf import opened

    folder = stack.enter_context(opened(name, log))
    return dataclasses.replace(open_checkpoint(folder), name=name)


def _export(config: ExportConfig, kind: str, corpus: list, oracle: Checkpoint, draft: Checkpoint, log) -> Path:
    vocab = _check_pair(oracle, draft)
    output = Path(config.output)
    case = random_tree(oracle.dims.vocab_size, VERIFY_PAST, VERIFY_NODES, config.seed)
    heldout = None
    if config.quantize.kinds:  # read the held-out text before the slow part
        from .quantize import heldout_text

        heldout = heldout_text(config.quantize, oracle.tokenizer_file)
    with AtomicFolder(output, config.force) as tmp:
        work = tmp / ".work"
        models, arrays = {}, {}
        for role, ckpt in (("oracle", oracle), ("draft", draft)):
            entry, ref, seconds = _export_model(role, ckpt, config, work, case)
            if config.quantize.kind(role):
                from .quantize import quantize_model

                _log_model(log, entry, seconds)
                t0 = time.perf_counter()
                gguf = ckpt.name if "gguf" in ckpt.source() else None  # read from a GGUF file
                entry, ref = quantize_model(entry, tmp, ref, config.quantize, heldout, gguf)
                seconds = time.perf_counter() - t0
            models[role] = entry
            arrays.update({f"{role}.{k}": v for k, v in ref.items()})
            _log_model(log, entry, seconds)
        shutil.rmtree(work, ignore_errors=True)
        np.savez(tmp / REFERENCE_FILE, **arrays)
        shutil.copyfile(oracle.tokenizer_file, tmp / TOKENIZER_FILE)
        ngram = None
        if kind in DRAFT2_NGRAM:
            t0 = time.perf_counter()
            eos = oracle.special_token("eos_token_id")
            ngram = _fit_ngram(config, corpus, tmp / TOKENIZER_FILE, tmp, eos)
            log(f"draft2: {ngram.file} fitted on {ngram.n_tokens:,} tokens in {time.perf_counter() - t0:.1f}s")
        manifest = Manifest(
            tokenizer=TokenizerEntry(
                file=TOKENIZER_FILE,
                sha256=sha256_file(tmp / TOKENIZER_FILE),
                eos_token_id=oracle.special_token("eos_token_id"),
                bos_token_id=oracle.special_token("bos_token_id"),
                add_bos_token=oracle.add_bos_token(),
                vocab_size=len(vocab),
                chat_template=oracle.chat_template(),
            ),
            models=models,
            draft2=Draft2Entry(kind=kind, ngram=ngram),
            stagedx_version=__version__,
            created_utc=utc_now(),
            reference=ReferenceEntry(
                REFERENCE_FILE, sha256_file(tmp / REFERENCE_FILE), tolerance={d: TOLERANCE[d] for d in DTYPES}
            ),
        )
        write_manifest(tmp, manifest)
    log(f"wrote {output}")
    return output
