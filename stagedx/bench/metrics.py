"""Pure functions that turn raw run records into the benchmark's figures.

A *record* is one generation (one prompt, one method, one sampling mode, one repeat), a plain
dict holding raw counts and times only::

    {"prompt": "HumanEval/0", "prompt_index": 0, "method": "staged", "sampling": "greedy",
     "repeat": 0, "seed": 0, "new_tokens": 128, "oracle_calls": 31, "draft_calls": 90,
     "rounds": 31, "wall_s": 0.41, "time_s": {...}, "accepted_by_stage": {...},
     "accepted_by_depth": [...], "prompt_tokens": 120, "finish_reason": "length"}

``wall_s`` is the wall-clock time of the whole ``generate`` call as timed by the benchmark
(prefill included, the same rule for every method). Every figure here is recomputable from
these fields; the tests do exactly that.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

BASELINE = "baseline"


def group(records: Iterable[dict], *keys: str) -> dict:
    """Records bucketed by the tuple of the given fields (a 1-tuple key is unwrapped)."""
    out: dict = defaultdict(list)
    for r in records:
        k = tuple(r[key] for key in keys)
        out[k[0] if len(k) == 1 else k].append(r)
    return dict(out)


def tokens_per_second(records: Sequence[dict]) -> float:
    """Total new tokens over total wall time (a time-weighted mean, robust to short runs)."""
    wall = sum(r["wall_s"] for r in records)
    return sum(r["new_tokens"] for r in records) / wall if wall > 0 else float("nan")


def decode_tokens_per_second(records: Sequence[dict]) -> float:
    """New tokens over decode time: each run's wall time minus its prefill (the prompt's
    forward pass), the measure of runtimes that report decode speed separately."""
    wall = sum(r["wall_s"] - r.get("time_s", {}).get("prefill", 0.0) for r in records)
    return sum(r["new_tokens"] for r in records) / wall if wall > 0 else float("nan")


def tree_tokens_per_oracle_call(records: Sequence[dict]) -> float:
    """Mean tokens the oracle scores per decode call (1 for baseline, k + 1 for speculative,
    the tree size for staged): the x of the roofline figure."""
    calls = sum(r["oracle_calls"] for r in records)
    if not calls or any("oracle_tokens" not in r for r in records):  # records of an older bench.json
        return float("nan")
    return sum(r["oracle_tokens"] for r in records) / calls


def oracle_seconds_per_call(records: Sequence[dict]) -> float:
    calls = sum(r["oracle_calls"] for r in records)
    if not calls or any("oracle" not in r.get("time_s", {}) for r in records):
        return float("nan")
    return sum(r["time_s"]["oracle"] for r in records) / calls


def per_token_latencies_ms(records: Sequence[dict]) -> np.ndarray:
    """One value per run: its wall time divided by its new tokens, in milliseconds."""
    return np.asarray([1e3 * r["wall_s"] / r["new_tokens"] for r in records if r["new_tokens"] > 0], float)


def latency_summary(records: Sequence[dict]) -> dict:
    lat = per_token_latencies_ms(records)
    if lat.size == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan")}
    return {"mean": float(lat.mean()), "p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90))}


def tokens_per_oracle_call(records: Sequence[dict]) -> float:
    calls = sum(r["oracle_calls"] for r in records)
    return sum(r["new_tokens"] for r in records) / calls if calls else float("nan")


def relative_traffic(records: Sequence[dict], oracle_bytes: int, draft_bytes: int) -> float:
    """The paper's memory metric: weight bytes streamed per generated token, relative to one
    oracle pass per token: (oracle calls x oracle bytes + draft calls x draft bytes) /
    (generated tokens x oracle bytes)."""
    tokens = sum(r["new_tokens"] for r in records)
    if tokens == 0 or oracle_bytes <= 0:
        return float("nan")
    moved = (
        sum(r["oracle_calls"] for r in records) * oracle_bytes + sum(r["draft_calls"] for r in records) * draft_bytes
    )
    return moved / (tokens * oracle_bytes)


def acceptance_by_stage(records: Sequence[dict]) -> dict:
    """Tokens credited to each stage, summed, and as a fraction of all new tokens."""
    totals: dict = defaultdict(int)
    for r in records:
        for stage, n in r["accepted_by_stage"].items():
            totals[stage] += int(n)
    tokens = sum(r["new_tokens"] for r in records)
    return {
        "count": dict(totals),
        "fraction": {k: (v / tokens if tokens else float("nan")) for k, v in totals.items()},
    }


def acceptance_by_depth(records: Sequence[dict]) -> dict:
    """Accepted tree nodes at each depth (1 = first token below the root), summed over runs,
    and per oracle call (the expected number of depth-d tokens a round yields)."""
    depth = max((len(r["accepted_by_depth"]) for r in records), default=0)
    totals = np.zeros(depth, np.int64)
    for r in records:
        totals[: len(r["accepted_by_depth"])] += np.asarray(r["accepted_by_depth"], np.int64)
    calls = sum(r["oracle_calls"] for r in records)
    return {
        "count": totals.tolist(),
        "per_oracle_call": [float(x) / calls if calls else float("nan") for x in totals],
    }


def per_prompt_tokens_per_second(records: Sequence[dict]) -> dict:
    """prompt index -> tokens/s pooled over that prompt's repeats."""
    return {p: tokens_per_second(rs) for p, rs in group(records, "prompt_index").items()}


def per_prompt_speedups(method_records: Sequence[dict], baseline_records: Sequence[dict]) -> dict:
    """prompt index -> tokens/s of the method over tokens/s of the baseline on that prompt
    (same sampling mode), for the prompts both have."""
    ours = per_prompt_tokens_per_second(method_records)
    base = per_prompt_tokens_per_second(baseline_records)
    return {p: ours[p] / base[p] for p in sorted(ours) if p in base and base[p] > 0}


def mean_speedup(speedups: dict) -> float:
    """The paper's figure: the average over prompts of the per-prompt speedup."""
    return float(np.mean(list(speedups.values()))) if speedups else float("nan")


def summarize_group(records: Sequence[dict], baseline_records: Sequence[dict] | None, weights: dict) -> dict:
    """Every figure for one (method, sampling) cell. ``weights`` = {"oracle": bytes, "draft": bytes}."""
    out = {
        "runs": len(records),
        "new_tokens": int(sum(r["new_tokens"] for r in records)),
        "oracle_calls": int(sum(r["oracle_calls"] for r in records)),
        "draft_calls": int(sum(r["draft_calls"] for r in records)),
        "wall_s": float(sum(r["wall_s"] for r in records)),
        "tokens_per_s": tokens_per_second(records),
        "decode_tokens_per_s": decode_tokens_per_second(records),
        "latency_ms_per_token": latency_summary(records),
        "tokens_per_oracle_call": tokens_per_oracle_call(records),
        "relative_traffic": relative_traffic(records, weights["oracle"], weights["draft"]),
        "tree_tokens_per_oracle_call": tree_tokens_per_oracle_call(records),
        "oracle_s_per_call": oracle_seconds_per_call(records),
        "acceptance_by_stage": acceptance_by_stage(records),
        "acceptance_by_depth": acceptance_by_depth(records),
    }
    if any("planner" in r for r in records):
        out["planner"] = planner_summary(records)
    if baseline_records:
        sp = per_prompt_speedups(records, baseline_records)
        out["speedup_per_prompt"] = {str(k): v for k, v in sp.items()}
        out["speedup_mean"] = mean_speedup(sp)
        out["speedup_pooled"] = out["tokens_per_s"] / tokens_per_second(baseline_records)
        out["decode_speedup_pooled"] = out["decode_tokens_per_s"] / decode_tokens_per_second(baseline_records)
    return out


def planner_summary(records: Sequence[dict]) -> dict:
    """Strategy auto: share of rounds per option the planner chose, share of rounds each stage
    ran, and the planner's own milliseconds per round."""
    choices: dict = defaultdict(int)
    stages: dict = defaultdict(int)
    overhead = 0.0
    for r in records:
        p = r.get("planner") or {}
        for k, n in p.get("choices", {}).items():
            choices[k] += int(n)
        for k, n in p.get("stages", {}).items():
            stages[k] += int(n)
        overhead += float(p.get("overhead_s", 0.0))
    rounds = sum(choices.values())
    share = {k: n / rounds for k, n in sorted(choices.items(), key=lambda kv: -kv[1])} if rounds else {}
    return {
        "rounds": rounds,
        "choice_share": share,
        "stage_share": {k: n / rounds for k, n in stages.items()} if rounds else {},
        "overhead_ms_per_round": 1e3 * overhead / rounds if rounds else float("nan"),
    }


def summarize(records: Sequence[dict], weights: dict) -> dict:
    """sampling -> method -> figures, each method compared with the baseline of its sampling
    mode (when the run has one)."""
    out: dict = {}
    for (method, sampling), rs in sorted(group(records, "method", "sampling").items()):
        base = [r for r in records if r["method"] == BASELINE and r["sampling"] == sampling]
        out.setdefault(sampling, {})[method] = summarize_group(rs, base or None, weights)
    return out


def ratio(a: float, b: float) -> float:
    return a / b if b and b == b else float("nan")
