"""Optimization-profile shapes (pure; no TensorRT needed)."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedx.engines.profiles import ProfileSpec, check_spec, fits_profile, profile_shapes, shapes_as_dict
from stagedx.errors import StagedxError
from stagedx.manifest import ArchDims, ModelEntry


def _entry(n_layers=2, heads=3, head_dim=4) -> ModelEntry:
    arch = ArchDims("gpt2", n_layers, heads, heads, head_dim, heads * head_dim, 50, 256)
    return ModelEntry(
        role="oracle",
        file="oracle.onnx",
        sha256="0",
        dtype="fp32",
        topk=8,
        arch=arch,
        n_params=1,
        weight_bytes=4,
        source={},
    )


def test_every_input_has_a_range_with_past_never_empty():
    entry = _entry()
    shapes = profile_shapes(entry, ProfileSpec(max_tree=16, max_context=128, reserved=1))
    expected = {"input_ids", "position_ids", "tree_mask"} | {
        f"past_{kv}.{i}" for kv in ("key", "value") for i in range(2)
    }
    assert set(shapes) == expected
    assert shapes["input_ids"].min == (1,) and shapes["input_ids"].max == (16,)
    assert shapes["past_key.0"].min == (1, 3, 4)  # the reserved dummy row
    assert shapes["past_key.1"].max == (128, 3, 4)  # R + max_context - 1
    assert shapes["tree_mask"].min == (1, 2)
    assert shapes["tree_mask"].max == (16, 128 + 16)
    assert shapes["tree_mask"].opt == (16, 1 + 64 + 16)


def test_custom_io_names_are_used():
    entry = _entry(n_layers=1)
    io = dict(entry.io, past_key="pk{i}", input_ids="ids")
    entry = ModelEntry(**{**entry.__dict__, "io": io})
    shapes = profile_shapes(entry, ProfileSpec(4, 32))
    assert "ids" in shapes and "pk0" in shapes and "past_key.0" not in shapes


@settings(max_examples=60, deadline=None)
@given(max_tree=st.integers(1, 64), extra=st.integers(0, 512), reserved=st.integers(1, 3))
def test_ranges_are_ordered_and_cover_every_runtime_call(max_tree, extra, reserved):
    spec = ProfileSpec(max_tree, max(2, max_tree + extra), reserved)
    check_spec(spec, max_positions=10_000)
    shapes = profile_shapes(_entry(n_layers=1), spec)
    for r in shapes.values():
        assert all(a <= b <= c for a, b, c in zip(r.min, r.opt, r.max))
        assert min(r.min) >= 1
    d = shapes_as_dict(shapes)
    # the extreme calls the runner makes: empty cache + 1 token, full cache with the last token,
    # and a full tree on top of the longest past that still fits
    for length, t in ((0, 1), (spec.max_context - 1, 1), (spec.max_context - max_tree, max_tree)):
        past = reserved + length
        feed = {
            "input_ids": (t,),
            "position_ids": (t,),
            "tree_mask": (t, past + t),
            "past_key.0": (past, 3, 4),
            "past_value.0": (past, 3, 4),
        }
        assert fits_profile(d, feed) is None, (length, t)
    over = {"input_ids": (max_tree + 1,)}
    assert "outside the profile range" in fits_profile(d, over)


@pytest.mark.parametrize(
    "spec, positions, words",
    [
        (ProfileSpec(0, 64), 1024, "--max-tree"),
        (ProfileSpec(8, 1), 1024, "--max-context"),
        (ProfileSpec(65, 64), 1024, "cannot exceed"),
        (ProfileSpec(8, 2048), 1024, "exceeds the model"),
        (ProfileSpec(8, 64, reserved=0), 1024, "reserved KV slot"),
    ],
)
def test_bad_ranges_are_refused_with_one_line(spec, positions, words):
    with pytest.raises(StagedxError, match=words) as info:
        check_spec(spec, positions)
    assert "\n" not in str(info.value)


def test_fits_profile_reports_unknown_inputs_and_rank():
    d = shapes_as_dict(profile_shapes(_entry(n_layers=1), ProfileSpec(4, 32)))
    assert "no profile" in fits_profile(d, {"bogus": (1,)})
    assert "rank" in fits_profile(d, {"input_ids": (1, 1)})
