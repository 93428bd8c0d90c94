"""Weight-only int8 / int4 quantization of an exported graph, with ONNX Runtime's own tooling.

A post-processing step on a verified fp32 graph: ``onnxruntime.quantization``'s
``MatMulNBitsQuantizer`` turns every MatMul with a constant weight into a ``MatMulNBits``
contrib op (block-wise, one scale and zero point per ``block_size`` weights along K) and, for
int4, the embedding ``Gather`` into ``GatherBlockQuantized``. Activations, the KV cache and
the logits stay fp32; inputs and outputs (names, shapes, dtypes) are unchanged, so the
runtime runs a quantized bundle exactly like an fp32 one.

Our graphs compute the (tied) LM head as ``MatMul(x, Transpose(W[V,E]))`` (``head.py``), so
that the file stores W once; the quantizer only handles a constant *right* operand, so the
Transpose is first replaced by W^T as its own initializer (quantized; the embedding Gather
keeps W).

The quantized graph is lossy, so export measures it against the fp32 graph (itself verified
against transformers) on held-out text: greedy next-token agreement (argmax of the quantized
logits equals the fp32 argmax at every position of the held-out chunks, teacher forced) and
the max logit error ``max|q - ref| / max|ref|``; below ``min_agreement`` export refuses.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StagedxError
from ..manifest import DEFAULT_IO, QUANT_BITS, ROLES, ArchDims, GraphIO, QuantEntry

KINDS = {"int8": 8, "int4": 4}
CARRY = "gguf"  # a GGUF input's own blocks, carried into MatMulNBits (gguf_blocks.py)
DEFAULT_BLOCK_SIZE = 32
DEFAULT_ACCURACY_LEVEL = 4  # MatMulNBits: int8 activations on CPU (fastest; see docs/quantization.md)
DEFAULT_MIN_AGREEMENT = 0.85
DEFAULT_HELDOUT_TOKENS = 1024
CHUNK = 128  # tokens per held-out sequence (one graph call each, P = 0)
METHOD = "matmul-nbits"


@dataclass(frozen=True)
class QuantizeOptions:
    """What to quantize (role -> "int8" | "int4") and how; the acceptance threshold."""

    kinds: tuple[tuple[str, str], ...] = ()  # ((role, kind), ...)
    block_size: int = DEFAULT_BLOCK_SIZE
    accuracy_level: int = DEFAULT_ACCURACY_LEVEL
    symmetric: bool = False
    min_agreement: float = DEFAULT_MIN_AGREEMENT
    heldout: tuple[str, ...] = ()  # files / folders / JSON lists; () = a stdlib sample
    heldout_tokens: int = DEFAULT_HELDOUT_TOKENS

    def kind(self, role: str) -> str | None:
        return dict(self.kinds).get(role)

    def check(self) -> None:
        for role, kind in self.kinds:
            if role not in ROLES or kind not in (*KINDS, CARRY):
                raise StagedxError(
                    f"bad quantization {role}={kind} (roles {', '.join(ROLES)}; kinds {', '.join((*KINDS, CARRY))})"
                )
        b = self.block_size
        if b < 16 or b & (b - 1):
            raise StagedxError(f"--quant-block-size must be a power of two >= 16, got {b}")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise StagedxError(f"--quant-accuracy-level must be 0..4, got {self.accuracy_level}")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise StagedxError(f"--min-agreement must be in [0, 1], got {self.min_agreement}")
        if self.heldout_tokens < 1:
            raise StagedxError(f"--heldout-tokens must be positive, got {self.heldout_tokens}")


def parse_quantize(spec: str | None) -> tuple[tuple[str, str], ...]:
    """``int8`` / ``int4`` / ``gguf`` (both models) or ``oracle=int4,draft=int8`` (``none``
    keeps fp32; ``gguf`` carries a GGUF input's own blocks)."""
    if not spec:
        return ()
    spec = spec.strip()
    if "=" not in spec:
        pairs = [(role, spec) for role in ROLES]
    else:
        pairs = []
        for part in spec.split(","):
            role, _, kind = part.strip().partition("=")
            if role not in ROLES:
                raise StagedxError(f"--quantize: unknown model {role!r} in {spec!r} (use {' / '.join(ROLES)})")
            if any(role == seen for seen, _ in pairs):
                raise StagedxError(f"--quantize: {role} is named twice in {spec!r}; name each model once")
            pairs.append((role, kind.strip()))
    out = []
    for role, kind in pairs:
        if kind not in (*KINDS, CARRY, "none"):
            raise StagedxError(f"--quantize: unknown kind {kind!r} (choose int8, int4, gguf or none)")
        if kind != "none":
            out.append((role, kind))
    return tuple(out)


# -- graph rewriting and quantization --------------------------------------------------------
def untie_head(model) -> int:
    """Give the LM head a constant right operand the quantizer handles: the head's
    ``Transpose(W)`` (``head.py``; graphs exported before it are first rewritten to that form)
    becomes a W^T initializer. Returns how many heads were rewritten."""
    from onnx import numpy_helper

    from .head import to_right_operand, transposed_weights

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    is_weight = lambda name: name in inits and len(inits[name].dims) == 2  # noqa: E731
    to_right_operand(g, is_weight)
    done = 0
    for tr in transposed_weights(g, is_weight):
        w = numpy_helper.to_array(inits[tr.input[0]])  # [V, E]
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), tr.output[0]))  # [E, V]
        g.node.remove(tr)
        done += 1
    return done


def initializer_bytes(model) -> int:
    """Bytes of the graph's weights as stored (int4 counted at half a byte)."""
    from onnx import TensorProto, helper

    total = 0
    for t in model.graph.initializer:
        n = int(np.prod(t.dims, dtype=np.int64))
        if t.data_type in (TensorProto.INT4, TensorProto.UINT4):
            total += (n + 1) // 2
        else:
            total += n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return total


def quantize_graph(src: Path, dst: Path, bits: int, opts: QuantizeOptions) -> tuple[int, Path | None]:
    """Quantize the graph ``src`` into ``dst`` (+ ``dst.data`` when large); returns
    (weight bytes of the quantized graph, external data file or None)."""
    import onnx

    model = onnx.load(str(src))
    untie_head(model)
    ops = quantized_ops(bits)
    q = _quantizer_class()(
        model,
        bits=bits,
        block_size=opts.block_size,
        is_symmetric=opts.symmetric,
        accuracy_level=opts.accuracy_level,
        op_types_to_quantize=ops,
    )
    q.process()
    model = q.model.model
    del q
    return save_quantized(model, dst)


def save_quantized(model, dst: Path) -> tuple[int, Path | None]:
    """Write a quantized graph to ``dst`` (+ ``dst.data`` when large); returns
    (weight bytes, external data file or None)."""
    import onnx

    from .onnx_export import EXTERNAL_FROM

    weight_bytes = initializer_bytes(model)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if weight_bytes >= EXTERNAL_FROM:  # the same rule as unquantized graphs
        external = dst.with_name(dst.name + ".data")
        onnx.save_model(
            model,
            str(dst),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=external.name,
            size_threshold=1024,
        )
        return weight_bytes, external
    onnx.save_model(model, str(dst))
    return weight_bytes, None


def _quantizer_class():
    """``MatMulNBitsQuantizer``, imported without keeping the INFO-level root logging handler
    that its module installs with ``logging.basicConfig`` (it would spam every export)."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError as exc:
        raise StagedxError(
            f"--quantize needs onnxruntime's quantization tools: {exc} (pip install 'stagedx[export,cpu]')"
        ) from exc
    finally:
        for h in root.handlers[:]:
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
    # its opset-21 / IR-10 upgrade for int4 tensors is expected: ONNX Runtime loads the result
    logging.getLogger(MatMulNBitsQuantizer.__module__).setLevel(logging.ERROR)
    return MatMulNBitsQuantizer


def quantized_ops(bits: int) -> tuple[str, ...]:
    return ("MatMul", "Gather") if bits == 4 else ("MatMul",)


# -- measuring the quantized graph --------------------------------------------------------------
def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(os.cpu_count() or 1, 16))
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _chunk_feeds(ids: np.ndarray, dims: ArchDims) -> dict:
    t = len(ids)
    empty = np.zeros((0, dims.n_kv_heads, dims.head_dim), np.float32)  # [0, H, D]
    io = GraphIO.from_io(DEFAULT_IO, dims.n_layers)  # export names every graph with DEFAULT_IO
    feeds = {
        io.input_ids: ids.astype(np.int64),
        io.position_ids: np.arange(t, dtype=np.int64),  # [T]
        io.tree_mask: np.tril(np.ones((t, t), dtype=bool)),
    }  # [T, T] causal
    feeds.update(dict.fromkeys(io.past, empty))
    return feeds


def heldout_chunks(sources: tuple[str, ...], tokenizer_file: Path, n_tokens: int, chunk: int) -> list[np.ndarray]:
    """Up to ``n_tokens`` tokens of held-out text in chunks of ``chunk`` tokens: from
    ``sources`` (files, folders of *.py, JSON lists of stdlib-relative paths such as a model
    card's val_files.json) or, by default, a spread sample of the standard library."""
    from tokenizers import Tokenizer

    files = _heldout_files(sources)
    tok = Tokenizer.from_file(str(tokenizer_file))
    chunks: list[np.ndarray] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        ids = np.asarray(tok.encode(text, add_special_tokens=False).ids, dtype=np.int64)
        for start in range(0, len(ids) - chunk + 1, chunk):
            chunks.append(ids[start : start + chunk])
            if len(chunks) * chunk >= n_tokens:
                return chunks
    if not chunks:
        raise StagedxError(f"held-out text has fewer than {chunk} tokens per file: {', '.join(sources) or 'stdlib'}")
    return chunks


def _heldout_files(sources: tuple[str, ...]) -> list[Path]:
    from .corpus import read_exclude_list, resolve_corpus, stdlib_root

    if not sources:
        files = resolve_corpus(["stdlib"])
        step = max(1, len(files) // 64)
        return files[::step]
    out: list[Path] = []
    for s in sources:
        p = Path(s)
        if p.suffix == ".json" and p.is_file():
            rel = read_exclude_list(p, "--heldout")
            out += [stdlib_root() / r for r in rel if (stdlib_root() / r).is_file()]
        else:
            out += resolve_corpus([s])
    if not out:
        raise StagedxError(f"no held-out files found in {', '.join(sources)}")
    return out


@dataclass(frozen=True)
class Agreement:
    agreement: float  # fraction of positions whose argmax matches fp32
    max_rel_error: float  # max|q - fp32| / max|fp32| over every logit
    n_tokens: int


def measure(fp32_file: Path, q_file: Path, dims: ArchDims, chunks: list[np.ndarray]) -> Agreement:
    """Teacher-forced comparison of the quantized graph with the fp32 graph on ``chunks``."""
    ref_s, q_s = _session(fp32_file), _session(q_file)
    same = total = 0
    num = 0.0
    den = 1e-30
    for ids in chunks:
        feeds = _chunk_feeds(ids, dims)
        ref = ref_s.run(["logits"], feeds)[0]  # [T, V]
        out = q_s.run(["logits"], feeds)[0]  # [T, V]
        same += int((ref.argmax(-1) == out.argmax(-1)).sum())
        total += len(ids)
        num = max(num, float(np.abs(out.astype(np.float64) - ref).max()))
        den = max(den, float(np.abs(ref).max()))
    return Agreement(same / total, num / den, total)


def quant_entry(bits: int, opts: QuantizeOptions, fp32_weight_bytes: int, agr: Agreement, heldout: str) -> QuantEntry:
    import onnxruntime as ort

    assert bits in QUANT_BITS
    return QuantEntry(
        method=METHOD,
        bits=bits,
        block_size=opts.block_size,
        symmetric=opts.symmetric,
        accuracy_level=opts.accuracy_level,
        ops=quantized_ops(bits),
        tool=f"onnxruntime {ort.__version__} MatMulNBitsQuantizer",
        fp32_weight_bytes=int(fp32_weight_bytes),
        agreement=agr.agreement,
        max_rel_error=agr.max_rel_error,
        min_agreement=opts.min_agreement,
        n_tokens=agr.n_tokens,
        heldout=heldout,
    )


def carried_entry(report, opts: QuantizeOptions, fp32_weight_bytes: int, agr: Agreement, heldout: str) -> QuantEntry:
    """The manifest record of a graph whose weights are a GGUF file's own blocks."""
    from .gguf_blocks import BLOCK

    types = ", ".join(f"{k}" for k in sorted(report.tensor_types))
    return QuantEntry(
        method="gguf-blocks",
        bits=report.bits,
        block_size=BLOCK,
        symmetric=set(report.tensor_types) <= {"Q4_0", "Q8_0"},
        accuracy_level=opts.accuracy_level,
        ops=("MatMul",),
        tool=f"stagedx gguf_blocks ({types} carried; {report.describe()})",
        fp32_weight_bytes=int(fp32_weight_bytes),
        agreement=agr.agreement,
        max_rel_error=agr.max_rel_error,
        min_agreement=opts.min_agreement,
        n_tokens=agr.n_tokens,
        heldout=heldout,
    )


def replace_files(src: Path, src_data: Path | None, dst: Path) -> None:
    """Move the quantized graph (and its external data) over the fp32 graph ``dst``."""
    old_data = dst.with_name(dst.name + ".data")
    if old_data.exists():
        old_data.unlink()
    os.replace(src, dst)
    if src_data is not None:
        shutil.move(str(src_data), str(old_data))


# -- the export step ----------------------------------------------------------------------------
@dataclass(frozen=True)
class HeldOut:
    chunks: tuple  # of [CHUNK] int64 token arrays
    description: str


def heldout_text(opts: QuantizeOptions, tokenizer_file: Path) -> HeldOut:
    chunks = heldout_chunks(opts.heldout, tokenizer_file, opts.heldout_tokens, CHUNK)
    return HeldOut(tuple(chunks), ", ".join(opts.heldout) if opts.heldout else "stdlib sample")


def describe(entry) -> str:
    """One line on a quantized ModelEntry (export log, ``stagedx inspect``)."""
    q = entry.quantization
    return (
        f"{q.kind} ({q.method}, block {q.block_size}, accuracy level {q.accuracy_level}): "
        f"{entry.weight_bytes / 1e6:.1f} MB weights (fp32 {q.fp32_weight_bytes / 1e6:.1f} MB); "
        f"greedy agreement with fp32 {q.agreement:.1%} on {q.n_tokens} held-out tokens "
        f"(min {q.min_agreement:.1%}), max logit error {q.max_rel_error:.2e} of the fp32 graph's largest |logit|"
    )


def quantize_model(entry, folder: Path, arrays: dict, opts: QuantizeOptions, heldout: HeldOut, gguf=None):
    """Quantize ``folder/entry.file`` in place (nothing replaced if it is refused); ``gguf``:
    the GGUF file the model was read from (``--quantize gguf`` carries its blocks).

    Returns (the new ModelEntry, reference arrays whose logits are the quantized graph's on
    the verification tree: what ``stagedx validate`` compares backends with)."""
    import dataclasses

    from ..files import sha256_file
    from ..manifest import FileRef
    from ..numerics import rel_error
    from .verify import check_outputs, run_onnx

    kind = opts.kind(entry.role)
    fp32_bytes = entry.weight_bytes
    if kind == CARRY and gguf is None:
        raise StagedxError(
            f"--quantize {entry.role}=gguf needs a GGUF file as the {entry.role} (got a checkpoint folder)"
        )
    src = folder / entry.file
    qdir = folder / ".work" / f"quant-{entry.role}"
    try:
        dst = qdir / entry.file  # same name: an external data file keeps its final name
        if kind == CARRY:
            from .gguf_blocks import carry_graph

            weight_bytes, data, carried = carry_graph(src, dst, Path(gguf), opts.accuracy_level)
            record = lambda agr: carried_entry(carried, opts, fp32_bytes, agr, heldout.description)  # noqa: E731
        else:
            weight_bytes, data = quantize_graph(src, dst, KINDS[kind], opts)
            record = lambda agr: quant_entry(KINDS[kind], opts, fp32_bytes, agr, heldout.description)  # noqa: E731
        agr = measure(src, dst, entry.arch, list(heldout.chunks))
        tree = run_onnx(dst, {k: v for k, v in arrays.items() if k != "logits"})
        check_outputs(tree, arrays["logits"], entry.topk)
        err = max(agr.max_rel_error, rel_error(tree["logits"], arrays["logits"]))
        agr = dataclasses.replace(agr, max_rel_error=err)
        if not agr.agreement >= opts.min_agreement:
            raise StagedxError(
                f"{entry.role} {kind} refused: greedy agreement with fp32 {agr.agreement:.1%} on "
                f"{agr.n_tokens} held-out tokens is below --min-agreement {opts.min_agreement:.1%} "
                f"(max logit error {err:.2e}); nothing written"
            )
        replace_files(dst, data, src)
    finally:
        shutil.rmtree(qdir, ignore_errors=True)
    new = dataclasses.replace(
        entry,
        sha256=sha256_file(src),
        weight_bytes=weight_bytes,
        external_data=None
        if data is None
        else FileRef(src.name + ".data", sha256_file(src.with_name(src.name + ".data"))),
        quantization=record(agr),
    )
    return new, {**arrays, "logits": tree["logits"]}
