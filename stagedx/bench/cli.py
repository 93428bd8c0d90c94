"""``stagedx bench`` and ``stagedx tune``. Heavy imports live inside the command bodies."""

from __future__ import annotations

import contextlib
import sys

import click

from ..errors import StagedxError


def _csv(value: str) -> tuple:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def check_writable_folder(folder, option: str) -> None:
    """``folder`` is (or can be created as) a writable folder: checked before a long run."""
    import os
    from pathlib import Path

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise StagedxError(f"{option} {folder} exists and is not a folder")
    probe = folder
    while not probe.exists():  # the nearest existing ancestor must let us create the rest
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise StagedxError(f"{option} {folder} is not writable ({probe} does not allow it)")


def check_bundle_writable(bundle) -> None:
    """tune stores its result in the manifest: refuse a read-only bundle before measuring."""
    import os
    from pathlib import Path

    from ..manifest import MANIFEST_NAME

    folder = Path(bundle)
    if folder.is_dir() and not (os.access(folder, os.W_OK | os.X_OK) and os.access(folder / MANIFEST_NAME, os.W_OK)):
        raise StagedxError(
            f"{folder} is read-only: tune stores its result in {folder / MANIFEST_NAME}; "
            "copy the bundle somewhere writable first"
        )


def machine_options(f):
    """--threads and --device, shared by bench and tune."""
    f = click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | tensorrt")(f)
    return click.option(
        "--threads", type=int, default=2, show_default=True, help="threads for every backend (pinned, recorded)"
    )(f)


def check_run(threads: int, samplings: str) -> tuple:
    """Checks shared by bench and tune, before anything is loaded: the thread count and every
    sampling mode. Returns the modes."""
    from ..runtime import SamplingConfig
    from ..runtime.device import check_threads

    check_threads(threads, "--threads")
    modes = _csv(samplings)
    if not modes:
        raise StagedxError("--sampling needs at least one mode")
    for mode in modes:
        SamplingConfig.parse(mode)  # fail early on a bad mode
    return modes


@click.command("bench")
@click.argument("bundle", type=click.Path())
@click.option(
    "--prompts",
    default="humaneval",
    show_default=True,
    help="humaneval | humaneval:A-B | chat | chat:A-B (instructions through the bundle's chat template) | "
    'FILE.jsonl (field "prompt", or "messages" for a chat prompt) | text FILE (blank-line-separated prompts)',
)
@click.option("--limit", type=int, default=20, show_default=True, help="first N prompts (0 = all)")
@click.option(
    "--max-new-tokens", type=int, default=128, show_default=True, help="fixed new tokens per run (EOS ignored)"
)
@click.option("--repeats", type=int, default=1, show_default=True, help="interleaved repeats of the whole schedule")
@click.option(
    "--warmup", type=int, default=1, show_default=True, help="unrecorded warm-up runs per method and sampling"
)
@click.option("--methods", default="baseline,speculative,staged,staged3,auto", show_default=True)
@click.option(
    "--sampling", "samplings", default="greedy,topk:50", show_default=True, help="comma-separated sampling modes"
)
@machine_options
@click.option(
    "--peers",
    is_flag=False,
    flag_value="all",
    default=None,
    metavar="[all|transformers|llama.cpp]",
    help="also run other runtimes on the same model: transformers generate / assisted / prompt lookup "
    "(needs torch), llama.cpp plain / prompt lookup (needs llama-cpp-python and a GGUF file); "
    "alone: all of them; one that cannot run is skipped with a note",
)
@click.option(
    "--gguf",
    type=click.Path(dir_okay=False),
    default=None,
    help="GGUF file of the oracle for the llama.cpp peers (default: the oracle's source, when it is a GGUF file)",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(),
    default="bench-out",
    show_default=True,
    help="folder for bench.json, bench.txt and bench.png",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--figure-with",
    "figure_with",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False),
    help="bench.json of another pair to draw beside this one in figure1.png (repeatable)",
)
@click.option(
    "--context",
    "contexts",
    default=None,
    help="sweep the past instead: prompts made exactly N tokens long for each N (e.g. 128,512,1024,2048); "
    "writes context.json / context.txt with decode speed against the memory floor",
)
def bench(
    bundle,
    prompts,
    limit,
    max_new_tokens,
    repeats,
    warmup,
    methods,
    samplings,
    threads,
    device,
    peers,
    gguf,
    out_dir,
    seed,
    figure_with,
    contexts,
):
    """Measure baseline, speculative and staged decoding on BUNDLE (the paper's table)."""
    from pathlib import Path

    from ..files import write_atomic
    from .bench import STAGEDX_METHODS, BenchConfig, BenchRequest, benchmark
    from .figure1 import write_figure1
    from .peers import parse_peers
    from .report import render, write_json, write_png

    methods_t = _csv(methods)
    bad = [m for m in methods_t if m not in STAGEDX_METHODS]
    if bad or not methods_t:
        raise StagedxError(f"unknown method(s) {bad}: use a subset of {','.join(STAGEDX_METHODS)}")
    if max_new_tokens < 1 or repeats < 1 or warmup < 0 or threads < 1:
        raise StagedxError("--max-new-tokens, --repeats and --threads must be >= 1, --warmup >= 0")
    if seed < 0:
        raise StagedxError(f"--seed must be an integer >= 0, got {seed}")
    samplings_t = check_run(threads, samplings)
    sweep = _context_sweep(contexts, peers)
    others = [_load_bench_json(Path(p)) for p in figure_with]
    out = Path(out_dir)
    check_writable_folder(out, "--out")  # created only when there are results to write
    cfg = BenchConfig(methods_t, samplings_t, max_new_tokens, repeats, warmup, seed)
    peer_families = parse_peers(peers)
    if gguf and "llama.cpp" not in peer_families:
        raise StagedxError("--gguf is for the llama.cpp peers: add --peers (or --peers llama.cpp)")
    req = BenchRequest(bundle, prompts, limit or None, cfg, threads, device, peer_families, gguf)

    from ..runtime.backends.ort import process_owner_thread_pool

    process_owner_thread_pool(threads)
    bar_state: dict = {}

    def progress(rec, total):
        if "bar" not in bar_state:
            bar_state["bar"] = click.progressbar(
                length=total,
                label="bench",
                file=sys.stderr,
                item_show_func=lambda r: r and f"{r['method']} {r['sampling']} {r['prompt']}",
            )
            bar_state["bar"].__enter__()
        bar_state["bar"].update(1, rec)

    if sweep:
        from .context import context_command

        try:
            click.echo(context_command(req, sweep, out, progress, echo=lambda s: click.echo(s, err=True)))
        finally:
            if "bar" in bar_state:
                bar_state["bar"].__exit__(None, None, None)
        return
    try:
        result = benchmark(req, progress, echo=lambda s: click.echo(s, err=True))
    finally:
        if "bar" in bar_state:
            bar_state["bar"].__exit__(None, None, None)
    text = render(result)
    click.echo(text)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StagedxError(f"cannot create --out {out}: {exc.strerror}") from exc
    write_json(out / "bench.json", result)
    write_atomic(out / "bench.txt", text + "\n")
    png = write_png(out / "bench.png", result["summary"], title=f"stagedx bench ({result['environment']['device']})")
    fig1 = write_figure1(out / "figure1.png", [result, *others])
    written = [out / "bench.json", out / "bench.txt", *(p for p in (png, fig1) if p)]
    click.echo("wrote " + ", ".join(str(p) for p in written), err=True)


def _context_sweep(contexts, peers: bool) -> tuple:
    """The --context lengths, checked (() without --context)."""
    if contexts is None:
        return ()
    from .context import parse_contexts

    if peers:
        raise StagedxError("--context measures stagedx's own methods only: drop --peers")
    return parse_contexts(contexts)


def _load_bench_json(path) -> dict:
    import json

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StagedxError(f"--figure-with {path}: not a readable bench.json ({exc})") from exc
    if not isinstance(data, dict) or "cost_curve" not in data or "summary" not in data:
        raise StagedxError(f"--figure-with {path}: no cost curve in it (written by an older stagedx bench?)")
    return data


@click.command("tune")
@click.argument("bundle", type=click.Path())
@click.option(
    "--calibration",
    default="humaneval:82-163",
    show_default=True,
    help="calibration prompts, disjoint from the benchmark's (humaneval:A-B | FILE)",
)
@click.option("--limit", type=int, default=8, show_default=True, help="first N calibration prompts (0 = all)")
@click.option("--max-new-tokens", type=int, default=64, show_default=True, help="tokens per calibration run")
@click.option(
    "--sampling",
    default="greedy,topk:50",
    show_default=True,
    help="comma-separated sampling modes; one tree is tuned per mode (greedy / sampled)",
)
@click.option("--passes", type=int, default=1, show_default=True, help="coordinate-ascent passes over the search space")
@machine_options
@click.option(
    "--acceptance-from",
    "acceptance_from",
    type=click.Path(),
    default=None,
    help="run the calibration generations on this bundle (same functions, e.g. the small pair a "
    "cost-scaled twin was built from); latency is still measured on BUNDLE",
)
@click.option(
    "--reuse-curves",
    is_flag=True,
    help="price with the latency curves a previous tune stored for this device (with --acceptance-from, "
    "BUNDLE's models are then never loaded: a large oracle is tuned at the twin's speed)",
)
def tune(bundle, calibration, limit, max_new_tokens, sampling, passes, threads, device, acceptance_from, reuse_curves):
    """Measure this device and store the best tree shape in BUNDLE's manifest."""
    from ..runtime import Generator
    from ..runtime.backends.ort import process_owner_thread_pool
    from .tune import TuneConfig, tune_bundle

    if max_new_tokens < 1 or passes < 0 or threads < 1:
        raise StagedxError("--max-new-tokens and --threads must be >= 1, --passes >= 0 (0: evaluate the starts only)")
    samplings = check_run(threads, sampling)
    check_bundle_writable(bundle)  # before the measurement, not after it
    process_owner_thread_pool(threads)
    cfg = TuneConfig(
        calibration=calibration,
        limit=limit or None,
        max_new_tokens=max_new_tokens,
        samplings=samplings,
        passes=passes,
        acceptance_from=acceptance_from,
        reuse_curves=reuse_curves,
    )
    with contextlib.ExitStack() as generators:  # closes every Generator opened here

        def load(path):
            return generators.enter_context(Generator(path, device=device, strategy="staged", threads=threads))

        twin = load(acceptance_from) if acceptance_from else None
        if twin is not None and reuse_curves:  # BUNDLE's models are not needed: only its manifest is
            from ..manifest import load_manifest

            if load_manifest(bundle, check_files=False).tokenizer.sha256 != twin.manifest.tokenizer.sha256:
                raise StagedxError(f"--acceptance-from {acceptance_from}: its tokenizer differs from {bundle}'s")
            gen, twin = twin, None
        else:
            gen = load(bundle)
            if twin is not None and twin.manifest.tokenizer.sha256 != gen.manifest.tokenizer.sha256:
                raise StagedxError(f"--acceptance-from {acceptance_from}: its tokenizer differs from {bundle}'s")
        from .bench import available_cores, busy_warning, load_average

        busy = busy_warning(load_average(), available_cores())  # once the input is known good
        if busy:
            click.echo(busy, err=True)
        tune_bundle(bundle, gen, cfg, echo=click.echo, twin=twin)


COMMANDS = [bench, tune]
