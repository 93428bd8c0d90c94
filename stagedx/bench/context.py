"""``stagedx bench --context N[,N...]``: decode cost against the length of the past.

For each context length N, every prompt of the set is made exactly N tokens long: the prompt
itself at the end, preceded by the prompts after it in the set (cyclically) as earlier
context, cut to its last N tokens. The bench loop of :mod:`.bench` then runs each method on
those token ids (warm-up, interleaving, fixed new-token count, the same rules). Decode speed
excludes the prefill (``metrics.decode_tokens_per_second``).

The floor. At batch size 1 a decode call must at least read the oracle's weights and the live
KV rows once. Per call that is ``weight bytes + past rows x KV bytes per row`` (K and V of every
layer), the past averaged over the decode (N - 1 prompt rows committed by the prefill, plus half
of the new tokens). Divided by the copy bandwidth measured as in :mod:`.roofline` it is the
floor in ms per oracle call; the baseline makes one call per token, so its ms per token over
the floor says how far the graph is from streaming memory once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import StagedxError
from . import metrics


@dataclass(frozen=True)
class TokenPrompt:
    """A prompt given as token ids (``text``: their decoding, for the record only)."""

    id: str
    text: str
    ids: tuple[int, ...]


def parse_contexts(spec: str) -> tuple[int, ...]:
    """``"128,512,2048"`` -> (128, 512, 2048): positive integers, sorted, no repeats."""
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise StagedxError(f"--context takes comma-separated token counts, e.g. 128,512,2048; got {spec!r}") from None
    if not values or min(values) < 2:
        raise StagedxError(f"--context lengths must be integers >= 2, got {spec!r}")
    return tuple(sorted(set(values)))


def long_prompts(tokenizer, prompts: Sequence, n: int, pool: Sequence | None = None) -> list[TokenPrompt]:
    """Each prompt as exactly ``n`` token ids: the prompts after it in ``pool`` (the whole
    prompt set, cyclically; default ``prompts``) as earlier context, then the prompt itself,
    cut to the last ``n`` tokens. A pool of many prompts keeps the context from repeating
    itself (a repeated context is what prompt lookup predicts best: it would flatter staged).
    A tokenizer that leads every prompt with ``<bos>`` (Gemma) gets one, at the start."""
    pool = list(prompts if pool is None else pool)
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        encoded = [np.asarray(tokenizer.encode(p.text), np.int64) for p in pool]
    else:  # the pieces without it; the whole context with it
        encoded = [np.asarray(tokenizer.encode(p.text, add_bos=False), np.int64) for p in pool]
    if sum(len(e) for e in encoded) == 0:
        raise StagedxError("--context: the prompts encode to no tokens")
    index = {p.id: i for i, p in enumerate(pool)}
    out = []
    for p in prompts:
        i = index[p.id]
        pieces, have, j = [encoded[i]], len(encoded[i]), i
        while have < n:  # prepend the following prompts, cycling through the pool
            j = (j + 1) % len(pool)
            pieces.insert(0, encoded[j])
            have += len(encoded[j])
        ids = np.concatenate(pieces)[-n:]  # [n]
        if bos is not None:
            ids = np.concatenate([[bos], ids[1:]]).astype(np.int64)
        out.append(TokenPrompt(f"{p.id}@{n}", tokenizer.decode(ids[-64:]), tuple(int(x) for x in ids)))
    return out


def kv_bytes_per_row(arch, dtype: str) -> int:
    """Bytes one committed row holds in the KV cache: K and V of every layer."""
    itemsize = {"fp32": 4, "fp16": 2}[dtype]
    return 2 * arch.n_layers * arch.n_kv_heads * arch.head_dim * itemsize


def floor_ms_per_call(weight_bytes: int, kv_row_bytes: int, mean_past: float, bandwidth: float) -> float:
    """Milliseconds to read the weights and the live KV once at ``bandwidth`` bytes/s."""
    return 1e3 * (weight_bytes + kv_row_bytes * mean_past) / bandwidth


def summarize_context(records: Sequence[dict], n: int, floor: dict) -> dict:
    """Per sampling and method at context ``n``: decode figures and the floor."""
    out = metrics.summarize(records, floor["weights"])
    for cells in out.values():
        for cell in cells.values():
            new = cell["new_tokens"] / max(1, cell["runs"])
            mean_past = n - 1 + new / 2
            f = floor_ms_per_call(floor["weights"]["oracle"], floor["kv_row_bytes"], mean_past, floor["bandwidth"])
            cell["mean_past"] = mean_past
            cell["floor_ms_per_call"] = f
            cell["oracle_ms_per_call"] = 1e3 * cell["oracle_s_per_call"]
            cell["oracle_call_over_floor"] = cell["oracle_ms_per_call"] / f
            cell["decode_ms_per_token"] = 1e3 / cell["decode_tokens_per_s"]
            cell["decode_token_over_floor"] = cell["decode_ms_per_token"] / f
    return out


def run_sweep(gen, methods: Sequence, prompts: tuple, contexts: Sequence[int], cfg, on_run: Callable | None):
    """The bench loop at every context that fits; ``prompts`` = (measured prompts, pool they
    draw their earlier context from). Returns (records, skipped contexts)."""
    from .bench import run_bench

    measured, pool = prompts
    records, skipped = [], []
    for n in contexts:
        if n + cfg.max_new_tokens > gen.context_limit:
            skipped.append(n)
            continue
        for rec in run_bench(methods, long_prompts(gen.tokenizer, measured, n, pool), cfg, on_run):
            records.append({**rec, "context": n})
    return records, skipped


def context_benchmark(gen, methods: Sequence, prompts: tuple, contexts: Sequence[int], cfg, on_run=None) -> dict:
    """The whole sweep (``prompts`` as for :func:`run_sweep`): records, per-context summaries,
    the floor's inputs, the skipped lengths."""
    from .roofline import measure_bandwidth

    started = time.time()
    records, skipped = run_sweep(gen, methods, prompts, contexts, cfg, on_run)
    oracle = gen.manifest.models["oracle"]
    floor = {
        "bandwidth": measure_bandwidth(),
        "kv_row_bytes": kv_bytes_per_row(oracle.arch, oracle.dtype),
        "weights": {"oracle": int(gen.oracle_weight_bytes), "draft": int(gen.draft_weight_bytes)},
    }
    by_n = metrics.group(records, "context") if records else {}
    return {
        "contexts": [n for n in contexts if n not in skipped],
        "skipped_contexts": skipped,
        "context_limit": gen.context_limit,
        "floor": {**floor, "bandwidth_gb_s": floor["bandwidth"] / 1e9},
        "summary": {str(n): summarize_context(rs, n, floor) for n, rs in sorted(by_n.items())},
        "records": records,
        "started_unix": started,
        "duration_s": time.time() - started,
    }


def render_context(result: dict) -> str:
    """One row per context, sampling and method, then the staged speedup at the longest
    context over the shortest."""
    head = ("context", "sampling", "method", "decode tok/s", "ms/token", "oracle ms/call", "tok/call", "floor ms/call")
    head += ("token/floor", "call/floor", "decode speedup")
    rows = [head]
    for n, by_sampling in result["summary"].items():
        for sampling, cells in by_sampling.items():
            for method, c in cells.items():
                rows.append(
                    (
                        n,
                        sampling,
                        method,
                        f"{c['decode_tokens_per_s']:.1f}",
                        f"{c['decode_ms_per_token']:.2f}",
                        f"{c['oracle_ms_per_call']:.2f}",
                        f"{c['tree_tokens_per_oracle_call']:.1f}",
                        f"{c['floor_ms_per_call']:.2f}",
                        f"{c['decode_token_over_floor']:.2f}x",
                        f"{c['oracle_call_over_floor']:.2f}x",
                        f"{c['decode_speedup_pooled']:.2f}x" if "decode_speedup_pooled" in c else "-",
                    )
                )
    widths = [max(len(r[j]) for r in rows) for j in range(len(head))]
    lines = ["  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    f = result["floor"]
    lines.append(
        f"floor: copy bandwidth {f['bandwidth_gb_s']:.1f} GB/s; oracle weights {f['weights']['oracle'] / 1e6:.1f} MB "
        f"+ {f['kv_row_bytes'] / 1e3:.1f} kB of KV per past row, read once per call"
    )
    lines += _speedup_lines(result)
    if result["skipped_contexts"]:
        lines.append(
            f"skipped (context + new tokens beyond the {result['context_limit']}-token limit): "
            + ", ".join(str(n) for n in result["skipped_contexts"])
        )
    return "\n".join(lines)


def _speedup_lines(result: dict) -> list[str]:
    summary = result["summary"]
    if len(summary) < 2:
        return []
    lo, hi = min(summary, key=int), max(summary, key=int)
    lines = []
    for sampling, cells in summary[hi].items():
        for method, c in cells.items():
            short = summary[lo].get(sampling, {}).get(method, {})
            if method != metrics.BASELINE and "decode_speedup_pooled" in c and "decode_speedup_pooled" in short:
                ratio = c["decode_speedup_pooled"] / short["decode_speedup_pooled"]
                lines.append(
                    f"{method} {sampling}: decode speedup {c['decode_speedup_pooled']:.2f}x at {hi} vs "
                    f"{short['decode_speedup_pooled']:.2f}x at {lo} ({ratio:.2f} of it)"
                )
    return lines


def context_command(req, contexts: Sequence[int], out, progress: Callable | None, echo: Callable) -> str:
    """``stagedx bench --context``: run the sweep for ``req`` (a ``BenchRequest``), write
    ``context.json`` and ``context.txt`` into ``out``; returns the table."""
    from ..files import write_atomic
    from ..runtime import Generator
    from .bench import StagedxMethod, environment
    from .prompts import load_prompts
    from .report import write_json

    pool = load_prompts(req.prompts, None)  # the earlier context comes from the whole set
    prompts = pool[: req.limit] if req.limit else pool
    cfg = req.cfg
    with Generator(req.bundle, device=req.device, strategy="staged", threads=req.threads, tree=None) as gen:
        methods = [StagedxMethod(gen, m, cfg.max_new_tokens) for m in cfg.methods]
        fits = [n for n in contexts if n + cfg.max_new_tokens <= gen.context_limit]
        total = len(fits) * sum(1 for s in cfg.samplings for _ in methods) * (cfg.warmup + cfg.repeats * len(prompts))
        on_run = (lambda r: progress(r, total)) if progress else None
        result = context_benchmark(gen, methods, (prompts, pool), contexts, cfg, on_run)
        result["environment"] = environment(gen, req.threads)
    result["config"] = {
        "bundle": str(req.bundle),
        "prompts": req.prompts,
        "limit": req.limit,
        "methods": list(cfg.methods),
        "samplings": list(cfg.samplings),
        "max_new_tokens": cfg.max_new_tokens,
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "seed": cfg.seed,
        "contexts": list(contexts),
    }
    text = render_context(result)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "context.json", result)
    write_atomic(out / "context.txt", text + "\n")
    echo(f"wrote {out / 'context.json'}, {out / 'context.txt'}")
    return text
