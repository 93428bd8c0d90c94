import dataclasses

import pytest

from stagedx.errors import StagedxError
from stagedx.runtime.bundle import _use_engines, open_bundle


def with_engines(manifest, roles):
    engines = tuple({"role": r, "file": f"engines/{r}.plan", "sha256": "0"} for r in roles)
    return dataclasses.replace(manifest, engines=engines)


def test_engines_run_both_models_or_neither(tiny_bundle):
    _, manifest = open_bundle(tiny_bundle)
    assert not _use_engines(manifest, "tensorrt")  # no engines: ONNX Runtime's TensorRT EP
    assert not _use_engines(manifest, "auto")
    with pytest.raises(StagedxError, match="engines for oracle only"):
        _use_engines(with_engines(manifest, ["oracle"]), "tensorrt")
    both = with_engines(manifest, ["oracle", "draft"])
    assert _use_engines(both, "tensorrt")
    assert not _use_engines(both, "cpu")


def test_auto_uses_engines_only_when_tensorrt_is_usable(tiny_bundle):
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        _, manifest = open_bundle(tiny_bundle)
        assert not _use_engines(with_engines(manifest, ["oracle", "draft"]), "auto")
    else:  # pragma: no cover - only on a TensorRT machine
        pytest.skip("TensorRT installed: covered by the GPU tests")
