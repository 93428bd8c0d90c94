"""Open a bundle and build the runner each model gets (ONNX Runtime, or TensorRT engines)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StagedxError
from ..manifest import KV_KEYS, ORT_TYPE, ROLES, Manifest, load_manifest
from .device import available_cores, check_threads, parse_device


def open_bundle(path: str | os.PathLike, check: bool = True) -> tuple[Path, Manifest]:
    """``(bundle folder, manifest)``; with ``check`` every file's sha256 is verified. A missing
    folder, a modified file or a manifest from a newer schema raise a StagedxError."""
    bundle = Path(path)
    return bundle, load_manifest(bundle, check_files=check)


def has_engine(manifest: Manifest, role: str) -> bool:
    return any(e.role == role for e in manifest.engines)


def make_runner(
    bundle_dir: str | os.PathLike,
    manifest: Manifest,
    role: str,
    device: str = "auto",
    threads: int | None = None,
    max_context: int | None = None,
):
    """The runner for ``role``: ``device="tensorrt"`` with engines built for that role uses the
    TensorRT runner (loaded lazily: tensorrt and cuda-python are optional); every other device
    runs the ONNX graph on ONNX Runtime (``auto``: CUDA EP when installed, else CPU)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    check_threads(threads)
    threads = threads or available_cores()  # os.cpu_count() would ignore the affinity mask
    kind, index = parse_device(device)
    if _use_engines(manifest, kind):
        return _trt_runner(bundle_dir, manifest, role, max_context, index)
    from .backends.ort import OrtRunner  # keeps `import stagedx.runtime` light

    check_kv_memory(manifest.models[role], max_context, manifest.reserved_slots("onnxruntime"))
    return OrtRunner(
        bundle_dir,
        manifest.models[role],
        device=device,
        threads=threads,
        max_context=max_context,
        reserved_slots=manifest.reserved_slots("onnxruntime"),
    )


def _use_engines(manifest: Manifest, kind: str) -> bool:
    """TensorRT engines run both models or neither: ``tensorrt`` uses them when the bundle has
    engines (else ONNX Runtime's TensorRT EP), ``auto`` when they are usable on this machine."""
    built = [r for r in ROLES if has_engine(manifest, r)]
    if kind not in ("tensorrt", "auto") or not built:
        return False
    if len(built) != len(ROLES):
        raise StagedxError(f"the bundle has TensorRT engines for {', '.join(built)} only: rerun stagedx build-engine")
    if kind == "tensorrt":
        return True
    try:
        from .backends.trt import tensorrt_unusable  # TensorRT is optional
    except ImportError:
        return False
    return tensorrt_unusable(manifest) is None


def _trt_runner(bundle_dir, manifest: Manifest, role: str, max_context: int | None, index: int):
    try:
        from .backends.trt import TrtRunner  # TensorRT is optional
    except ImportError as exc:
        raise StagedxError(
            f"the TensorRT runner is unavailable in this install ({exc}); use --device cuda or --device cpu"
        ) from exc
    return TrtRunner(bundle_dir, role, max_context=max_context, device_index=index, manifest=manifest)


# -- load-time cross-checks: a disagreement must fail here, in one line, not inside a backend --


def cross_check(bundle_dir, manifest: Manifest, tokenizer, draft2, runners) -> None:
    """Oracle and draft vocabularies, the tokenizer, the n-gram's token ids and each ONNX
    graph's real input/output shapes must agree with the manifest."""
    o, d = manifest.oracle.arch, manifest.draft.arch
    if o.vocab_size != d.vocab_size:
        raise StagedxError(f"manifest: oracle vocab_size {o.vocab_size} != draft vocab_size {d.vocab_size}")
    t = manifest.tokenizer
    if tokenizer.vocab_size != t.vocab_size:
        raise StagedxError(f"{t.file} has {tokenizer.vocab_size} tokens, the manifest says {t.vocab_size}")
    if t.vocab_size > o.vocab_size:
        raise StagedxError(f"{t.file} has {t.vocab_size} tokens, more than the models' vocab_size {o.vocab_size}")
    for name, tok_id in (("eos_token_id", t.eos_token_id), ("bos_token_id", t.bos_token_id)):
        if tok_id is not None and not 0 <= tok_id < o.vocab_size:
            raise StagedxError(f"manifest tokenizer {name} {tok_id} lies outside the vocabulary [0, {o.vocab_size})")
    ngram = getattr(draft2, "ngram", None)
    if ngram is not None:
        _check_ngram(ngram, manifest.draft2.ngram.file, o.vocab_size)
    for runner in runners:
        session = getattr(runner, "session", None)
        if session is not None:  # ONNX Runtime: compare the graph's declared shapes
            check_graph(session, runner.entry)
            if session.get_providers()[0] != "TensorrtExecutionProvider":  # TRT EP: no zero-row past
                probe_last_position(runner)


def check_kv_memory(entry, max_context: int | None, reserved: int) -> None:
    """Refuse a KV cache larger than this machine's memory (a wrong max_positions would
    otherwise end in a MemoryError of terabytes)."""
    import numpy as np

    from .backends.kv import NP_DTYPES

    a = entry.arch
    rows = a.max_positions if max_context is None else max(1, min(int(max_context), a.max_positions))
    itemsize = np.dtype(NP_DTYPES[entry.dtype]).itemsize
    need = 2 * a.n_layers * (rows + reserved) * a.n_kv_heads * a.head_dim * itemsize
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return
    if need > have:
        raise StagedxError(
            f"the {entry.role} KV cache for {rows} positions needs {need / 2**30:.1f} GiB, more than this machine's "
            f"{have / 2**30:.1f} GiB: check max_positions ({a.max_positions}) in the manifest, "
            "or pass a smaller max_context"
        )


def probe_last_position(runner) -> None:
    """One call at the last position the runner will use: a manifest whose max_positions
    exceeds the graph's position table fails here, at load, not in the middle of a reply."""
    import numpy as np
    import onnxruntime as ort

    from .backends.kv import NP_DTYPES

    e, last = runner.entry, runner.max_context - 1
    a, io = e.arch, e.graph_io
    past = np.zeros((0, a.n_kv_heads, a.head_dim), NP_DTYPES[e.dtype])  # [0, H, D]
    feeds = {
        io.input_ids: np.zeros(1, np.int64),
        io.position_ids: np.asarray([last], np.int64),  # [1]
        io.tree_mask: np.ones((1, 1), bool),
    }  # [1, 1]
    feeds.update(dict.fromkeys(io.past, past))
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4  # the error is reported below, in one line
    try:
        runner.session.run([io.topk_indices], feeds, quiet)
    except Exception as exc:  # ONNX Runtime raises its own exception types
        first = " ".join(str(exc).split())[:200]
        raise StagedxError(
            f"{e.file} cannot run at position {last} (max_positions {a.max_positions} in the manifest): {first}"
        ) from exc


def _check_ngram(ngram, file: str, vocab: int) -> None:
    if ngram.vocab_size != vocab:
        raise StagedxError(f"{file} was fitted for vocab_size {ngram.vocab_size}, the models have {vocab}")
    arrays = (ngram.uni_top_ids, ngram.bi.ids, ngram.bi.top_ids, ngram.tri.ids, ngram.tri.top_ids, ngram.bi.keys)
    for a in arrays:
        if a.size and (a.min() < 0 or a.max() >= vocab):
            raise StagedxError(f"{file} holds token ids outside the vocabulary [0, {vocab})")
    if ngram.uni_p.shape != (vocab,):
        raise StagedxError(f"{file}: unigram table has shape {ngram.uni_p.shape}, expected ({vocab},)")


def check_graph(session, entry) -> None:
    """Every static dimension the graph declares must equal the manifest's."""
    a, io = entry.arch, entry.graph_io
    want = {"logits": (None, a.vocab_size), "topk_values": (None, entry.topk), "topk_indices": (None, entry.topk)}
    for i in range(a.n_layers):
        for key in KV_KEYS:
            want[getattr(io, key)[i]] = (None, a.n_kv_heads, a.head_dim)
    names = {key: getattr(io, key) for key in ("logits", "topk_values", "topk_indices")}
    declared = {**{x.name: x for x in session.get_inputs()}, **{x.name: x for x in session.get_outputs()}}
    past = set(io.past_key)
    prefix = entry.io["past_key"].split("{i}")[0]
    extra = [n for n in declared if n.startswith(prefix) and n not in past]
    if extra:
        raise StagedxError(f"{entry.file} has inputs {sorted(extra)} beyond the manifest's {a.n_layers} layers")
    for name, dims in want.items():
        name = names.get(name, name)
        node = declared.get(name)
        if node is None:
            continue  # the runner's contract check names missing inputs / outputs
        shape = list(node.shape)
        bad = len(shape) != len(dims) or any(
            isinstance(s, int) and w is not None and s != w for s, w in zip(shape, dims)
        )
        if bad:
            raise StagedxError(f"{entry.file}: {name} has shape {shape}, the manifest's dims say {list(dims)}")
        if name in past and node.type != ORT_TYPE.get(entry.dtype, node.type):
            raise StagedxError(f"{entry.file}: {name} is {node.type}, the manifest says dtype {entry.dtype}")
