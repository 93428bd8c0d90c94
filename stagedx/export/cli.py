"""``stagedx export`` and ``stagedx inspect``. Heavy imports live inside the command bodies."""

from __future__ import annotations

from pathlib import Path

import click

from ..manifest import DRAFT2_KINDS
from .distill_cli import distill
from .distill_targets_cli import distill_targets
from .quantize import (
    DEFAULT_ACCURACY_LEVEL,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_HELDOUT_TOKENS,
    DEFAULT_MIN_AGREEMENT,
)


@click.command()
@click.argument("oracle")
@click.option("--draft", required=True, help="Draft checkpoint: local folder, cached hub id or GGUF file.")
@click.option(
    "--draft2",
    type=click.Choice(DRAFT2_KINDS),
    default=None,
    help="Second draft stage [default: ngram with --corpus, else prompt-lookup].",
)
@click.option(
    "--corpus",
    multiple=True,
    type=click.Path(path_type=Path),
    help="File or folder (its *.py files) to fit the n-gram on, or the word stdlib "
    "for this interpreter's standard library (repeatable).",
)
@click.option(
    "--exclude-from",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON list of corpus-relative paths to leave out (e.g. a validation split).",
)
@click.option(
    "--dtype",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Precision baked into the graphs.",
)
@click.option("--topk", type=int, default=32, show_default=True, help="K of the topk outputs.")
@click.option("--ngram-max-contexts", type=int, default=None, help="Size cap of the n-gram tables.")
@click.option("--force", is_flag=True, help="Replace an existing output bundle.")
@click.option("--no-verify", is_flag=True, help="Skip the ONNX Runtime vs transformers check.")
@click.option(
    "--quantize",
    "quantize_spec",
    default=None,
    metavar="SPEC",
    help="Weight-only quantization: int8 or int4 for both models, or per model, e.g. "
    "oracle=int4,draft=int8 (none keeps a model fp32); gguf carries a GGUF input's own "
    "Q4_0/Q4_1/Q8_0 blocks (docs/gguf.md).",
)
@click.option(
    "--quant-block-size",
    type=int,
    default=DEFAULT_BLOCK_SIZE,
    show_default=True,
    help="Weights per quantization scale (a power of two >= 16).",
)
@click.option(
    "--quant-accuracy-level",
    type=int,
    default=DEFAULT_ACCURACY_LEVEL,
    show_default=True,
    help="MatMulNBits accuracy_level (4: int8 activations, fastest on CPU; 0: fp32).",
)
@click.option(
    "--min-agreement",
    type=float,
    default=DEFAULT_MIN_AGREEMENT,
    show_default=True,
    help="Refuse a quantized model whose greedy next token agrees with fp32 less often.",
)
@click.option(
    "--heldout",
    multiple=True,
    metavar="PATH",
    help="Held-out text for --min-agreement: files, folders (*.py) or JSON lists of "
    "stdlib-relative paths such as a model card's val_files.json [default: a stdlib sample].",
)
@click.option(
    "--heldout-tokens",
    type=int,
    default=DEFAULT_HELDOUT_TOKENS,
    show_default=True,
    help="Held-out tokens compared (in chunks of 128).",
)
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Bundle folder.")
def export(
    oracle,
    draft,
    draft2,
    corpus,
    exclude_from,
    dtype,
    topk,
    ngram_max_contexts,
    force,
    no_verify,
    quantize_spec,
    quant_block_size,
    quant_accuracy_level,
    min_agreement,
    heldout,
    heldout_tokens,
    output,
):
    """Export ORACLE and --draft to ONNX graphs in a verified bundle folder.

    ORACLE and --draft are checkpoint folders, hub ids in the local Hugging Face cache, or
    GGUF files (weights, config, tokenizer and chat template read from the file)."""
    import time

    _require_export_extra()
    from .bundle import ExportConfig, export_bundle
    from .quantize import QuantizeOptions, parse_quantize

    quant = QuantizeOptions(
        kinds=parse_quantize(quantize_spec),
        block_size=quant_block_size,
        accuracy_level=quant_accuracy_level,
        min_agreement=min_agreement,
        heldout=tuple(str(h) for h in heldout),
        heldout_tokens=heldout_tokens,
    )
    config = ExportConfig(
        oracle=oracle,
        draft=draft,
        output=output,
        draft2=draft2,
        corpus=tuple(corpus),
        exclude_from=exclude_from,
        dtype=dtype,
        topk=topk,
        force=force,
        verify=not no_verify,
        ngram_max_contexts=ngram_max_contexts,
        progress=True,
        quantize=quant,
    )
    t0 = time.perf_counter()
    export_bundle(config, log=lambda msg: click.echo(msg, err=True))
    size = sum(p.stat().st_size for p in Path(output).rglob("*") if p.is_file())
    click.echo(f"exported {output} ({size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f}s")


def _require_export_extra() -> None:
    """export runs PyTorch, transformers and onnx: say how to install them, not ModuleNotFoundError."""
    import importlib.util

    from ..errors import StagedxError

    missing = [m for m in ("torch", "transformers", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise StagedxError(
            f"stagedx export needs {', '.join(missing)} (not installed): install the export extra, "
            "e.g. pip install torch==2.13.0 && pip install '.[export,cpu]' from a checkout"
        )


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def summary(bundle: Path) -> str:
    """The manifest of ``bundle`` as readable lines (also reports files that fail their sha256)."""
    return summarize(bundle)[0]


def summarize(bundle: Path) -> tuple[str, str | None]:
    """``(summary lines, problem)``: problem is the file check's error, or None."""
    from ..errors import StagedxError
    from ..manifest import load_manifest, verify_files

    m = load_manifest(bundle, check_files=False)
    lines = [
        f"bundle {bundle}  (schema {m.schema_version}, stagedx {m.stagedx_version}, "
        f"created {m.created_utc}, batch size {m.batch_size})"
    ]
    t = m.tokenizer
    bos = f"bos {t.bos_token_id}" + (" (prepended to prompts)" if t.add_bos_token else "")
    lines.append(f"tokenizer  {t.file}: vocab {t.vocab_size}, eos {t.eos_token_id}, {bos}")
    for role, e in m.models.items():
        a = e.arch
        lines.append(
            f"{role:<10} {e.file}: {a.family} {a.n_layers} layers, {a.n_heads} heads "
            f"({a.n_kv_heads} kv) x {a.head_dim}, hidden {a.hidden}, vocab {a.vocab_size}, "
            f"max positions {a.max_positions}"
        )
        precision = f"{e.quantization.kind} weights, {e.dtype} activations" if e.quantization else e.dtype
        lines.append(
            f"{'':<10} {e.n_params:,} params, {_fmt_bytes(e.weight_bytes)} weights, {precision}, "
            f"topk {e.topk}, opset {e.opset}, from {e.source.get('checkpoint')}"
            + (f", external data {e.external_data.file}" if e.external_data else "")
        )
        if e.quantization is not None:
            from .quantize import describe

            lines.append(f"{'':<10} quantized {describe(e)}")
        if e.verify:
            what = "fp32 graph verified before quantization" if e.quantization else "verified"
            scale = e.verify.get("max_abs_logit")
            of = f" of max|logit| {scale:.3g}" if scale is not None else " of the largest |logit|"
            lines.append(
                f"{'':<10} {what}: max logit error {e.verify['max_rel_error']:.2e}{of} "
                f"(tolerance {e.verify['tolerance']:g})"
            )
        else:
            lines.append(f"{'':<10} not verified")
    d2 = m.draft2
    line = f"draft2     {d2.kind}"
    if d2.ngram is not None:
        n = d2.ngram
        line += f": {n.file}, order {n.order}, topk {n.topk}, {n.n_tokens:,} corpus tokens"
    lines.append(line)
    lines.append("kv slots   reserved per backend: " + ", ".join(f"{k}={v}" for k, v in m.kv_reserved_slots.items()))
    if m.reference:
        lines.append(f"reference  {m.reference.file}, tolerance {m.reference.tolerance}")
    lines.append(
        f"engines    {len(m.engines)}"
        + "".join(
            f"\n           {e.file}" + (f" ({e.other['device']})" if e.other.get("device") else "") for e in m.engines
        )
    )
    if m.tuning:
        lines.append("tuning     " + ", ".join(sorted(m.tuning)))
    problem = None
    try:
        verify_files(bundle, m)
        lines.append("files      all present, sha256 ok")
    except StagedxError as exc:
        problem = str(exc)
        lines.append(f"files      PROBLEM: {exc}")
    return "\n".join(lines), problem


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
def inspect(bundle):
    """Print the manifest of BUNDLE as a readable summary (exit 2 when a file fails its check)."""
    from ..errors import StagedxError

    text, problem = summarize(bundle)
    click.echo(text)
    if problem is not None:
        raise StagedxError(problem)


COMMANDS = [export, inspect, distill, distill_targets]
