"""Checkpoint tensors read one at a time from safetensors files (single or sharded)."""

from __future__ import annotations

import json

import pytest

from stagedx.errors import StagedxError


def _save(folder, tensors, name="model.safetensors"):
    from safetensors.torch import save_file

    folder.mkdir(exist_ok=True)
    save_file(tensors, str(folder / name))


def test_reads_each_tensor_with_prefix_stripped(tmp_path):
    import torch

    from stagedx.export.weights import Weights

    t = {"model.a": torch.randn(3, 4), "model.b": torch.randn(5).half(), "lm_head.weight": torch.randn(2, 2).bfloat16()}
    _save(tmp_path / "c", t)
    w = Weights(tmp_path / "c")
    assert "a" in w and "lm_head.weight" in w and "model.a" not in w
    for key, value in t.items():
        got = w[key.removeprefix("model.")]
        assert got.dtype == value.dtype and torch.equal(got, value)


def test_sharded_checkpoint(tmp_path):
    import torch

    from stagedx.export.weights import Weights

    folder = tmp_path / "c"
    _save(folder, {"model.x": torch.ones(2)}, "model-00001-of-00002.safetensors")
    _save(folder, {"model.y": torch.zeros(3)}, "model-00002-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "weight_map": {
                    "model.x": "model-00001-of-00002.safetensors",
                    "model.y": "model-00002-of-00002.safetensors",
                }
            }
        )
    )
    w = Weights(folder)
    assert w["x"].tolist() == [1.0, 1.0] and w["y"].shape == (3,)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_damaged_file_is_refused(tmp_path, damage):
    import torch

    from stagedx.export.weights import Weights

    _save(tmp_path / "c", {"model.a": torch.randn(64, 64)})
    f = tmp_path / "c" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:-100] if damage == "truncate" else b"\xff" * 8 + data[8:])
    with pytest.raises(StagedxError, match="corrupt or unreadable weights"):
        Weights(tmp_path / "c")


def test_missing_tensor_and_wrong_shape(tmp_path):
    import torch
    from torch import nn

    from stagedx.export.weights import Weights, put

    _save(tmp_path / "c", {"model.a": torch.randn(3, 4)})
    w = Weights(tmp_path / "c")
    with pytest.raises(StagedxError, match="tensor 'b' missing"):
        w["b"]
    module = nn.Module()
    module.p = nn.Parameter(torch.empty(4, 3, device="meta"))
    with pytest.raises(StagedxError, match="mis-shaped weight for p"):
        put(module, "p", w["a"], torch.float16)
    put(module, "p", w["a"].t(), torch.float16)
    assert module.p.dtype == torch.float16 and module.p.is_contiguous() and not module.p.requires_grad
