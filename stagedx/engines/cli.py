"""``stagedx build-engine`` and ``stagedx validate`` (heavy imports inside the commands)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import StagedxError

_BUNDLE = click.Path(exists=True, file_okay=False, path_type=Path)


@click.command("build-engine")
@click.argument("bundle", type=_BUNDLE)
@click.option(
    "--max-tree",
    type=int,
    default=64,
    show_default=True,
    help="Most new tokens per engine call (tree size; longer prompts are chunked).",
)
@click.option(
    "--max-context", type=int, default=None, help="Most committed + new tokens [default: min(2048, model positions)]."
)
@click.option(
    "--timing-cache",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TensorRT timing cache to read and update [default: BUNDLE/engines/timing-*.cache].",
)
@click.option(
    "--workspace", "workspace_gb", type=float, default=4.0, show_default=True, help="Builder workspace limit in GB."
)
def build_engine(
    bundle: Path, max_tree: int, max_context: int | None, timing_cache: Path | None, workspace_gb: float
) -> None:
    """Build one TensorRT engine per neural model of BUNDLE (needs a CUDA GPU and TensorRT)."""
    from .build import BuildConfig, build_engines

    cfg = BuildConfig(
        bundle=bundle, max_tree=max_tree, max_context=max_context, timing_cache=timing_cache, workspace_gb=workspace_gb
    )
    records = build_engines(cfg, log=lambda msg: click.echo(msg, err=True))
    for r in records:
        click.echo(f"{r.role}: {r.file} ({r.precision}, {r.gpu_name}, TensorRT {r.tensorrt_version})")


@click.command("validate")
@click.argument("bundle", type=_BUNDLE)
def validate(bundle: Path) -> None:
    """Compare each available backend with the transformers reference saved by export."""
    from .validate import format_table, validate_bundle

    checks = validate_bundle(bundle)
    click.echo(format_table(checks))
    failed = [c for c in checks if not c.passed]
    if failed:
        worst = max(failed, key=lambda c: c.max_rel_error)
        raise StagedxError(
            f"validation failed: {len(failed)} check(s) over tolerance (worst: "
            f"{worst.backend} {worst.role} {worst.output} "
            f"{worst.max_rel_error:.3g} > {worst.tolerance:.0e})"
        )
    click.echo("validation passed")


COMMANDS = [build_engine, validate]
