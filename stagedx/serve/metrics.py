"""Server counters and their Prometheus text exposition (format 0.0.4), thread-safe: the
decode thread records finished decodes, the event loop records requests."""

from __future__ import annotations

import threading
from collections import Counter

STAGES = ("draft2", "draft", "oracle")


class Metrics:
    def __init__(self, model: str):
        self.model = model
        self._lock = threading.Lock()
        self.requests = Counter()  # (endpoint, status code) -> count
        self.outcomes = Counter()  # "completed" | "cancelled" | "timeout" | "failed" -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.oracle_calls = 0
        self.decode_seconds = 0.0
        self.accepted = Counter()  # stage -> tokens
        self.ttft_sum = 0.0
        self.ttft_count = 0

    def request(self, endpoint: str, status: int) -> None:
        with self._lock:
            self.requests[(endpoint, int(status))] += 1

    def outcome(self, kind: str) -> None:
        with self._lock:
            self.outcomes[kind] += 1

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.ttft_sum += seconds
            self.ttft_count += 1

    def decode(self, result) -> None:
        """A finished ``GenerationResult``."""
        s = result.stats
        with self._lock:
            self.outcomes["completed"] += 1
            self.prompt_tokens += result.prompt_tokens
            self.completion_tokens += len(result.tokens)
            self.oracle_calls += s.oracle_calls
            self.decode_seconds += s.time_s["total"]
            for stage in STAGES:
                self.accepted[stage] += int(s.accepted_by_stage.get(stage, 0))

    def render(self, queue_depth: int, busy: bool) -> str:
        with self._lock:
            lines = []
            _family(lines, "stagedx_requests_total", "counter", "HTTP requests by endpoint and status code")
            for (endpoint, status), n in sorted(self.requests.items()):
                lines.append(f'stagedx_requests_total{{endpoint="{endpoint}",code="{status}"}} {n}')
            _family(lines, "stagedx_decodes_total", "counter", "decodes by outcome")
            for kind in ("completed", "cancelled", "timeout", "failed"):
                lines.append(f'stagedx_decodes_total{{outcome="{kind}"}} {self.outcomes[kind]}')
            _one(
                lines,
                "stagedx_prompt_tokens_total",
                "counter",
                "prompt tokens of completed decodes",
                self.prompt_tokens,
            )
            _one(
                lines,
                "stagedx_completion_tokens_total",
                "counter",
                "generated tokens of completed decodes",
                self.completion_tokens,
            )
            _one(lines, "stagedx_oracle_calls_total", "counter", "oracle forward calls", self.oracle_calls)
            _one(lines, "stagedx_decode_seconds_total", "counter", "time spent decoding", self.decode_seconds)
            _one(
                lines,
                "stagedx_tokens_per_second",
                "gauge",
                "generated tokens per decode second, since start",
                self.completion_tokens / self.decode_seconds if self.decode_seconds else 0.0,
            )
            _one(
                lines,
                "stagedx_tokens_per_oracle_call",
                "gauge",
                "generated tokens per oracle call, since start",
                self.completion_tokens / self.oracle_calls if self.oracle_calls else 0.0,
            )
            _family(
                lines, "stagedx_accepted_tokens_total", "counter", "generated tokens by the stage that proposed them"
            )
            for stage in STAGES:
                lines.append(f'stagedx_accepted_tokens_total{{stage="{stage}"}} {self.accepted[stage]}')
            _family(lines, "stagedx_time_to_first_token_seconds", "summary", "time from request to first text")
            lines.append(f"stagedx_time_to_first_token_seconds_sum {self.ttft_sum:.6f}")
            lines.append(f"stagedx_time_to_first_token_seconds_count {self.ttft_count}")
            _one(lines, "stagedx_queue_depth", "gauge", "requests waiting for the decode slot", queue_depth)
            _one(lines, "stagedx_busy", "gauge", "1 while a decode runs", int(busy))
        return "\n".join(lines) + "\n"


def _family(lines: list, name: str, kind: str, help_text: str) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")


def _one(lines: list, name: str, kind: str, help_text: str, value) -> None:
    _family(lines, name, kind, help_text)
    lines.append(f"{name} {value:.6g}" if isinstance(value, float) else f"{name} {value}")
