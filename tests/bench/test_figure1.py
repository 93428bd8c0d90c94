"""Figure 1 maths on synthetic bench results (no model, no timing)."""

from __future__ import annotations

import pytest

from stagedx.bench.figure1 import curve_points, operating_points, write_figure1

PARAMS, BYTES = 1000, 4000  # fp32: intensity = T / 2 FLOPs per byte


def result(name: str, latency: dict) -> dict:
    cells = {
        "baseline": {"tree_tokens_per_oracle_call": 1.0, "oracle_s_per_call": 0.01, "decode_tokens_per_s": 90.0},
        "staged": {"tree_tokens_per_oracle_call": 8.0, "oracle_s_per_call": 0.02, "decode_tokens_per_s": 300.0},
        "old": {"tree_tokens_per_oracle_call": None, "oracle_s_per_call": None},  # an older bench.json
    }
    return {
        "config": {"bundle": f"bundles/{name}/"},
        "roofline": {"bandwidth_gb_s": 20.0},
        "summary": {"greedy": cells},
        "cost_curve": {
            "past_len": 200,
            "oracle_params": PARAMS,
            "oracle_weight_bytes": BYTES,
            "latency_s": {str(t): s for t, s in latency.items()},
            "peak_flops": 1e11,
        },
    }


def test_curve_and_operating_points_are_flops_per_byte_and_flops_per_second():
    res = result("pair", {1: 0.01, 8: 0.02})
    x, y = curve_points(res["cost_curve"])
    assert x.tolist() == pytest.approx([0.5, 4.0])  # 2 x 1000 x T / 4000
    assert y.tolist() == pytest.approx([2 * PARAMS / 0.01, 2 * PARAMS * 8 / 0.02])
    points = {p["method"]: p for p in operating_points(res)}
    assert set(points) == {"baseline", "staged"}
    assert points["staged"]["intensity"] == pytest.approx(4.0)
    assert points["staged"]["flops_per_s"] == pytest.approx(2 * PARAMS * 8 / 0.02)


def test_figure_of_two_pairs_is_a_png(tmp_path):
    png = write_figure1(tmp_path / "f.png", [result("big", {1: 0.1, 16: 0.15}), result("small", {1: 0.003, 64: 0.02})])
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert write_figure1(tmp_path / "none.png", [{"summary": {}}]) is None
