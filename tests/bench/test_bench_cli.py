"""``stagedx bench`` and ``stagedx tune`` end to end on the tiny bundle: 2 prompts, few tokens.

Every ratio the bench reports is recomputed here from the raw counts and times in its JSON
(independently of stagedx.bench.metrics). No timing assertions.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from stagedx.cli import _register, cli

NEW = 6


def invoke(args):
    _register()
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def tps(rs):
    return sum(r["new_tokens"] for r in rs) / sum(r["wall_s"] for r in rs)


def check_summary(data):
    recs, w = data["records"], data["weights_bytes"]
    assert w["oracle"] >= w["draft"] > 0
    for sampling, cells in data["summary"].items():
        base = [r for r in recs if r["sampling"] == sampling and r["method"] == "baseline"]
        for method, c in cells.items():
            rs = [r for r in recs if r["sampling"] == sampling and r["method"] == method]
            assert c["runs"] == len(rs) == 2 * 2  # 2 prompts x 2 repeats
            toks = sum(r["new_tokens"] for r in rs)
            ocalls = sum(r["oracle_calls"] for r in rs)
            dcalls = sum(r["draft_calls"] for r in rs)
            assert c["new_tokens"] == toks and c["oracle_calls"] == ocalls and c["draft_calls"] == dcalls
            assert c["tokens_per_s"] == pytest.approx(tps(rs), rel=1e-9)
            assert c["tokens_per_oracle_call"] == pytest.approx(toks / ocalls, rel=1e-9)
            traffic = (ocalls * w["oracle"] + dcalls * w["draft"]) / (toks * w["oracle"])
            assert c["relative_traffic"] == pytest.approx(traffic, rel=1e-9)
            lat = np.array([1e3 * r["wall_s"] / r["new_tokens"] for r in rs])
            assert c["latency_ms_per_token"]["mean"] == pytest.approx(lat.mean(), rel=1e-9)
            assert c["latency_ms_per_token"]["p50"] == pytest.approx(np.median(lat), rel=1e-9)
            assert c["latency_ms_per_token"]["p90"] == pytest.approx(np.percentile(lat, 90), rel=1e-9)
            per_prompt = {}
            for p in (0, 1):
                ours = tps([r for r in rs if r["prompt_index"] == p])
                theirs = tps([r for r in base if r["prompt_index"] == p])
                per_prompt[str(p)] = ours / theirs
            assert c["speedup_per_prompt"] == pytest.approx(per_prompt, rel=1e-9)
            assert c["speedup_mean"] == pytest.approx(np.mean(list(per_prompt.values())), rel=1e-9)
            assert c["speedup_pooled"] == pytest.approx(tps(rs) / tps(base), rel=1e-9)
            stage = {k: sum(r["accepted_by_stage"][k] for r in rs) for k in rs[0]["accepted_by_stage"]}
            assert c["acceptance_by_stage"]["count"] == stage
            depth = np.sum([r["accepted_by_depth"] for r in rs], axis=0)
            assert c["acceptance_by_depth"]["count"] == depth.tolist()
            if method == "baseline":
                assert ocalls == toks and dcalls == 0 and traffic == pytest.approx(1.0)


def test_bench_end_to_end(tiny_bundle, tmp_path):
    out = tmp_path / "out"
    res = invoke(
        [
            "bench",
            str(tiny_bundle),
            "--limit",
            "2",
            "--max-new-tokens",
            str(NEW),
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--out",
            str(out),
            "--seed",
            "3",
        ]
    )
    assert "relative oracle memory traffic" in res.output and "roofline:" in res.output
    data = json.loads((out / "bench.json").read_text())
    env = data["environment"]
    assert env["threads"] == 1 and env["device"] and env["backend"] == "onnxruntime"
    assert set(env["versions"]) >= {"python", "numpy", "onnxruntime", "stagedx"}
    assert set(env["load_average"]) == {"before", "after"} and isinstance(env["busy"], bool)
    assert data["config"]["prompt_ids"] == ["HumanEval/0", "HumanEval/1"]
    recs = data["records"]
    # methods (baseline, speculative, staged, staged3, auto) x samplings x prompts x repeats
    assert len(recs) == 5 * 2 * 2 * 2
    auto = data["summary"]["greedy"]["auto"]["planner"]
    assert auto["rounds"] > 0 and sum(auto["choice_share"].values()) == pytest.approx(1.0)
    assert "auto planner:" in res.output
    assert all(r["new_tokens"] == NEW and r["finish_reason"] == "length" for r in recs)
    # the same seed for every method on one (prompt, repeat); greedy runs agree on nothing random
    seeds = {(r["prompt_index"], r["repeat"]): set() for r in recs}
    for r in recs:
        seeds[(r["prompt_index"], r["repeat"])].add(r["seed"])
    assert all(len(s) == 1 for s in seeds.values())
    check_summary(data)
    roof = data["roofline"]
    assert roof["limit_tokens_per_s"] == pytest.approx(roof["bandwidth_gb_s"] * 1e9 / data["weights_bytes"]["oracle"])
    assert roof["fraction"] == pytest.approx(
        data["summary"]["greedy"]["baseline"]["tokens_per_s"] / roof["limit_tokens_per_s"]
    )
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "bench.txt").read_text().strip()
    # decode-only speed beside end-to-end; Figure 1 from the measured cost curve
    assert "decode tok/s" in res.output and "oracle cost curve" in res.output
    for cells in data["summary"].values():
        for c in cells.values():
            assert c["decode_tokens_per_s"] > c["tokens_per_s"]
            assert c["tree_tokens_per_oracle_call"] >= 1.0
        assert cells["baseline"]["tree_tokens_per_oracle_call"] == 1.0
    assert set(data["cost_curve"]["latency_s"]) >= {"1", "8", "64"} and data["cost_curve"]["peak_flops"] > 0
    assert (out / "figure1.png").read_bytes()[:4] == b"\x89PNG"
    again = invoke(
        [
            "bench",
            str(tiny_bundle),
            "--limit",
            "1",
            "--max-new-tokens",
            "4",
            "--warmup",
            "0",
            "--methods",
            "baseline",
            "--sampling",
            "greedy",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "two"),
            "--figure-with",
            str(out / "bench.json"),
        ]
    )
    assert "figure1.png" in again.output and (tmp_path / "two" / "figure1.png").is_file()


def test_bench_self_draft_accepts_everything(self_draft_bundle, tmp_path):
    """With the oracle as its own draft, greedy speculative accepts every draft token: the
    counts (not the times) must show more than one token per oracle call."""
    out = tmp_path / "out"
    invoke(
        [
            "bench",
            str(self_draft_bundle),
            "--limit",
            "2",
            "--max-new-tokens",
            "9",
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--methods",
            "baseline,speculative,staged3",
            "--sampling",
            "greedy",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    data = json.loads((out / "bench.json").read_text())
    check_summary(data)
    g = data["summary"]["greedy"]
    assert g["speculative"]["tokens_per_oracle_call"] > 1.5
    assert g["staged3"]["tokens_per_oracle_call"] > 1.5


def test_bench_rejects_bad_options(tiny_bundle, tmp_path):
    from stagedx.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", str(tiny_bundle), "--methods", "baseline,nope", "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_tune_end_to_end(tiny_bundle, tmp_path):
    from stagedx.manifest import load_manifest
    from stagedx.runtime import Generator, SamplingConfig, TreeConfig

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    res = invoke(["tune", str(bundle), "--limit", "2", "--max-new-tokens", "4", "--threads", "1"])
    assert "stored tuning" in res.output
    tuning = load_manifest(bundle).tuning
    ((key, entry),) = tuning.items()
    assert key.endswith("|onnxruntime|1") and not key.startswith("cuda")
    assert entry.oracle_latency_s and entry.draft_latency_s
    assert entry.calibration["prompts"] == "humaneval:82-163"
    gen = Generator(bundle, threads=1)  # the runtime picks the matching entry by default
    for mode, sampling in (("greedy", "greedy"), ("sample", "topk:50")):
        tree = entry.modes()[mode]
        cfg = TreeConfig.from_dict(tree)
        assert set(TreeConfig.__dataclass_fields__) <= set(tree)
        best = max(tree["candidates"], key=lambda c: c["predicted_tokens_per_s"])
        assert best["tree"] == {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}
        assert tree["predicted_tokens_per_s"] == pytest.approx(best["predicted_tokens_per_s"])
        assert gen.tree_for(SamplingConfig.parse(sampling)) == cfg


def test_tune_with_acceptance_from_a_twin(tiny_bundle, tmp_path):
    """Generations run on the twin (here: a copy of the same bundle), curves on the target;
    every candidate is priced from its counted call sizes, and a three-stage tree is kept."""
    from stagedx.manifest import load_manifest

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    res = invoke(
        [
            "tune",
            str(bundle),
            "--acceptance-from",
            str(tiny_bundle),
            "--limit",
            "1",
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
            "--sampling",
            "topk:50",
        ]
    )
    assert "calibration generations run on" in res.output
    (entry,) = load_manifest(bundle).tuning.values()
    assert entry.calibration["acceptance_from"] == str(tiny_bundle)
    assert set(entry.in_loop_factors) == {"oracle", "draft"}
    cands = entry.sample["candidates"]
    assert any(c["tree"]["widths"] for c in cands) and all(c["call_sizes"]["oracle"] for c in cands)
    assert max(c["tree"]["budget"] for c in cands) >= 11
    three = entry.three_stage("sample")
    assert three["extra"] > 0 or three["draft_calls"] > 0
    assert not load_manifest(tiny_bundle).tuning  # the twin is only read


def test_bench_without_peers_never_imports_torch(tiny_bundle, tmp_path):
    import subprocess
    import sys

    code = (
        "import sys; from stagedx.cli import main; "
        f"main(['bench', {str(tiny_bundle)!r}, '--limit', '1', '--max-new-tokens', '2', '--warmup', '0', "
        f"'--sampling', 'greedy', '--threads', '1', '--out', {str(tmp_path)!r}]); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


def test_bench_peers(tiny_pair, tiny_bundle, tmp_path):
    """transformers peers on the checkpoints the bundle records; ratios recomputed."""
    out = tmp_path / "out"
    res = invoke(
        [
            "bench",
            str(tiny_bundle),
            "--limit",
            "2",
            "--max-new-tokens",
            str(NEW),
            "--repeats",
            "2",
            "--warmup",
            "0",
            "--sampling",
            "greedy",
            "--threads",
            "1",
            "--peers",
            "--out",
            str(out),
        ]
    )
    assert "hf-assisted" in res.output
    data = json.loads((out / "bench.json").read_text())
    check_summary(data)
    peers, recs = data["peers"], data["peer_records"]
    assert {r["method"] for r in recs} == {"hf-greedy", "hf-assisted", "hf-prompt-lookup"}
    assert all(r["new_tokens"] == NEW and r["sampling"] == "greedy" for r in recs)
    ref = {m: tps([r for r in data["records"] if r["method"] == m]) for m in ("baseline", "staged")}
    for name, p in peers["methods"].items():
        mine = tps([r for r in recs if r["method"] == name])
        assert p["tokens_per_s"] == pytest.approx(mine, rel=1e-9)
        assert p["ratio_to_stagedx_baseline"] == pytest.approx(mine / ref["baseline"], rel=1e-9)
        assert p["ratio_to_stagedx_staged"] == pytest.approx(mine / ref["staged"], rel=1e-9)
    slower = ref["baseline"] < peers["methods"]["hf-greedy"]["tokens_per_s"]
    assert ("SANITY CHECK FAILED" in peers["sanity"]) == slower
    assert peers["sanity"] in res.output


def test_sanity_line_is_loud_when_baseline_is_slower():
    from stagedx.bench.peers import sanity_line

    assert "SANITY CHECK FAILED" in sanity_line(10.0, 20.0)
    assert "ok" in sanity_line(20.0, 10.0)
