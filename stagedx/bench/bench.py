"""The benchmark loop: warm-up, then interleaved repeats over prompts x sampling x methods.

Fairness rules, identical for every method:
- the same stop rule: exactly ``max_new_tokens`` new tokens, EOS ignored (a run only stops
  early when the context is full; its ``finish_reason`` says so and the metrics use the
  tokens it really produced);
- the same thread count for every backend (ONNX Runtime sessions and, for peers, torch);
- interleaving: for each repeat and prompt, every (sampling, method) cell runs back to back,
  in an order rotated from prompt to prompt, so slow drift of the machine (thermal state,
  other processes) hits all methods alike instead of whichever ran last;
- the same seed for every method on a given (prompt, repeat), so sampled runs draw from the
  same random stream where their algorithms allow.
Each run is timed around the whole ``generate`` call (prefill included) and recorded raw.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..runtime import STRATEGIES
from .prompts import Prompt

# staged: the tuned (else default) tree, which may skip the draft where it does not pay;
# staged3: always all three stages (draft2 -> draft -> oracle), as in the paper.
STAGEDX_METHODS = (*STRATEGIES, "staged3")


@dataclass(frozen=True)
class BenchConfig:
    methods: tuple = STAGEDX_METHODS
    samplings: tuple = ("greedy", "topk:50")
    max_new_tokens: int = 128
    repeats: int = 1
    warmup: int = 1
    seed: int = 0


@dataclass(frozen=True)
class Cell:
    """One scheduled run."""

    repeat: int
    prompt_index: int
    sampling: str
    method: str


class Method(Protocol):
    name: str
    family: str  # "stagedx" | "transformers"

    def supports(self, sampling: str) -> bool: ...

    def run(self, prompt: Prompt, sampling: str, seed: int) -> dict: ...


class StagedxMethod:
    """One decoding strategy of a shared ``Generator``."""

    family = "stagedx"

    def __init__(self, gen, strategy: str, max_new_tokens: int):
        self.gen, self.name, self.max_new_tokens = gen, strategy, max_new_tokens

    def supports(self, sampling: str) -> bool:
        return True

    def run(self, prompt: Prompt, sampling: str, seed: int) -> dict:
        from ..runtime import SamplingConfig

        strategy, tree = self.name, None
        if self.name == "staged3":  # tune's best three-stage tree, else the default one
            strategy, tree = "staged", self.gen.three_stage_tree(SamplingConfig.parse(sampling))
        t0 = time.perf_counter()
        res = self.gen.generate(
            getattr(prompt, "ids", None) or prompt.text,  # token ids when given (bench --context)
            max_new_tokens=self.max_new_tokens,
            sampling=sampling,
            seed=seed,
            strategy=strategy,
            ignore_eos=True,
            truncate=True,
            tree=tree,
        )
        wall = time.perf_counter() - t0
        stats = res.stats.as_dict()
        return {
            "new_tokens": int(stats["new_tokens"]),
            "oracle_calls": int(stats["oracle_calls"]),
            "oracle_tokens": int(stats["oracle_tokens"]),
            "draft_calls": int(stats["draft_calls"]),
            "rounds": int(stats.get("rounds", stats["oracle_calls"])),
            "wall_s": wall,
            "time_s": {k: float(v) for k, v in stats["time_s"].items()},
            "accepted_by_stage": {k: int(v) for k, v in stats["accepted_by_stage"].items()},
            "accepted_by_depth": [int(x) for x in stats["accepted_by_depth"]],
            "prompt_tokens": int(res.prompt_tokens),
            "finish_reason": res.finish_reason,
            **({"planner": stats["planner"]} if "planner" in stats else {}),  # strategy auto
        }


def schedule(n_prompts: int, methods: Sequence[Method], samplings: Sequence[str], repeats: int) -> list[Cell]:
    """Interleaved order: repeat -> prompt -> all (sampling, method) cells, rotated per prompt."""
    cells = []
    for r in range(repeats):
        for p in range(n_prompts):
            pairs = [(s, m.name) for s in samplings for m in methods if m.supports(s)]
            shift = (r * n_prompts + p) % max(1, len(pairs))
            for s, m in pairs[shift:] + pairs[:shift]:
                cells.append(Cell(r, p, s, m))
    return cells


def run_seed(cfg: BenchConfig, cell: Cell) -> int:
    return cfg.seed + 1000 * cell.repeat + cell.prompt_index


def warm_up(
    methods: Sequence[Method], prompts: Sequence[Prompt], cfg: BenchConfig, on_run: Callable | None = None
) -> None:
    """``cfg.warmup`` unrecorded runs of every (method, sampling) cell on the first prompt."""
    for _ in range(cfg.warmup):
        for s in cfg.samplings:
            for m in methods:
                if m.supports(s):
                    m.run(prompts[0], s, cfg.seed)
                    if on_run:
                        on_run(None)


def run_bench(
    methods: Sequence[Method], prompts: Sequence[Prompt], cfg: BenchConfig, on_run: Callable | None = None
) -> list[dict]:
    """Warm up, then run the interleaved schedule; ``on_run(record)`` after each run."""
    by_name = {m.name: m for m in methods}
    warm_up(methods, prompts, cfg, on_run)
    records = []
    for cell in schedule(len(prompts), methods, cfg.samplings, cfg.repeats):
        method, prompt, seed = by_name[cell.method], prompts[cell.prompt_index], run_seed(cfg, cell)
        rec = {
            "prompt": prompt.id,
            "prompt_index": cell.prompt_index,
            "method": cell.method,
            "family": method.family,
            "sampling": cell.sampling,
            "repeat": cell.repeat,
            "seed": seed,
            **method.run(prompt, cell.sampling, seed),
        }
        records.append(rec)
        if on_run:
            on_run(rec)
    return records


def n_runs(methods: Sequence[Method], n_prompts: int, cfg: BenchConfig) -> int:
    """Runs the progress bar counts: warm-up plus the schedule."""
    cells = sum(1 for s in cfg.samplings for m in methods if m.supports(s))
    return cells * (cfg.warmup + cfg.repeats * n_prompts)


BUSY_LOAD_SHARE = 0.5  # a 1-minute load average above this share of the cores skews timings


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):  # not on this platform
        return None


def busy_warning(load: float | None, cores: int) -> str | None:
    """One line when the machine is busy enough to skew timings, else None."""
    if load is None or load <= BUSY_LOAD_SHARE * cores:
        return None
    return (
        f"warning: the machine is busy (load average {load:g} on {cores} cores): "
        "timings will be low and noisy; rerun on an idle machine for figures to quote"
    )


def environment(gen, threads: int) -> dict:
    """Device, backend, threads and versions, recorded with every result."""
    import numpy

    try:
        import onnxruntime

        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    from .. import __version__

    cores = available_cores()
    return {
        "device": gen.device,
        "backend": gen.backend,
        "threads": threads,
        "cpu_cores_available": cores,
        "cpu": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "versions": {
            "python": sys.version.split()[0],
            "numpy": numpy.__version__,
            "onnxruntime": ort,
            "stagedx": __version__,
        },
    }


@dataclass(frozen=True)
class BenchRequest:
    """Everything ``stagedx bench`` was asked for."""

    bundle: str
    prompts: str = "humaneval"
    limit: int | None = 20
    cfg: BenchConfig = BenchConfig()
    threads: int = 2
    device: str = "auto"
    peers: tuple = ()  # peer families: "transformers", "llama.cpp" (peers.PEER_FAMILIES)
    gguf: str | None = None  # the GGUF file for the llama.cpp peers (else the manifest's source)
    cost_curve: bool = True  # measure the oracle's latency against tree size (Figure 1)


def benchmark(req: BenchRequest, progress: Callable | None = None, echo: Callable = print) -> dict:
    """Run the whole benchmark and return the result dict (raw records + summaries)."""
    from ..runtime import Generator
    from .prompts import load_prompts, render_chat

    prompts = load_prompts(req.prompts, req.limit)
    with Generator(req.bundle, device=req.device, strategy="staged", threads=req.threads, tree=None) as gen:
        prompts = render_chat(prompts, gen.manifest, gen.tokenizer)
        return _benchmark(gen, req, prompts, progress, echo)


def _benchmark(gen, req: BenchRequest, prompts: list, progress: Callable | None, echo: Callable) -> dict:
    from . import metrics
    from .roofline import roofline

    cfg = req.cfg
    methods: list = [StagedxMethod(gen, m, cfg.max_new_tokens) for m in cfg.methods]
    families: dict = {}
    if req.peers:
        from .peers import make_peers

        peer_methods, families = make_peers(gen, req, prompts, echo)
        methods += peer_methods
    total = n_runs(methods, len(prompts), cfg)
    started, load_before = time.time(), load_average()
    busy = busy_warning(load_before, available_cores())
    if busy:
        echo(busy)
    records = run_bench(methods, prompts, cfg, (lambda rec: progress(rec, total)) if progress else None)
    load_after = load_average()
    if busy is None:  # the machine got busy during the run
        busy = busy_warning(load_after, available_cores())
        if busy:
            echo(busy)
    ours = [r for r in records if r["family"] == "stagedx"]
    weights = {"oracle": int(gen.oracle_weight_bytes), "draft": int(gen.draft_weight_bytes)}
    result = {
        "config": {
            "bundle": str(req.bundle),
            "prompts": req.prompts,
            "limit": req.limit,
            "n_prompts": len(prompts),
            "prompt_ids": [p.id for p in prompts],
            "methods": list(cfg.methods),
            "samplings": list(cfg.samplings),
            "max_new_tokens": cfg.max_new_tokens,
            "repeats": cfg.repeats,
            "warmup": cfg.warmup,
            "seed": cfg.seed,
            "peers": list(req.peers),
            "stop_rule": "fixed new-token count, EOS ignored",
            "timing": "wall clock of each generate call, prefill included (decode_tokens_per_s: prefill excluded)",
            "tree": {s: _tree_record(gen, s) for s in cfg.samplings},
            "tree_source": {s: _tree_source(gen, s) for s in cfg.samplings},
        },
        "environment": {
            **environment(gen, req.threads),
            "started_unix": started,
            "duration_s": time.time() - started,
            "load_average": {"before": load_before, "after": load_after},  # 1-minute, from os.getloadavg
            "busy": busy is not None,
        },
        "weights_bytes": weights,
        "quantization": {role: _quant_record(e.quantization) for role, e in gen.manifest.models.items()},
        "records": ours,
        "summary": metrics.summarize(ours, weights),
    }
    base = result["summary"].get("greedy", {}).get("baseline") or next(
        (cells["baseline"] for cells in result["summary"].values() if "baseline" in cells), None
    )
    if base:
        result["roofline"] = roofline(base["tokens_per_s"], weights["oracle"]).as_dict()
    if req.cost_curve:
        from .figure1 import measure_cost_curve

        result["cost_curve"] = measure_cost_curve(gen)
    if req.peers:
        from .peers import summarize_peers

        peer_records = [r for r in records if r["family"] != "stagedx"]
        result["peer_records"] = peer_records
        result["peers"] = summarize_peers(peer_records, ours, families)
    return result


def _quant_record(q) -> dict | None:
    """The manifest's quantization of one model (None: fp32 / fp16 weights as exported)."""
    return None if q is None else dataclasses.asdict(q)


def _tree_record(gen, sampling: str) -> dict:
    from ..runtime import SamplingConfig

    tree = gen.tree_for(SamplingConfig.parse(sampling))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(tree).items()}


def _tree_source(gen, sampling: str) -> str:
    from ..runtime import SamplingConfig
    from ..runtime.shapes import sampling_mode

    if gen.tree is not None:
        return "explicit"
    return "tuned" if sampling_mode(SamplingConfig.parse(sampling)) in gen.tuned else "defaults"
