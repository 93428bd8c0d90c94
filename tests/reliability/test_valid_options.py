"""Class 9: every valid option works to the end; a refused run leaves no output folder."""

from __future__ import annotations

import json

from tests.reliability._util import assert_one_line_error, run_cli


def test_bench_with_only_the_baseline_writes_its_results(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys,
        [
            "bench",
            tiny_bundle,
            "--limit",
            "1",
            "--max-new-tokens",
            "3",
            "--warmup",
            "0",
            "--methods",
            "baseline",
            "--threads",
            "1",
            "--out",
            out,
        ],
    )
    assert code == 0, err
    data = json.loads((out / "bench.json").read_text())
    assert set(data["summary"]["greedy"]) == {"baseline"}
    assert (out / "bench.txt").read_text().strip()
    assert not (out / "bench.png").exists()  # nothing to plot: no speedups without a second method


def test_bench_refusing_its_prompts_leaves_no_out_folder(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "a" / "b"
    code, _, err = run_cli(
        capsys, ["bench", tiny_bundle, "--prompts", tmp_path / "missing.txt", "--threads", "1", "--out", out]
    )
    assert_one_line_error(code, err, "prompt file not found")
    assert list(tmp_path.iterdir()) == []
