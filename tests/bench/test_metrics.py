"""Pure benchmark maths on synthetic records (no model, no timing)."""

from __future__ import annotations

import json
import math

import pytest

from stagedx.bench import metrics
from stagedx.bench.bench import Cell, schedule
from stagedx.bench.costs import draft_batch_size, interp, predict_tokens_per_s
from stagedx.bench.prompts import load_prompts, parse_range
from stagedx.bench.report import clean, main_table, paper_table, write_json, write_png
from stagedx.bench.tune import coordinate_search
from stagedx.errors import StagedxError


def rec(method, sampling, prompt, wall, new=10, oracle=None, draft=0, repeat=0, depth=(0,), stage=None):
    oracle = new if oracle is None else oracle
    return {
        "prompt": f"p{prompt}",
        "prompt_index": prompt,
        "method": method,
        "sampling": sampling,
        "repeat": repeat,
        "new_tokens": new,
        "oracle_calls": oracle,
        "draft_calls": draft,
        "wall_s": wall,
        "accepted_by_depth": list(depth),
        "accepted_by_stage": stage or {"draft2": 0, "draft": 0, "oracle": oracle},
    }


RECORDS = [
    rec("baseline", "greedy", 0, 1.0),
    rec("baseline", "greedy", 1, 2.0),
    rec("baseline", "greedy", 0, 1.0, repeat=1),
    rec("baseline", "greedy", 1, 2.0, repeat=1),
    rec("staged", "greedy", 0, 0.25, oracle=4, draft=8, depth=(4, 2), stage={"draft2": 3, "draft": 3, "oracle": 4}),
    rec("staged", "greedy", 1, 1.0, oracle=5, draft=10, depth=(4, 1), stage={"draft2": 2, "draft": 3, "oracle": 5}),
    rec(
        "staged",
        "greedy",
        0,
        0.75,
        oracle=4,
        draft=8,
        repeat=1,
        depth=(4, 2),
        stage={"draft2": 3, "draft": 3, "oracle": 4},
    ),
    rec(
        "staged",
        "greedy",
        1,
        1.0,
        oracle=5,
        draft=10,
        repeat=1,
        depth=(4, 1),
        stage={"draft2": 2, "draft": 3, "oracle": 5},
    ),
]
WEIGHTS = {"oracle": 1000, "draft": 100}


def test_tokens_per_second_and_latency():
    base = [r for r in RECORDS if r["method"] == "baseline"]
    assert metrics.tokens_per_second(base) == pytest.approx(40 / 6)
    lat = metrics.latency_summary(base)
    assert lat["mean"] == pytest.approx(150.0)  # 100 and 200 ms per token, twice each
    assert lat["p50"] == pytest.approx(150.0)
    assert lat["p90"] == pytest.approx(200.0)


def test_speedups_per_prompt_and_mean():
    s = metrics.summarize(RECORDS, WEIGHTS)["greedy"]
    # prompt 0: baseline 20 tok / 2 s = 10 tok/s, staged 20 / 1 s = 20 -> 2x
    # prompt 1: baseline 20 / 4 = 5, staged 20 / 2 = 10 -> 2x
    assert s["staged"]["speedup_per_prompt"] == {"0": pytest.approx(2.0), "1": pytest.approx(2.0)}
    assert s["staged"]["speedup_mean"] == pytest.approx(2.0)
    assert s["staged"]["speedup_pooled"] == pytest.approx((40 / 3) / (40 / 6))
    assert s["baseline"]["speedup_mean"] == pytest.approx(1.0)


def test_mean_speedup_is_over_prompts_not_pooled():
    recs = [
        rec("baseline", "g", 0, 1.0),
        rec("baseline", "g", 1, 1.0),
        rec("staged", "g", 0, 0.25),
        rec("staged", "g", 1, 1.0),
    ]
    s = metrics.summarize(recs, WEIGHTS)["g"]["staged"]
    assert s["speedup_mean"] == pytest.approx((4.0 + 1.0) / 2)
    assert s["speedup_pooled"] == pytest.approx(2.0 / 1.25)


def test_decode_tokens_per_second_excludes_prefill_and_tree_size():
    recs = [
        dict(rec("staged", "g", 0, 1.0, new=30, oracle=10), oracle_tokens=80, time_s={"prefill": 0.25, "oracle": 0.5}),
        dict(rec("staged", "g", 1, 2.0, new=30, oracle=10), oracle_tokens=40, time_s={"prefill": 0.75, "oracle": 1.5}),
    ]
    assert metrics.tokens_per_second(recs) == pytest.approx(60 / 3.0)
    assert metrics.decode_tokens_per_second(recs) == pytest.approx(60 / 2.0)
    assert metrics.tree_tokens_per_oracle_call(recs) == pytest.approx(6.0)
    assert metrics.oracle_seconds_per_call(recs) == pytest.approx(0.1)
    assert math.isnan(metrics.tree_tokens_per_oracle_call(RECORDS))  # older records: unknown


def test_tokens_per_oracle_call_and_traffic():
    s = metrics.summarize(RECORDS, WEIGHTS)["greedy"]
    assert s["baseline"]["tokens_per_oracle_call"] == pytest.approx(1.0)
    assert s["baseline"]["relative_traffic"] == pytest.approx(1.0)
    assert s["staged"]["tokens_per_oracle_call"] == pytest.approx(40 / 18)
    assert s["staged"]["relative_traffic"] == pytest.approx((18 * 1000 + 36 * 100) / (40 * 1000))


def test_acceptance_by_stage_and_depth():
    s = metrics.summarize(RECORDS, WEIGHTS)["greedy"]["staged"]
    assert s["acceptance_by_stage"]["count"] == {"draft2": 10, "draft": 12, "oracle": 18}
    assert s["acceptance_by_stage"]["fraction"]["oracle"] == pytest.approx(18 / 40)
    assert s["acceptance_by_depth"]["count"] == [16, 6]
    assert s["acceptance_by_depth"]["per_oracle_call"] == pytest.approx([16 / 18, 6 / 18])


def test_schedule_interleaves_and_rotates():
    class M:
        def __init__(self, name, greedy_only=False):
            self.name, self.greedy_only = name, greedy_only

        def supports(self, s):
            return s == "greedy" or not self.greedy_only

    methods = [M("baseline"), M("staged"), M("peer", greedy_only=True)]
    cells = schedule(3, methods, ("greedy", "topk:50"), repeats=2)
    assert len(cells) == 2 * 3 * 5
    firsts = {(c.sampling, c.method) for c in cells[::5]}
    assert len(firsts) > 1  # the order rotates from prompt to prompt
    for block in range(6):  # every prompt block holds every cell exactly once
        chunk = cells[5 * block : 5 * block + 5]
        assert len({c.prompt_index for c in chunk}) == 1
        assert len({(c.sampling, c.method) for c in chunk}) == 5
    assert Cell(0, 0, "topk:50", "peer") not in cells


def test_prompts_humaneval_and_files(tmp_path):
    p = load_prompts("humaneval", limit=3)
    assert [x.id for x in p] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert len(load_prompts("humaneval")) == 164
    cal = load_prompts("humaneval:82-163")
    assert cal[0].id == "HumanEval/82" and len(cal) == 82
    assert parse_range("5") == (5, 5)
    with pytest.raises(StagedxError):
        parse_range("10-2")
    j = tmp_path / "p.jsonl"
    j.write_text(json.dumps({"task_id": "a", "prompt": "def f():"}) + "\n\n" + json.dumps({"prompt": "x = 1"}) + "\n")
    assert [(x.id, x.text) for x in load_prompts(str(j))] == [("a", "def f():"), ("p.jsonl:3", "x = 1")]
    t = tmp_path / "p.txt"
    t.write_text("def f():\n    pass\n\n\nimport os\n  \nprint(1)")
    assert [x.text for x in load_prompts(str(t))] == ["def f():\n    pass\n", "import os\n", "print(1)\n"]
    with pytest.raises(StagedxError):
        load_prompts(str(tmp_path / "missing.txt"))


def test_report_outputs(tmp_path):
    s = metrics.summarize(RECORDS, WEIGHTS)
    table = main_table(s)
    assert "staged" in table and "2.00x" in table
    assert "0.23" in paper_table(s)  # the paper's staged greedy traffic beside ours
    path = write_json(tmp_path / "r.json", {"x": float("nan"), "s": s})
    data = json.loads(path.read_text())
    assert data["x"] is None and data["s"]["greedy"]["staged"]["speedup_mean"] == pytest.approx(2.0)
    png = write_png(tmp_path / "r.png", s)
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"
    assert clean({1: (1.0, math.inf)}) == {"1": [1.0, None]}


def test_cost_model():
    oracle = {1: 1e-3, 8: 2e-3, 16: 4e-3}
    draft = {1: 1e-4, 32: 3e-4}
    assert interp(oracle, 4.5) == pytest.approx(1.5e-3)
    tree = {"budget": 8, "max_depth": 2, "fanouts": [4, 2, 1], "draft_batch": 32}
    assert draft_batch_size(tree) == 7
    counts = {"new_tokens": 30, "rounds": 10, "draft_calls": 20, "overhead_s": 0.005}
    round_s = 2 * interp(draft, 7) + interp(oracle, 9) + 0.0005
    assert predict_tokens_per_s(counts, tree, oracle, draft) == pytest.approx(3 / round_s)


def test_coordinate_search_finds_the_optimum_of_a_separable_score():
    from stagedx.bench.tune import SEARCH_SPACE
    from stagedx.runtime.shapes import THREE_STAGE_TREES

    class Ev:
        def __init__(self, v):
            self.predicted_tokens_per_s = v

    target = {"budget": 7, "max_depth": 4, "draft_calls": 2, "draft_batch": 16}

    def score(cfg):
        return Ev(
            -sum(abs(getattr(cfg, k) - v) for k, v in target.items()) - (cfg.fanouts != SEARCH_SPACE["fanouts"][1])
        )

    best_ev, best, evals = coordinate_search(THREE_STAGE_TREES["greedy"], score)
    assert best.budget == 7 and best.max_depth == 4 and best.draft_calls == 2 and best.draft_batch == 16
    assert best.fanouts == SEARCH_SPACE["fanouts"][1]
    assert best_ev.predicted_tokens_per_s == 0
    assert len(evals) == len({id(e) for e in evals})
