"""Decode options: one definition for the keywords of generate / stream and the server."""

from __future__ import annotations

import pytest

from stagedx.errors import StagedxError
from stagedx.runtime import DecodeOptions, SamplingConfig


def test_keywords_override_the_fields_of_an_options_object():
    base = DecodeOptions(max_new_tokens=8, sampling="topk:5", seed=3)
    opts = DecodeOptions.build(base, {"seed": 4})
    assert (opts.max_new_tokens, opts.sampling, opts.seed) == (8, "topk:5", 4)
    assert DecodeOptions.build(None, {}) == DecodeOptions()
    assert DecodeOptions.build(base, {}) is base
    assert opts.sampling_config() == SamplingConfig.parse("topk:5")


def test_unknown_options_and_bad_values_are_refused():
    with pytest.raises(TypeError, match="max_tokens"):
        DecodeOptions.build(None, {"max_tokens": 3})
    with pytest.raises(TypeError, match="DecodeOptions"):
        DecodeOptions.build({"seed": 1}, {})
    with pytest.raises(StagedxError, match="seed"):
        DecodeOptions.build(None, {"seed": -1})
