"""KVCache: commits of random row subsets against a plain list model of the committed rows."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stagedx.errors import ContractError, StagedxError
from stagedx.runtime.backends.kv import KVCache, KVShape

L, H, D = 2, 2, 3


def _rows(rng, t):  # new K or V of one run: [L, T, H, D], every value distinct
    return rng.standard_normal((L, t, H, D)).astype(np.float32)


# one op: ("commit", T, picked rows as a bitmask seed) or ("truncate", fraction)
op = st.one_of(
    st.tuples(st.just("commit"), st.integers(1, 6), st.integers(0, 2**6 - 1)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(op, max_size=12), reserved=st.integers(0, 2), seed=st.integers(0, 2**16))
def test_cache_matches_list_model(ops, reserved, seed):
    rng = np.random.default_rng(seed)
    cache = KVCache(KVShape(L, H, D, max_context=24, reserved=reserved))
    model_k: list[np.ndarray] = []  # committed rows, each [L, H, D]
    model_v: list[np.ndarray] = []
    for kind, *args in ops:
        if kind == "commit":
            t, bits = args
            rows = [i for i in range(t) if bits >> i & 1]
            new_k, new_v = _rows(rng, t), _rows(rng, t)
            if len(model_k) + len(rows) > 24:
                with pytest.raises(StagedxError, match="context limit"):
                    cache.commit(new_k, new_v, rows)
                continue
            cache.commit(new_k, new_v, rows)
            model_k += [new_k[:, r] for r in rows]
            model_v += [new_v[:, r] for r in rows]
        else:
            n = int(args[0] * len(model_k))
            cache.truncate(n)
            del model_k[n:], model_v[n:]
        assert cache.length == len(model_k)
        pk, pv = cache.prefix()
        assert pk.shape == (L, reserved + len(model_k), H, D)
        assert pk.base is cache.keys and pv.base is cache.values  # views, not copies
        assert pk[0].flags.c_contiguous  # bindable by pointer
        assert not pk[:, :reserved].any() and not pv[:, :reserved].any()  # dummy rows untouched
        if model_k:
            np.testing.assert_array_equal(pk[:, reserved:], np.stack(model_k, axis=1))
            np.testing.assert_array_equal(pv[:, reserved:], np.stack(model_v, axis=1))


def test_commit_at_rewrites_from_that_row():
    rng = np.random.default_rng(0)
    cache = KVCache(KVShape(L, H, D, max_context=8, reserved=1))
    first, second = _rows(rng, 4), _rows(rng, 3)
    cache.commit(first, first, [0, 1, 2, 3])
    cache.commit(second, second, [2, 0], at=1)
    assert cache.length == 3
    k, _ = cache.prefix()
    np.testing.assert_array_equal(k[:, 1], first[:, 0])
    np.testing.assert_array_equal(k[:, 2], second[:, 2])
    np.testing.assert_array_equal(k[:, 3], second[:, 0])
    assert not k[:, 0].any()


def test_overflow_and_bad_arguments():
    rng = np.random.default_rng(1)
    cache = KVCache(KVShape(L, H, D, max_context=4))
    new = _rows(rng, 5)
    with pytest.raises(StagedxError, match="context limit reached"):
        cache.commit(new, new, range(5))
    assert cache.length == 0
    cache.commit(new, new, [4, 3, 2, 1])  # path order is the caller's: rows land as given
    np.testing.assert_array_equal(cache.prefix()[0][:, 0], new[:, 4])
    with pytest.raises(StagedxError, match="context limit reached"):
        cache.commit(new, new, [0])
    with pytest.raises(ContractError):
        cache.commit(new, new, [5], at=0)  # row outside the run
    with pytest.raises(ContractError):
        cache.truncate(5)
    with pytest.raises(ContractError):
        cache.commit(new, new, [0], at=5)
    cache.truncate(0)
    assert cache.length == 0 and cache.room() == 4
