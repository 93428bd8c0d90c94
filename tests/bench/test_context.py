"""``stagedx bench --context``: prompts of exactly N tokens, the floor recomputed from the JSON's
raw figures, contexts past the model's limit skipped. No timing assertions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from stagedx.bench.context import long_prompts, parse_contexts
from stagedx.bench.prompts import Prompt
from stagedx.cli import _register, cli
from stagedx.errors import StagedxError

NEW = 4


class WordTokenizer:
    """One token per character: enough to check lengths and order."""

    def encode(self, text):
        return np.asarray([ord(c) for c in text], np.int64)

    def decode(self, ids):
        return "".join(chr(int(i)) for i in ids)


def test_parse_contexts():
    assert parse_contexts("512,128, 2048,128") == (128, 512, 2048)
    for bad in ("", "a,2", "1", "128,-4"):
        with pytest.raises(StagedxError, match="--context"):
            parse_contexts(bad)


def test_long_prompts_end_with_the_prompt_after_the_following_ones():
    prompts = [Prompt("a", "abc"), Prompt("b", "defg"), Prompt("c", "hi")]
    out = long_prompts(WordTokenizer(), prompts, 8)
    assert [len(p.ids) for p in out] == [8, 8, 8]
    text = ["".join(chr(i) for i in p.ids) for p in out]
    # a: ... hi | defg | abc;  b: ... abc | hi | defg;  c: ... defg | abc | hi
    assert text == ["idefgabc", "bchidefg", "efgabchi"]
    assert [p.id for p in out] == ["a@8", "b@8", "c@8"]
    short = long_prompts(WordTokenizer(), prompts, 2)
    assert ["".join(chr(i) for i in p.ids) for p in short] == ["bc", "fg", "hi"]


def test_one_measured_prompt_draws_its_context_from_the_whole_pool():
    """--limit 1 must not make the context the same prompt over and over."""
    pool = [Prompt("a", "abc"), Prompt("b", "defg"), Prompt("c", "hi")]
    (one,) = long_prompts(WordTokenizer(), pool[:1], 8, pool)
    assert "".join(chr(i) for i in one.ids) == "idefgabc"
    (alone,) = long_prompts(WordTokenizer(), pool[:1], 8)
    assert "".join(chr(i) for i in alone.ids) == "bcabcabc"  # without a pool: repeats


def test_context_sweep_end_to_end(tiny_bundle, tmp_path):
    from stagedx.manifest import load_manifest

    _register()
    out = tmp_path / "ctx"
    args = [
        "bench",
        str(tiny_bundle),
        "--context",
        "24,12,100000",
        "--limit",
        "2",
        "--max-new-tokens",
        str(NEW),
        "--methods",
        "baseline,staged",
        "--sampling",
        "greedy",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    res = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads((out / "context.json").read_text())
    assert data["contexts"] == [12, 24] and data["skipped_contexts"] == [100000]
    assert "skipped" in (out / "context.txt").read_text()
    oracle = load_manifest(tiny_bundle).models["oracle"]
    a = oracle.arch
    floor = data["floor"]
    assert floor["kv_row_bytes"] == 2 * a.n_layers * a.n_kv_heads * a.head_dim * 4
    assert floor["weights"]["oracle"] == oracle.weight_bytes
    for n in (12, 24):
        recs = [r for r in data["records"] if r["context"] == n]
        assert len(recs) == 2 * 2  # 2 prompts x 2 methods
        assert all(r["prompt_tokens"] == n and r["new_tokens"] == NEW for r in recs)
        cells = data["summary"][str(n)]["greedy"]
        for method, c in cells.items():
            rs = [r for r in recs if r["method"] == method]
            decode = sum(r["wall_s"] - r["time_s"]["prefill"] for r in rs)
            assert c["decode_tokens_per_s"] == pytest.approx(2 * NEW / decode, rel=1e-9)
            mean_past = n - 1 + NEW / 2
            want = 1e3 * (oracle.weight_bytes + floor["kv_row_bytes"] * mean_past) / floor["bandwidth"]
            assert c["floor_ms_per_call"] == pytest.approx(want, rel=1e-9)
            calls = sum(r["oracle_calls"] for r in rs)
            ms_per_call = 1e3 * sum(r["time_s"]["oracle"] for r in rs) / calls
            assert c["oracle_call_over_floor"] == pytest.approx(ms_per_call / want, rel=1e-9)
        base = cells["baseline"]["decode_tokens_per_s"]
        assert cells["staged"]["decode_speedup_pooled"] == pytest.approx(
            cells["staged"]["decode_tokens_per_s"] / base, rel=1e-9
        )


def test_bad_context_is_one_line_and_exit_2(tiny_bundle, tmp_path):
    from stagedx.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", str(tiny_bundle), "--context", "12,x", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
