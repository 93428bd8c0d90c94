"""``stagedx generate``: decode with a bundle (no PyTorch involved)."""

from __future__ import annotations

import json
import sys

import click

from ..errors import StagedxError
from . import STRATEGIES


def _tree_config(gen, sampling, overrides: dict):
    """The tuned / default tree for this sampling mode with the command line's overrides."""
    import dataclasses

    overrides = {k: v for k, v in overrides.items() if v is not None}
    if not overrides:
        return None
    if "fanouts" in overrides:
        try:
            overrides["fanouts"] = tuple(int(x) for x in overrides["fanouts"].split(",") if x.strip())
        except ValueError:
            raise StagedxError(f"--fanouts must be comma-separated integers, got {overrides['fanouts']!r}") from None
    try:  # TreeConfig validates itself; name the options the value came from
        return dataclasses.replace(gen.tree_for(sampling), **overrides)
    except StagedxError as exc:
        raise StagedxError(f"{exc} (from --tree-budget / --max-depth / --fanouts / --draft-calls)") from None


def _sampling_spec(sampling: str | None, temperature: float | None) -> tuple[str, float]:
    """``--sampling`` and ``--temperature`` as the server reads ``temperature``: a temperature
    alone samples, 0 is greedy; contradictions are refused rather than one option ignored."""
    if temperature is None:
        return sampling or "greedy", 1.0
    if temperature == 0:
        if sampling not in (None, "greedy"):
            raise StagedxError(f"--temperature 0 means greedy decoding; it cannot go with --sampling {sampling}")
        return "greedy", 1.0
    if sampling is not None and sampling.strip().lower() == "greedy":
        raise StagedxError(f"--sampling greedy takes no --temperature (got {temperature:g}): drop one of them")
    return sampling or "sample", temperature


def _constraint(json_schema, regex, grammar):
    """At most one of --json-schema FILE, --regex R, --grammar FILE, as a ``Constraint``."""
    given = [n for n, v in (("--json-schema", json_schema), ("--regex", regex), ("--grammar", grammar)) if v]
    if len(given) > 1:
        raise StagedxError(f"give at most one of --json-schema, --regex and --grammar (got {', '.join(given)})")
    if not given:
        return None
    from .constraint import Constraint

    if regex:
        return Constraint.regex(regex)
    path = json_schema or grammar
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise StagedxError(f"cannot read {given[0]} {path}: {exc}") from None
    return Constraint.json_schema(text) if json_schema else Constraint.grammar(text)


def _stats_line(res) -> str:
    s = res.stats
    t = s.time_s
    return (
        f"[{s.strategy} {s.sampling}] {s.new_tokens} tokens in {t['total'] * 1e3:.1f} ms "
        f"({s.new_tokens / max(t['total'], 1e-9):.1f} tok/s), {s.oracle_calls} oracle calls "
        f"({s.tokens_per_oracle_call:.2f} tokens/call), {s.draft_calls} draft calls, "
        f"accepted {s.accepted_by_stage}, finish={res.finish_reason}"
        + (f"; planner: {planner_line(s.planner)}" if s.planner is not None else "")
    )


def planner_line(p) -> str:
    """The auto planner's decisions in one line: share of rounds per option, stages' rounds."""
    rounds = max(1, sum(p.choices.values()))
    shares = ", ".join(f"{k} {100 * n / rounds:.0f}%" for k, n in sorted(p.choices.items(), key=lambda kv: -kv[1]))
    return f"{shares}; stages on (rounds) {p.stages}; overhead {1e3 * p.overhead_s / rounds:.3f} ms/round"


@click.command("generate")
@click.argument("bundle", type=click.Path())
@click.argument("prompt")
@click.option("--strategy", type=click.Choice(STRATEGIES), default="auto", show_default=True)
@click.option(
    "--sampling",
    default=None,
    help="greedy | sample | topk:K | topp:P  [default: greedy; sample when --temperature > 0 is given]",
)
@click.option(
    "--temperature",
    type=float,
    default=None,
    help="sampling temperature; alone it means --sampling sample, 0 means greedy (as the server's)  [default: 1]",
)
@click.option("--max-new-tokens", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=None, help="seed for sampling (same seed + settings = same output)")
@click.option("--stop", multiple=True, help="stop string (repeatable)")
@click.option(
    "--threads",
    type=int,
    default=None,
    help="ONNX Runtime intra-op threads, 1 to the CPU cores available [default: all of them]",
)
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | tensorrt")
@click.option(
    "--tree-budget", type=int, default=None, help="oracle tree nodes per call (default: tuned, else built-in)"
)
@click.option("--max-depth", type=int, default=None, help="deepest tree level")
@click.option("--fanouts", default=None, help="draft2 fan-outs per level, e.g. 12,7,4,1,1,1 (the paper's)")
@click.option(
    "--draft-calls",
    type=int,
    default=None,
    help="sequential draft calls per round (0: draft2 feeds the oracle directly)",
)
@click.option(
    "--json-schema", default=None, help="FILE: a JSON schema the output must match (JSON with no free whitespace)"
)
@click.option("--regex", default=None, help="a regular expression the output must match")
@click.option("--grammar", default=None, help="FILE: a Lark grammar (llguidance's dialect) the output must match")
@click.option("--ignore-eos", is_flag=True, help="keep generating past EOS")
@click.option("--truncate", is_flag=True, help="keep the end of a prompt longer than the context")
@click.option("--stats", is_flag=True, help="print decoding statistics to stderr")
@click.option(
    "--json", "as_json", is_flag=True, help="print one JSON object (text, tokens, stats) instead of streaming"
)
@click.option(
    "--compare",
    is_flag=True,
    help="run baseline, speculative, staged and staged3 (always three stages) on the prompt and compare",
)
def generate(
    bundle,
    prompt,
    strategy,
    sampling,
    temperature,
    max_new_tokens,
    seed,
    stop,
    threads,
    device,
    tree_budget,
    max_depth,
    fanouts,
    draft_calls,
    json_schema,
    regex,
    grammar,
    ignore_eos,
    truncate,
    stats,
    as_json,
    compare,
):
    """Generate a continuation of PROMPT with the bundle's models (PROMPT "-" reads stdin)."""
    if prompt == "-":
        try:
            raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
            prompt = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError as exc:
            raise StagedxError(f"the prompt on stdin is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    from .backends.ort import process_owner_thread_pool
    from .device import available_cores, check_threads
    from .generator import Generator
    from .sampling import SamplingConfig

    cfg = SamplingConfig.parse(*_sampling_spec(sampling, temperature))
    check_threads(threads, "--threads")
    if seed is not None and seed < 0:
        raise StagedxError(f"--seed must be an integer >= 0, got {seed}")
    if max_new_tokens < 1:
        raise StagedxError(f"--max-new-tokens must be >= 1, got {max_new_tokens}")
    constraint = _constraint(json_schema, regex, grammar)
    process_owner_thread_pool(threads or available_cores())
    with Generator(bundle, device=device, strategy=strategy, threads=threads) as gen:
        tree = _tree_config(
            gen, cfg, {"budget": tree_budget, "max_depth": max_depth, "fanouts": fanouts, "draft_calls": draft_calls}
        )
        opts = dict(sampling=cfg, seed=seed, stop=stop, ignore_eos=ignore_eos, truncate=truncate, tree=tree)
        opts["constraint"] = constraint
        if compare:
            _compare(gen, prompt, max_new_tokens, opts)
        elif as_json:
            res = gen.generate(prompt, max_new_tokens=max_new_tokens, **opts)
            click.echo(
                json.dumps(
                    {
                        "text": res.text,
                        "tokens": res.tokens,
                        "finish_reason": res.finish_reason,
                        "stats": res.stats.as_dict(),
                        "device": gen.device,
                    }
                )
            )
        else:
            _stream(gen, prompt, max_new_tokens, opts, stats)


def describe(tree) -> str:
    from .shapes import describe as describe_tree

    return describe_tree(tree)


def _stream(gen, prompt, max_new_tokens, opts, stats) -> None:
    with gen.stream(prompt, max_new_tokens=max_new_tokens, **opts) as stream:
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
    sys.stdout.write("\n")
    res = stream.result
    if res.finish_reason == "context":
        click.echo(f"stopped: reached the context limit of {gen.context_limit} tokens", err=True)
    if stats:
        tree = describe(opts["tree"] or gen.tree_for(opts["sampling"]))
        if res.stats.strategy == "auto":
            tree = "chosen per round by the planner"
        click.echo(f"device: {gen.device} ({gen.backend}); tree: {tree}", err=True)
        click.echo(_stats_line(res), err=True)


def _compare(gen, prompt, max_new_tokens, opts) -> None:
    """Warm up, then run each strategy on the same prompt; greedy outputs must be identical."""
    gen.generate(prompt, max_new_tokens=8, **{**opts, "strategy": "staged"})
    variants = {
        "baseline": {"strategy": "baseline"},
        "speculative": {"strategy": "speculative"},
        "staged": {"strategy": "staged"},  # the tuned (else default) tree for this device
        "auto": {"strategy": "auto"},  # the online planner
        "staged3": {"strategy": "staged", "tree": gen.three_stage_tree(opts["sampling"])},
    }
    results = {
        name: gen.generate(prompt, max_new_tokens=max_new_tokens, **{**opts, **v}) for name, v in variants.items()
    }
    base = results["baseline"]
    tree = opts["tree"] or gen.tree_for(opts["sampling"])
    click.echo(f"device: {gen.device} ({gen.backend}), sampling {opts['sampling'].label}")
    click.echo(f"staged tree: {describe(tree)}")
    for name, res in results.items():
        speed = base.stats.time_s["total"] / max(res.stats.time_s["total"], 1e-9)
        click.echo(f"{name:<12}{_stats_line(res)}  speedup x{speed:.2f}")
    click.echo("(staged: tuned or default tree for this device; staged3: always draft2 -> draft -> oracle)")
    if opts["sampling"].greedy:
        same = all(r.tokens == base.tokens for r in results.values())
        click.echo("greedy outputs identical to baseline: " + ("yes" if same else "NO"))
        if not same:
            raise StagedxError("speculative output differs from baseline under greedy decoding")
    click.echo("--- staged output ---")
    click.echo(results["staged"].text)


COMMANDS = [generate]
