"""Prometheus exposition through prometheus_client: vLLM's names under the ``stagedx:`` prefix,
latency histograms, and spec-decode counters that add up to the decode's own statistics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from stagedx.runtime.results import GenerationResult, Stats
from stagedx.serve.metrics import Metrics, spec_decode


def staged_stats() -> Stats:
    # 4 oracle calls: one root-only (a baseline round), three trees of 9 nodes (8 proposals each)
    stats = Stats(
        "staged",
        "greedy",
        oracle_calls=4,
        new_tokens=12,
        accepted_by_stage={"draft2": 6, "draft": 2, "oracle": 4},
        accepted_by_depth=[4, 3, 1, 0, 0],
    )
    stats.call_sizes["oracle"] = {1: 1, 9: 3}
    stats.time_s["total"] = 0.5
    return stats


def samples(text: str) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_spec_decode_figures_follow_vllm_definitions():
    spec = spec_decode(staged_stats())
    assert spec["num_drafts"] == 3 and spec["num_draft_tokens"] == 24
    assert spec["num_accepted_tokens"] == 8 == 6 + 2  # the draft stages' accepted tokens
    assert spec["num_accepted_tokens_per_pos"] == [4, 3, 1]
    assert spec["acceptance_rate"] == round(8 / 24, 4) and spec["mean_acceptance_length"] == round(1 + 8 / 3, 4)


def test_exposition_parses_and_holds_histograms_counters_and_gauges():
    m = Metrics("m")
    m.request("completions", 200)
    m.request("completions", 429)
    m.first_token(0.1)
    m.piece_gap(0.004)
    m.piece_gap(0.006)
    m.decode(
        GenerationResult("x", list(range(12)), 5, "length", staged_stats()),
        "length",
        {"queue": 0.02, "first": 0.1, "total": 0.54},
    )
    text = m.render(queue_depth=2, busy=True, max_queue=16).decode()
    got = samples(text)
    assert got[("stagedx:http_requests_total", (("code", "429"), ("endpoint", "completions")))] == 1
    assert got[("stagedx:spec_decode_num_drafts_total", ())] == 3
    assert got[("stagedx:spec_decode_num_draft_tokens_total", ())] == 24
    assert got[("stagedx:spec_decode_num_accepted_tokens_total", ())] == 8
    per_pos = {
        dict(k[1])["position"]: v
        for k, v in got.items()
        if k[0] == "stagedx:spec_decode_num_accepted_tokens_per_pos_total"
    }
    assert per_pos == {"0": 4, "1": 3, "2": 1}
    assert got[("stagedx:generation_tokens_total", ())] == 12 and got[("stagedx:prompt_tokens_total", ())] == 5
    assert got[("stagedx:request_success_total", (("finished_reason", "length"),))] == 1
    assert got[("stagedx:accepted_tokens_by_stage_total", (("stage", "draft2"),))] == 6
    assert got[("stagedx:num_requests_waiting", ())] == 2 and got[("stagedx:num_requests_running", ())] == 1
    for name, count, total in [
        ("time_to_first_token_seconds", 1, 0.1),
        ("inter_token_latency_seconds", 2, 0.01),
        ("e2e_request_latency_seconds", 1, 0.54),
        ("time_per_output_token_seconds", 1, (0.54 - 0.1) / 11),
        ("request_queue_time_seconds", 1, 0.02),
    ]:
        assert got[(f"stagedx:{name}_count", ())] == count
        assert abs(got[(f"stagedx:{name}_sum", ())] - total) < 1e-9
        assert got[(f"stagedx:{name}_bucket", (("le", "+Inf"),))] == count
    assert "_created" not in text and "# TYPE stagedx:time_to_first_token_seconds histogram" in text


def test_two_servers_in_one_process_keep_separate_counts():
    a, b = Metrics("a"), Metrics("b")
    a.request("completions", 200)
    assert 'stagedx:http_requests_total{code="200",endpoint="completions"}' not in b.render(0, False, 1).decode()
