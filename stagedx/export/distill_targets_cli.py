"""``stagedx distill-targets``: the command line of :mod:`stagedx.export.distill_targets`."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("distill-targets")
@click.argument("oracle")
@click.option(
    "--corpus", multiple=True, required=True, help="File or folder (its *.py files), or the word stdlib (repeatable)."
)
@click.option(
    "--exclude-from",
    type=click.Path(path_type=Path),
    default=None,
    help="JSON list of corpus-relative paths held out (they become heldout.npy).",
)
@click.option(
    "--prompts",
    type=click.Path(path_type=Path),
    default=None,
    help="Instructions, one per line: the oracle answers each through its chat template (self-generated text).",
)
@click.option("--seq-len", type=int, default=256, show_default=True, help="Tokens per corpus window.")
@click.option("--k", "k", type=int, default=32, show_default=True, help="Top-k log-probabilities kept per position.")
@click.option("--shard-seqs", type=int, default=16, show_default=True, help="Corpus windows (or prompts) per shard.")
@click.option("--batch", type=int, default=4, show_default=True, help="Corpus windows per oracle forward pass.")
@click.option("--gen-tokens", type=int, default=192, show_default=True, help="Most tokens generated per prompt.")
@click.option(
    "--corpus-tokens", type=int, default=10_000_000, show_default=True, help="Most corpus tokens read (seeded order)."
)
@click.option("--minutes", type=float, default=None, help="Stop after this much wall time (rerun to continue).")
@click.option("--max-shards", type=int, default=1_000_000, show_default=True, help="Stop once this many shards exist.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=None, help="torch CPU threads [default: torch's].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="Targets folder (created or continued)."
)
def distill_targets(
    oracle,
    corpus,
    exclude_from,
    prompts,
    seq_len,
    k,
    shard_seqs,
    batch,
    gen_tokens,
    corpus_tokens,
    minutes,
    max_shards,
    seed,
    threads,
    device,
    output,
):
    """Run ORACLE once over a corpus (and its own answers to --prompts) and store its top-k
    next-token targets for `stagedx distill --targets`.

    Rerun the same command to continue after an interruption or a --minutes budget.
    """
    from .distill_data import CorpusSpec
    from .distill_targets import TargetsConfig, compute_targets

    cfg = TargetsConfig(
        oracle=oracle,
        output=output,
        corpus=CorpusSpec(paths=tuple(corpus), exclude_from=exclude_from, max_tokens=corpus_tokens, seed=seed),
        prompts=prompts,
        seq_len=seq_len,
        k=k,
        shard_seqs=shard_seqs,
        batch=batch,
        gen_tokens=gen_tokens,
        max_shards=max_shards,
        minutes=minutes,
        threads=threads,
        device=device,
    )
    done = compute_targets(cfg, log=lambda msg: click.echo(msg, err=True))
    click.echo(
        f"{output}: {done['shards_written']} new shards ({done['tokens']:,} positions) "
        f"in {done['seconds'] / 60:.1f} min; "
        f"{done['planned']} shards planned"
    )
