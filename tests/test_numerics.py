"""rel_error and the ids outside a small-vocabulary draft head (the rest of rel_error is
covered in tests/engines/test_validate.py)."""

from __future__ import annotations

import numpy as np
import pytest

from stagedx.numerics import OUT_OF_HEAD, rel_error


def test_out_of_head_entries_are_left_out_of_both_maxima():
    ref = np.array([[1.0, -1.0e9, -4.0], [2.0, -1.0e9, 0.5]])
    ours = ref + [[0.0, 0.0, 0.04], [0.0, 0.0, 0.0]]
    assert rel_error(ours, ref) == pytest.approx(0.01)  # not 0.04 / 1e9
    fp16_fill = ours.copy()
    fp16_fill[:, 1] = -3.0e4  # a different fill, still outside the head
    assert rel_error(fp16_fill, ref) == pytest.approx(0.01)


def test_an_id_scored_where_the_reference_has_none_is_an_error():
    ref = np.array([[1.0, -1.0e9], [2.0, 3.0]])
    ours = ref.copy()
    ours[0, 1] = OUT_OF_HEAD + 1.0
    assert rel_error(ours, ref) == float("inf")
    assert rel_error(np.full((1, 2), -1.0e9), np.full((1, 2), -1.0e9)) == 0.0
