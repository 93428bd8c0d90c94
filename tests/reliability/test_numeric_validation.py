"""Class 2: numbers that are not numbers, refused by SamplingConfig and TreeConfig themselves
(whoever builds them), by the CLI in one line, and in tuned entries read from a manifest."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedx.errors import StagedxError
from stagedx.runtime import Generator, SamplingConfig, TreeConfig
from tests.reliability._util import assert_one_line_error, copy_bundle, edit_manifest, run_cli

BAD_SAMPLING = [
    dict(mode="beam"),
    dict(mode="sample", temperature=float("nan")),
    dict(mode="sample", temperature=float("inf")),
    dict(mode="sample", temperature=0.0),
    dict(mode="sample", temperature=-1.0),
    dict(mode="sample", top_k=-1),
    dict(mode="sample", top_k=2.5),
    dict(mode="sample", top_p=0.0),
    dict(mode="sample", top_p=1.5),
    dict(mode="sample", top_p=float("nan")),
    dict(mode="sample", temperature="1"),
    dict(mode="sample", top_k=True),
]


@pytest.mark.parametrize("kwargs", BAD_SAMPLING)
def test_sampling_config_validates_itself(kwargs):
    with pytest.raises(StagedxError):
        SamplingConfig(**kwargs)


@given(
    t=st.floats(allow_nan=True, allow_infinity=True),
    p=st.floats(allow_nan=True, allow_infinity=True),
    k=st.integers(-5, 100),
)
@settings(max_examples=200, deadline=None)
def test_sampling_config_is_either_refused_or_usable(t, p, k):
    try:
        cfg = SamplingConfig("sample", t, k, p)
    except StagedxError:
        assert not (math.isfinite(t) and t > 0 and 0 < p <= 1 and k >= 0)
        return
    assert math.isfinite(cfg.temperature) and cfg.temperature > 0 and 0 < cfg.top_p <= 1 and cfg.top_k >= 0


BAD_TREES = [
    dict(budget=-1),
    dict(max_depth=0),
    dict(fanouts=(2, 0)),
    dict(fanouts=[2, 1]),
    dict(draft_calls=-1),
    dict(draft_batch=0),
    dict(tau=0.0),
    dict(tau=float("nan")),
    dict(tau=float("inf")),
    dict(spec_k=0),
    dict(budget=10**9),
    dict(budget=2.0),
    dict(max_depth=True),
    dict(extra=-1),
    dict(lookahead=-1),
    dict(lookahead=1.5),
    dict(widths=(1, 0)),
    dict(stop_p=1.5),
]


@pytest.mark.parametrize("kwargs", BAD_TREES)
def test_tree_config_validates_itself(kwargs):
    with pytest.raises(StagedxError):
        TreeConfig(**kwargs)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--sampling", "topk:5", "--temperature", "nan"], "--temperature"),
        (["--sampling", "topk:5", "--temperature", "inf"], "--temperature"),
        (["--sampling", "topp:nan"], "unknown sampling"),
        (["--tree-budget", "-2"], "budget"),
        (["--max-depth", "0"], "max_depth"),
        (["--fanouts", "3,0"], "fanouts"),
        (["--draft-calls", "-1"], "draft_calls"),
    ],
)
def test_cli_refuses_non_numbers_in_one_line(tiny_bundle, capsys, args, needle):
    code, out, err = run_cli(
        capsys, ["generate", tiny_bundle, "def f(x):", "--threads", "1", "--max-new-tokens", "4", *args]
    )
    assert_one_line_error(code, err, needle)
    assert out == ""


@pytest.mark.parametrize("tree", [{"budget": -3}, {"fanouts": "12,7"}, {"max_depth": 0}, {"tau": "hot"}, [1, 2]])
def test_tuned_entry_read_from_a_manifest_is_validated(tiny_bundle, tmp_path, tree):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    edit_manifest(bundle, lambda d: d.__setitem__("tuning", {"cpu|onnxruntime|1": {"greedy": tree}}))
    with pytest.raises(StagedxError, match=r"tuning\['cpu\|onnxruntime\|1'\]\['greedy'\]"):
        Generator(bundle, device="cpu", threads=1)
