"""``stagedx distill``: the command line of :mod:`stagedx.export.distill`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click


@click.command()
@click.argument("oracle")
@click.option("--draft", "init", default=None, help="Draft checkpoint to start from (local folder or cached hub id).")
@click.option(
    "--draft-shape",
    default=None,
    metavar="LxWxH",
    help="Start from random weights of this shape instead (layers x width x heads).",
)
@click.option("--corpus", multiple=True, help="File or folder (its *.py files), or the word stdlib (repeatable).")
@click.option(
    "--targets",
    type=click.Path(path_type=Path),
    default=None,
    help="Train from stored oracle targets (`stagedx distill-targets`) instead of running the oracle.",
)
@click.option(
    "--draft-layers",
    type=int,
    default=1,
    show_default=True,
    help="With --targets: the draft keeps the oracle's first N layers (Llama oracles).",
)
@click.option(
    "--head-vocab",
    type=int,
    default=8192,
    show_default=True,
    help="With --targets: the draft's head scores only the N most frequent tokens (0: all).",
)
@click.option(
    "--loss",
    type=click.Choice(["kl", "greedy"]),
    default="kl",
    show_default=True,
    help="With --targets: KL on the top-k + tail, or cross-entropy on the oracle's greedy token.",
)
@click.option(
    "--eval-every", type=int, default=0, show_default=True, help="With --targets: validation metrics every N steps."
)
@click.option(
    "--exclude-from",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON list of corpus-relative paths held out of training (they become the held-out text of the metrics).",
)
@click.option("--minutes", type=float, default=None, help="Training budget in wall minutes.")
@click.option("--steps", type=int, default=None, help="Training budget in optimizer steps.")
@click.option(
    "--seq-len",
    type=int,
    default=256,
    show_default=True,
    help="Tokens per training window. Positions beyond it are not trained: "
    "use at least the context length you decode at.",
)
@click.option("--batch", type=int, default=16, show_default=True, help="Windows per step.")
@click.option("--lr", type=float, default=3e-4, show_default=True, help="Peak AdamW learning rate.")
@click.option(
    "--temperature", type=float, default=1.0, show_default=True, help="Match the oracle at this sampling temperature."
)
@click.option(
    "--top-k",
    type=int,
    default=0,
    show_default=True,
    help="Match the oracle's top-k warped distribution (0: full vocabulary).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: torch's].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["auto", "bf16", "fp32"]),
    default="auto",
    show_default=True,
    help="bf16 autocast or fp32 (auto: bf16 on CUDA and on CPUs with native bf16).",
)
@click.option(
    "--corpus-tokens",
    type=int,
    default=10_000_000,
    show_default=True,
    help="Most training tokens read from the corpus (files in seeded random order).",
)
@click.option("--eval-contexts", type=int, default=64, show_default=True, help="Held-out windows for the metrics.")
@click.option("--eval-len", type=int, default=128, show_default=True, help="Tokens per held-out window.")
@click.option(
    "--checkpoint-minutes",
    type=float,
    default=5.0,
    show_default=True,
    help="Save the resume state this often (OUT.resume/).",
)
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Checkpoint folder to write.")
def distill(
    oracle,
    init,
    draft_shape,
    corpus,
    targets,
    draft_layers,
    head_vocab,
    loss,
    eval_every,
    exclude_from,
    minutes,
    steps,
    seq_len,
    batch,
    lr,
    temperature,
    top_k,
    seed,
    threads,
    device,
    precision,
    corpus_tokens,
    eval_contexts,
    eval_len,
    checkpoint_minutes,
    force,
    output,
):
    """Train a draft for ORACLE by forward-KL distillation; write a Hugging Face checkpoint.

    Rerun the same command after an interruption to resume from the last saved state.
    """
    command = "stagedx " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["distill"] else ""
    if targets is not None:
        _from_targets(locals())
        return
    if not corpus:
        raise click.UsageError("give --corpus (or --targets DIR)")
    from .distill import DistillConfig, parse_shape
    from .distill import distill as run
    from .distill_data import CorpusSpec

    cfg = DistillConfig(
        oracle=oracle,
        output=output,
        init=init,
        shape=parse_shape(draft_shape) if draft_shape else None,
        corpus=CorpusSpec(paths=tuple(corpus), exclude_from=exclude_from, max_tokens=corpus_tokens, seed=seed),
        minutes=minutes,
        steps=steps,
        seq_len=seq_len,
        batch=batch,
        lr=lr,
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        threads=threads,
        device=device,
        precision=precision,
        eval_contexts=eval_contexts,
        eval_len=eval_len,
        checkpoint_minutes=checkpoint_minutes,
        force=force,
        progress=True,
        command=command,
    )
    record = run(cfg, log=lambda msg: click.echo(msg, err=True))
    click.echo(
        f"distilled {output}: {record['run']['steps']} steps in "
        f"{record['run']['seconds'] / 60:.1f} min; KL {record['before']['kl']:.4f} -> "
        f"{record['after']['kl']:.4f}"
    )


def _from_targets(opts: dict) -> None:
    """``--targets DIR``: the stored-targets trainer (options of the online one are refused)."""
    from ..errors import StagedxError
    from .distill_offline import OfflineConfig, distill_offline

    clash = [
        name
        for name, key in (("--draft", "init"), ("--draft-shape", "draft_shape"), ("--corpus", "corpus"))
        if opts[key]
    ]
    if clash:
        raise StagedxError(f"--targets trains from stored targets: drop {', '.join(clash)}")
    cfg = OfflineConfig(
        oracle=opts["oracle"],
        targets=opts["targets"],
        output=opts["output"],
        layers=opts["draft_layers"],
        head_vocab=opts["head_vocab"],
        loss=opts["loss"],
        minutes=opts["minutes"],
        steps=opts["steps"],
        seq_len=opts["seq_len"],
        batch=opts["batch"],
        lr=opts["lr"],
        seed=opts["seed"],
        threads=opts["threads"],
        device=opts["device"],
        eval_every=opts["eval_every"],
        checkpoint_minutes=opts["checkpoint_minutes"],
        force=opts["force"],
        command=opts["command"],
    )
    record = distill_offline(cfg, log=lambda msg: click.echo(msg, err=True))
    before, after = record["before"], record["after"]
    click.echo(
        f"distilled {cfg.output}: {record['run']['steps']} steps in {record['run']['seconds'] / 60:.1f} min; "
        f"KL(top-k+tail) {before['kl_topk_tail']:.4f} -> {after['kl_topk_tail']:.4f}, "
        f"top-1 {before['top1']:.3f} -> {after['top1']:.3f}"
    )
