"""Class 8: the Python API takes a str or a sequence of int token ids, and refuses the rest."""

from __future__ import annotations

import numpy as np
import pytest

from stagedx.errors import StagedxError
from stagedx.runtime import Generator, TreeConfig


@pytest.fixture(scope="module")
def gen(tiny_bundle):
    return Generator(tiny_bundle, device="cpu", threads=1)


@pytest.mark.parametrize(
    "prompt",
    [
        b"def f(x):",
        bytearray(b"abc"),
        memoryview(b"abc"),
        [1.5, 2.0],
        [True, False],
        [[1, 2], [3, 4]],
        42,
        None,
        {"a": 1},
        (x for x in [1, 2]),
        ["1", "2"],
        [2**70],
    ],
)
def test_prompts_that_are_not_text_or_token_ids_are_refused(gen, prompt):
    with pytest.raises(StagedxError, match="prompt"):
        gen.generate(prompt, max_new_tokens=2)
    with pytest.raises(StagedxError, match="prompt"):
        "".join(gen.stream(prompt, max_new_tokens=2))


@pytest.mark.parametrize("prompt", ["def f(x):", [5, 6, 7], (5, 6, 7), np.asarray([5, 6, 7], np.int32)])
def test_text_and_int_sequences_work(gen, prompt):
    res = gen.generate(prompt, max_new_tokens=3, ignore_eos=True)
    assert len(res.tokens) == 3


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(max_new_tokens=2.5), "max_new_tokens"),
        (dict(max_new_tokens=True), "max_new_tokens"),
        (dict(seed=1.5), "seed"),
        (dict(seed=-3), "seed"),
        (dict(sampling=5), "sampling"),
        (dict(stop=5), "stop"),
        (dict(stop=[b"x"]), "stop"),
        (dict(stop=""), "stop strings must not be empty"),
        (dict(stop=["\n", ""]), "stop strings must not be empty"),
        (dict(tree={"budget": 3}), "tree"),
        (dict(strategy="beam"), "strategy"),
        (dict(tree=TreeConfig(budget=2), sampling="topk:0"), "sampling"),
    ],
)
def test_other_options_are_checked(gen, kwargs, needle):
    kwargs = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(StagedxError, match=needle):
        gen.generate("def f(x):", **kwargs)
