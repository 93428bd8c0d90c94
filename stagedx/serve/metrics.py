"""Server metrics through ``prometheus_client``, one registry per server.

Names follow vLLM's (``vllm:time_to_first_token_seconds``, ``vllm:spec_decode_num_draft_tokens``,
...) with the prefix ``stagedx:`` and the same suffixes, so that a dashboard or alert written for
vLLM works after a prefix substitution. What vLLM has no name for (oracle calls, the stage that
proposed an accepted token, decodes by outcome, HTTP status codes) carries ``stagedx:`` names of
its own. Thread-safe: the decode thread records decodes, the event loop records requests.

Speculation counters, per finished decode (see :func:`spec_decode`):
``num_drafts`` oracle calls that scored at least one proposed token; ``num_draft_tokens`` tree
nodes the oracle scored beyond each call's root; ``num_accepted_tokens`` proposed tokens kept;
``num_accepted_tokens_per_pos{position=i}`` those kept at tree depth ``i + 1`` (position 0: the
first token after the root, as vLLM counts).
"""

from __future__ import annotations

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

prometheus_client.disable_created_metrics()  # no *_created samples (as vLLM): half the text, no use here

PREFIX = "stagedx:"
STAGES = ("draft2", "draft", "grammar", "oracle")
OUTCOMES = ("completed", "cancelled", "timeout", "failed")
CONTENT_TYPE = CONTENT_TYPE_LATEST
# seconds: from a few ms (one tiny-model round) to minutes (a long decode of a real model)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def spec_decode(stats) -> dict:
    """Speculation figures of one decode's ``Stats`` (vLLM's spec-decode quantities)."""
    sizes = stats.call_sizes["oracle"]  # {tree tokens: calls}
    per_pos = [int(n) for n in stats.accepted_by_depth]
    while per_pos and per_pos[-1] == 0:
        per_pos.pop()
    drafts = sum(n for t, n in sizes.items() if t > 1)
    draft_tokens = sum((t - 1) * n for t, n in sizes.items())
    accepted = sum(per_pos)
    return {
        "num_drafts": drafts,
        "num_draft_tokens": draft_tokens,
        "num_accepted_tokens": accepted,
        "num_accepted_tokens_per_pos": per_pos,
        "acceptance_rate": round(accepted / draft_tokens, 4) if draft_tokens else 0.0,
        "mean_acceptance_length": round(1 + accepted / drafts, 4) if drafts else 1.0,
    }


class Metrics:
    def __init__(self, model: str):
        self.model = model
        self.registry = r = CollectorRegistry(auto_describe=True)
        p = PREFIX
        self.http = Counter(
            p + "http_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=r
        )
        self.outcomes = Counter(p + "decodes", "decodes by outcome", ["outcome"], registry=r)
        self.success = Counter(
            p + "request_success", "completed requests by OpenAI finish reason", ["finished_reason"], registry=r
        )
        self.prompt_tokens = Counter(p + "prompt_tokens", "prompt tokens of completed decodes", registry=r)
        self.generation_tokens = Counter(p + "generation_tokens", "generated tokens of completed decodes", registry=r)
        self.oracle_calls = Counter(p + "oracle_calls", "oracle forward calls of completed decodes", registry=r)
        self.accepted_by_stage = Counter(
            p + "accepted_tokens_by_stage", "generated tokens by the stage that proposed them", ["stage"], registry=r
        )
        self.drafts = Counter(p + "spec_decode_num_drafts", "oracle calls that scored proposed tokens", registry=r)
        self.draft_tokens = Counter(p + "spec_decode_num_draft_tokens", "proposed tokens the oracle scored", registry=r)
        self.accepted = Counter(p + "spec_decode_num_accepted_tokens", "proposed tokens accepted", registry=r)
        self.accepted_per_pos = Counter(
            p + "spec_decode_num_accepted_tokens_per_pos",
            "proposed tokens accepted, by position after the root (0 = first)",
            ["position"],
            registry=r,
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds", "from arrival to the first text", buckets=LATENCY_BUCKETS, registry=r
        )
        self.itl = Histogram(
            p + "inter_token_latency_seconds",
            "between two streamed pieces of one decode (a piece holds the tokens one round accepted)",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            p + "time_per_output_token_seconds",
            "per request: (latency - time to first token) / (generated tokens - 1)",
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            p + "e2e_request_latency_seconds", "from arrival to the last token", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_time = Histogram(
            p + "request_queue_time_seconds",
            "from arrival to the start of the decode",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.waiting = Gauge(p + "num_requests_waiting", "requests waiting for the decode slot", registry=r)
        self.running = Gauge(p + "num_requests_running", "busy decode slots (0 or 1: batch size 1)", registry=r)
        self.capacity = Gauge(p + "max_queue", "requests that may wait for the decode slot (--max-queue)", registry=r)
        for kind in OUTCOMES:
            self.outcomes.labels(kind)
        for stage in STAGES:
            self.accepted_by_stage.labels(stage)

    def request(self, endpoint: str, status: int) -> None:
        self.http.labels(endpoint, str(int(status))).inc()

    def outcome(self, kind: str) -> None:
        self.outcomes.labels(kind).inc()

    def outcome_count(self, kind: str) -> float:
        return self.registry.get_sample_value(PREFIX + "decodes_total", {"outcome": kind}) or 0.0

    def decode(self, result, reason: str, timings: dict) -> None:
        """A finished ``GenerationResult``, its OpenAI finish reason and its timings (seconds:
        ``queue``, ``first`` (to the first text, or None), ``total``)."""
        s = result.stats
        n = len(result.tokens)
        self.outcomes.labels("completed").inc()
        self.success.labels(reason).inc()
        self.prompt_tokens.inc(result.prompt_tokens)
        self.generation_tokens.inc(n)
        self.oracle_calls.inc(s.oracle_calls)
        for stage in STAGES:
            self.accepted_by_stage.labels(stage).inc(int(s.accepted_by_stage.get(stage, 0)))
        spec = spec_decode(s)
        self.drafts.inc(spec["num_drafts"])
        self.draft_tokens.inc(spec["num_draft_tokens"])
        self.accepted.inc(spec["num_accepted_tokens"])
        for pos, count in enumerate(spec["num_accepted_tokens_per_pos"]):
            self.accepted_per_pos.labels(str(pos)).inc(count)
        self.queue_time.observe(timings["queue"])
        self.e2e.observe(timings["total"])
        if timings["first"] is not None and n > 1:
            self.tpot.observe((timings["total"] - timings["first"]) / (n - 1))

    def first_token(self, seconds: float) -> None:
        """Observed for every decode that produced text, whatever its outcome."""
        self.ttft.observe(seconds)

    def piece_gap(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def render(self, queue_depth: int, busy: bool, max_queue: int) -> bytes:
        self.waiting.set(queue_depth)
        self.running.set(int(busy))
        self.capacity.set(max_queue)
        return generate_latest(self.registry)
