"""ONNX Runtime's CUDA path without TensorRT.

CPU-side: the providers a CUDA session and its KV gather graph get (no TensorRT entry, the
GPU ordinal kept), and the device-KV code path on an fp16 bundle (CPU OrtValues). Marked
``gpu`` (skipped unless onnxruntime-gpu's CUDA EP really loads): the runner on CUDA against
the runner on CPU, fp32 and fp16, and a generation; tools/gpu/device_run.sh runs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stagedx.runtime.backends.ort import OrtRunner
from stagedx.runtime.backends.ort_device import DeviceKV, gather_providers
from stagedx.runtime.bundle import open_bundle
from stagedx.runtime.device import CPU_EP, CUDA_EP, TRT_EP, resolve_device
from stagedx.runtime.runner import chain_mask

GPU_EPS = [TRT_EP, CUDA_EP, CPU_EP]  # what onnxruntime-gpu lists, TensorRT libraries or not


def test_a_cuda_session_asks_for_no_tensorrt():
    assert resolve_device("cuda:1", GPU_EPS).providers == ((CUDA_EP, {"device_id": 1}), CPU_EP)
    assert resolve_device("auto", GPU_EPS).providers == ((CUDA_EP, {"device_id": 0}), CPU_EP)


def test_the_kv_gather_keeps_the_gpu_ordinal_and_drops_tensorrt():
    # Before: the gather session got the names the model session reported, without options,
    # so a cache on cuda:1 was gathered by a session on cuda:0.
    assert gather_providers(resolve_device("tensorrt:1", GPU_EPS).providers) == [(CUDA_EP, {"device_id": 1}), CPU_EP]
    assert gather_providers([TRT_EP, CPU_EP]) == [CPU_EP]


def test_device_kv_builds_its_gather_session_from_the_given_providers(tiny_bundle):
    bundle_dir, manifest = open_bundle(tiny_bundle)
    runner = OrtRunner(bundle_dir, manifest.models["draft"], "cpu", threads=1)
    kv = DeviceKV(runner._kv.shape, runner._binder, [(TRT_EP, {"device_id": 0}), CPU_EP])
    assert kv._gather.get_providers() == [CPU_EP]


def test_the_binder_names_the_gpu_for_io_binding(tiny_bundle):
    from stagedx.runtime.backends.ort import Binder

    bundle_dir, manifest = open_bundle(tiny_bundle)
    runner = OrtRunner(bundle_dir, manifest.models["draft"], "cpu", threads=1)
    b = Binder(runner.session, "cuda", 1)
    assert (b.dev["cuda"].device_type(), b.dev["cuda"].device_id()) == (1, 1)  # OrtDevice GPU, ordinal 1
    assert (b.dev["cpu"].device_type(), b.dev["cpu"].device_id()) == (0, 0)
    assert b._id("cuda") == 1 and b._id("cpu") == 0


def _steps(runner, rng, vocab: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Prefill, a tree with a partial commit, then single tokens: top-k of every call."""
    out = []
    prompt = rng.integers(0, vocab, 12).astype(np.int64)
    res = runner.run(prompt, np.arange(12), chain_mask(12))
    out.append((res.topk_indices, res.topk_values))
    runner.commit(np.arange(12))
    tree = rng.integers(0, vocab, 5).astype(np.int64)
    mask = np.eye(5, dtype=bool)
    mask[1:, 0] = True  # nodes 1..4 are children of node 0
    mask[3, 1] = True  # node 3 is a child of node 1
    res = runner.run(tree, 12 + np.array([0, 1, 1, 2, 1]), mask)
    out.append((res.topk_indices, res.topk_values))
    runner.commit(np.array([0, 1, 3]))
    for i in range(3):
        tok = rng.integers(0, vocab, 1).astype(np.int64)
        res = runner.run(tok, np.array([15 + i]), chain_mask(1))
        out.append((res.topk_indices, res.topk_values))
        runner.commit(np.array([0]))
    return out


@pytest.fixture(scope="module")
def fp16_bundle(tiny_pair, tmp_path_factory) -> Path:
    from stagedx.export.bundle import ExportConfig, export_bundle

    out = tmp_path_factory.mktemp("tiny_fp16") / "bundle"
    return export_bundle(
        ExportConfig(oracle=str(tiny_pair.oracle), draft=str(tiny_pair.draft), output=out, dtype="fp16")
    )


def test_device_kv_on_an_fp16_bundle_matches_the_host_kv(fp16_bundle):
    """The CUDA KV code path (fp16 device OrtValues, fp16 Gather graph) on CPU OrtValues."""
    bundle_dir, manifest = open_bundle(fp16_bundle)
    entry = manifest.models["oracle"]
    host = OrtRunner(bundle_dir, entry, "cpu", threads=1, reserved_slots=1)
    dev = OrtRunner(bundle_dir, entry, "cpu", threads=1, reserved_slots=1)
    dev._kv = DeviceKV(dev._kv.shape, dev._binder)
    dev._kv.ensure(dev._cap)
    vocab = entry.arch.vocab_size
    a, b = _steps(host, np.random.default_rng(0), vocab), _steps(dev, np.random.default_rng(0), vocab)
    for (ia, va), (ib, vb) in zip(a, b):
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(va, vb)
    keys, _ = dev._kv.prefix_host()
    assert keys.dtype == np.float16 and keys.shape[1] == 1 + 18
    np.testing.assert_array_equal(keys, host._kv.cache.keys[:, : 1 + 18])


# -- on a GPU ------------------------------------------------------------------------------------
def _cuda_or_skip() -> None:
    import onnxruntime as ort

    from stagedx.runtime.backends.ort_device import gather_model

    if CUDA_EP not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed here")
    sess = ort.InferenceSession(gather_model(1, np.float32, (1, 1)), providers=[CUDA_EP, CPU_EP])
    if sess.get_providers()[0] != CUDA_EP:
        pytest.skip("the CUDA execution provider did not load (no GPU, or CUDA / cuDNN libraries missing)")


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["tiny_bundle", "fp16_bundle"])
def test_cuda_runner_matches_the_cpu_runner(which, request):
    _cuda_or_skip()
    bundle_dir, manifest = open_bundle(request.getfixturevalue(which))
    for role in ("oracle", "draft"):
        entry = manifest.models[role]
        cpu = OrtRunner(bundle_dir, entry, "cpu", threads=1)
        gpu = OrtRunner(bundle_dir, entry, "cuda", threads=1)
        assert gpu.device == "cuda:0" and type(gpu._kv).__name__ == "DeviceKV"
        assert gpu._kv.keys.device_name().lower() == "cuda"
        vocab = entry.arch.vocab_size
        a, b = _steps(cpu, np.random.default_rng(1), vocab), _steps(gpu, np.random.default_rng(1), vocab)
        tol = 1e-4 if entry.dtype == "fp32" else 2e-2
        for (ia, va), (ib, vb) in zip(a, b):
            assert np.abs(va - vb).max() <= tol * max(np.abs(va).max(), 1e-6)
            assert (ia[:, 0] == ib[:, 0]).mean() >= 0.8  # top-1 (near-ties may swap in fp16)
        kc, vc = cpu._kv.cache.keys[:, :18], cpu._kv.cache.values[:, :18]
        kg, vg = gpu._kv.prefix_host()
        assert np.abs(kc - kg).max() <= tol * max(np.abs(kc).max(), 1e-6)
        assert np.abs(vc - vg).max() <= tol * max(np.abs(vc).max(), 1e-6)
        gpu.close()


@pytest.mark.gpu
def test_cuda_generation_equals_cpu_generation(request):
    _cuda_or_skip()
    from stagedx.runtime import Generator

    tiny_bundle = request.getfixturevalue("tiny_bundle")
    with Generator(tiny_bundle, device="cpu") as cpu, Generator(tiny_bundle, device="cuda") as gpu:
        assert gpu.device == "cuda:0"
        for strategy in ("baseline", "speculative", "staged"):
            a = cpu.generate("def f(x):", max_new_tokens=24, strategy=strategy, ignore_eos=True)
            b = gpu.generate("def f(x):", max_new_tokens=24, strategy=strategy, ignore_eos=True)
            assert a.tokens == b.tokens, strategy
