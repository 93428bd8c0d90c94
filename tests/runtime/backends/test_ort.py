"""Runner parity: scoring a tree, committing an accepted path, then the next call must give
the logits of a fresh prefill of the whole accepted sequence. Written against the abstract
runner interface; backends join ``FACTORIES`` (the TensorRT runner can add itself there)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stagedx.errors import ContractError, StagedxError
from stagedx.runtime.backends.ort import OrtRunner
from stagedx.runtime.backends.ort_device import DeviceKV, gather_model
from stagedx.runtime.bundle import make_runner, open_bundle
from stagedx.runtime.device import check_providers, resolve_device
from stagedx.runtime.runner import FETCH_LOGITS, FETCH_TOPK, Runner, chain_mask

Factory = Callable[..., Runner]  # (bundle_dir, manifest, role, max_context=None) -> Runner


def _ort(reserved: int) -> Factory:
    def make(bundle_dir, manifest, role, max_context=None):
        entry = manifest.models[role]
        return OrtRunner(bundle_dir, entry, "cpu", threads=1, max_context=max_context, reserved_slots=reserved)

    return make


def _ort_device_kv(bundle_dir, manifest, role, max_context=None):
    """The CUDA code path (device OrtValues, bind by pointer, Gather-graph commit) run on CPU
    OrtValues: the runner is built on CPU and its host KV store swapped for a DeviceKV."""
    runner = _ort(1)(bundle_dir, manifest, role, max_context)
    kv = DeviceKV(runner._kv.shape, runner._binder)
    kv.ensure(runner._cap)
    runner._kv = kv
    return runner


FACTORIES: dict[str, Factory] = {"ort": _ort(0), "ort-reserved1": _ort(1), "ort-devicekv": _ort_device_kv}
BUNDLES = ["tiny_bundle", "pair_bundle"]


@pytest.fixture(params=BUNDLES)
def bundle(request):
    bundle_dir, manifest = open_bundle(request.getfixturevalue(request.param))
    return Path(bundle_dir), manifest


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-6))


def _random_tree(rng, n: int) -> np.ndarray:
    """parents[i] < i (or -1 for a child of the committed prefix)."""
    return np.array([-1 if i == 0 or rng.random() < 0.2 else int(rng.integers(0, i)) for i in range(n)])


def _ancestors(parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([T, T] ancestor-or-self mask, depth [T])."""
    t = len(parents)
    mask = np.zeros((t, t), dtype=bool)
    depth = np.zeros(t, dtype=np.int64)
    for i, p in enumerate(parents):
        mask[i, i] = True
        if p >= 0:
            mask[i] |= mask[p]
            depth[i] = depth[p] + 1
    return mask, depth


def _prefill_logits(runner: Runner, seq: np.ndarray) -> np.ndarray:
    runner.truncate(0)
    out = runner.run(seq, np.arange(len(seq)), chain_mask(len(seq)), fetch=(FETCH_LOGITS,))
    return out.logits


@pytest.mark.parametrize("factory", sorted(FACTORIES))
@pytest.mark.parametrize("role", ["oracle", "draft"])
def test_commit_of_a_tree_path_equals_fresh_prefill(bundle, factory, role):
    bundle_dir, manifest = bundle
    vocab = manifest.models[role].arch.vocab_size
    runner = FACTORIES[factory](bundle_dir, manifest, role)
    fresh = FACTORIES["ort"](bundle_dir, manifest, role)
    rng = np.random.default_rng(7)
    for trial in range(3):
        prompt = rng.integers(0, vocab, size=int(rng.integers(1, 12)))
        runner.truncate(0)
        runner.run(prompt, np.arange(len(prompt)), chain_mask(len(prompt)))
        runner.commit(np.arange(len(prompt)))
        assert runner.length == len(prompt)

        parents = _random_tree(rng, int(rng.integers(2, 12)))
        mask, depth = _ancestors(parents)
        tokens = rng.integers(0, vocab, size=len(parents))
        tree = runner.run(tokens, len(prompt) + depth, mask, fetch=(FETCH_TOPK, FETCH_LOGITS))
        leaf = int(rng.integers(0, len(parents)))
        path = np.flatnonzero(mask[leaf])  # root .. leaf, increasing tree indices = path order
        seq = np.concatenate([prompt, tokens[path]])
        ref = _prefill_logits(fresh, np.concatenate([seq, [int(rng.integers(0, vocab))]]))
        # the tree call itself: each path node scored as if the path were a plain chain
        assert _rel(tree.logits[path], ref[len(prompt) : len(seq)]) < 1e-4, (trial, path)

        runner.commit(path)
        assert runner.length == len(seq)
        nxt = np.array([int(np.argmax(ref[len(seq) - 1]))])
        ref = _prefill_logits(fresh, np.concatenate([seq, nxt]))
        out = runner.run(nxt, np.array([len(seq)]), chain_mask(1), fetch=(FETCH_LOGITS,))
        assert _rel(out.logits[0], ref[-1]) < 1e-4, (trial, path)


def test_reserved_slot_layout_gives_the_same_outputs(bundle):
    bundle_dir, manifest = bundle
    plain, reserved = (FACTORIES[k](bundle_dir, manifest, "oracle") for k in ("ort", "ort-reserved1"))
    rng = np.random.default_rng(3)
    vocab = manifest.oracle.arch.vocab_size
    for runner in (plain, reserved):
        assert runner.length == 0
    for t in (1, 5, 3):  # the first call has an empty committed past
        tokens = rng.integers(0, vocab, size=t)
        pos = plain.length + np.arange(t)
        a = plain.run(tokens, pos, chain_mask(t), fetch=(FETCH_TOPK, FETCH_LOGITS))
        b = reserved.run(tokens, pos, chain_mask(t), fetch=(FETCH_TOPK, FETCH_LOGITS))
        assert _rel(b.logits, a.logits) < 1e-5
        np.testing.assert_array_equal(a.topk_indices[:, :4], b.topk_indices[:, :4])
        plain.commit(np.arange(t))
        reserved.commit(np.arange(t))


def test_fetch_topk_truncate_and_errors(bundle):
    bundle_dir, manifest = bundle
    entry = manifest.oracle
    runner = FACTORIES["ort"](bundle_dir, manifest, "oracle", max_context=6)
    assert runner.backend == "onnxruntime" and runner.device == "cpu" and runner.max_context == 6
    with pytest.raises(ContractError):
        runner.commit([0])  # nothing run yet
    tokens = np.array([3, 1, 4, 1, 5])
    out = runner.run(tokens, np.arange(5), chain_mask(5))
    assert out.logits is None and out.topk_values.shape == (5, entry.topk)
    assert out.topk_values.dtype == np.float32 and out.topk_indices.dtype == np.int64
    assert (np.diff(out.topk_values, axis=1) <= 0).all()
    full = runner.run(tokens, np.arange(5), chain_mask(5), fetch=(FETCH_TOPK, FETCH_LOGITS))
    np.testing.assert_array_equal(full.topk_indices[:, 0], full.logits.argmax(-1))
    np.testing.assert_allclose(full.topk_values, out.topk_values, rtol=1e-6)  # not overwritten
    runner.commit(np.arange(5))
    again = runner.run(tokens[:2], np.array([5, 6]), chain_mask(2), fetch=(FETCH_LOGITS,))
    runner.truncate(3)  # roll back: the same call on 3 rows scores like a prefill of 3 + 2
    rolled = runner.run(tokens[3:], np.array([3, 4]), chain_mask(2), fetch=(FETCH_LOGITS,))
    assert _rel(rolled.logits, full.logits[3:]) < 1e-4
    assert _rel(again.logits, rolled.logits) > 1e-3  # different contexts really differ
    runner.commit([0, 1])
    with pytest.raises(StagedxError, match="context limit reached"):
        runner.run(tokens[:2], np.array([5, 6]), chain_mask(2))
        runner.commit([0, 1])
    with pytest.raises(ContractError):
        runner.truncate(6)


def test_devices_resolve_and_fallback_is_reported():
    with pytest.raises(StagedxError, match="valid: auto, cpu, cuda, tensorrt"):
        resolve_device("tpu", ["CPUExecutionProvider"])
    with pytest.raises(StagedxError, match="CUDAExecutionProvider"):
        resolve_device("cuda", ["CPUExecutionProvider"])
    assert resolve_device("auto", ["CPUExecutionProvider"]).name == "cpu"
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    auto = resolve_device("auto", gpu)
    assert auto.name == "cuda:0" and not auto.explicit
    assert resolve_device("cuda:1", gpu).name == "cuda:1"
    # ORT fell back to CPU: auto says so, an explicit device is an error
    assert check_providers(auto, ["CPUExecutionProvider"]).name == "cpu"
    with pytest.raises(StagedxError, match="fell back"):
        check_providers(resolve_device("cuda", gpu), ["CPUExecutionProvider"])
    assert check_providers(resolve_device("cuda", gpu), gpu).name == "cuda:0"


def test_make_runner_and_bundle_errors(bundle, tmp_path):
    bundle_dir, manifest = bundle
    runner = make_runner(bundle_dir, manifest, "draft", "cpu", 1, 32)
    assert runner.entry == manifest.draft and runner.max_context == 32
    with pytest.raises(StagedxError, match="unknown device"):
        make_runner(bundle_dir, manifest, "draft", "gpu0", 1, None)
    with pytest.raises(StagedxError):
        make_runner(bundle_dir, manifest, "draft", "tensorrt", 1, None)  # no engines, no TRT EP
    with pytest.raises(StagedxError, match="not found"):
        open_bundle(tmp_path / "nope")


def test_hand_written_gather_graph_is_valid_onnx():
    onnx = pytest.importorskip("onnx")
    model = onnx.load_from_string(gather_model(4, np.float32, (3, 8)))
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Gather"] * 4
    assert [i.name for i in model.graph.input] == ["src.0", "src.1", "src.2", "src.3", "rows"]
