"""Prometheus text: every sample line parses and the derived gauges follow the counters."""

from __future__ import annotations

import re

from stagedx.runtime.results import GenerationResult, Stats
from stagedx.serve.metrics import Metrics

SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+-]+$')


def test_render_is_prometheus_text_with_derived_gauges():
    m = Metrics("m")
    m.request("completions", 200)
    m.request("completions", 429)
    stats = Stats(
        "staged", "greedy", oracle_calls=4, new_tokens=12, accepted_by_stage={"draft2": 8, "draft": 0, "oracle": 4}
    )
    stats.time_s["total"] = 0.5
    m.decode(GenerationResult("x", list(range(12)), 5, "length", stats))
    m.first_token(0.25)
    text = m.render(queue_depth=2, busy=True)
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines and all(SAMPLE.match(ln) for ln in lines), [ln for ln in lines if not SAMPLE.match(ln)]
    values = {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in lines}
    assert values['stagedx_requests_total{endpoint="completions",code="429"}'] == 1
    assert values["stagedx_tokens_per_oracle_call"] == 3.0 and values["stagedx_tokens_per_second"] == 24.0
    assert values['stagedx_accepted_tokens_total{stage="draft2"}'] == 8
    assert values["stagedx_queue_depth"] == 2 and values["stagedx_busy"] == 1
    assert values['stagedx_decodes_total{outcome="completed"}'] == 1 and values["stagedx_prompt_tokens_total"] == 5
