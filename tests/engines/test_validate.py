"""`stagedx validate` on ONNX Runtime (CPU) against the transformers reference saved by export."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

import stagedx.cli as top
from stagedx.engines import cli as engines_cli
from stagedx.engines.validate import validate_bundle
from stagedx.errors import StagedxError
from stagedx.files import sha256_file
from stagedx.manifest import load_manifest, update_manifest
from stagedx.numerics import rel_error


def _cli(monkeypatch, capsys, args):
    def register():
        for c in engines_cli.COMMANDS:
            top.cli.add_command(c)

    monkeypatch.setattr(top, "_register", register)
    code = 0
    try:
        top.main(args)
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_validate_passes_on_onnxruntime_for_an_exported_bundle(tiny_bundle, monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, ["validate", str(tiny_bundle)])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["backend", "role", "dtype", "output"]
    rows = [ln.split() for ln in lines[1:] if ln.startswith("onnxruntime")]
    # both roles, logits and top-k, plain and with the TensorRT runtime's masked dummy row
    assert len(rows) == 8 and all(r[-1] == "pass" for r in rows)
    assert {r[0] for r in rows} == {"onnxruntime", "onnxruntime+1dummy"}
    errors = [float(r[4]) for r in rows]
    assert 0 < max(errors) < 1e-4  # a real comparison: not ORT against itself
    trt_rows = [ln for ln in lines if ln.startswith("tensorrt")]
    assert len(trt_rows) == 2 and all("skipped" in ln for ln in trt_rows)
    assert "validation passed" in out


def _rewrite_reference(bundle, change):
    manifest = load_manifest(bundle)
    path = bundle / manifest.reference.file
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    np.savez(path, **arrays)
    update_manifest(bundle, reference=dataclasses.replace(manifest.reference, sha256=sha256_file(path)))


def test_a_corrupted_reference_fails_with_exit_2(bundle_copy, monkeypatch, capsys):
    def corrupt(a):
        a["draft.logits"] = a["draft.logits"] * 1.01

    _rewrite_reference(bundle_copy, corrupt)
    code, out, err = _cli(monkeypatch, capsys, ["validate", str(bundle_copy)])
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: validation failed")
    assert "draft" in err[0]
    fails = [ln.split() for ln in out.splitlines() if ln.endswith("FAIL")]
    assert fails and {r[1] for r in fails} == {"draft"}
    assert all(ln.endswith("pass") for ln in out.splitlines() if ln.startswith("onnxruntime ") and " oracle " in ln)


def _ignore_mask(model):
    """Make the graph attend everywhere: every consumer of tree_mask gets an all-True mask."""
    from onnx import TensorProto, helper

    shape = helper.make_node("Shape", ["tree_mask"], ["_mask_shape"])
    ones = helper.make_node(
        "ConstantOfShape",
        ["_mask_shape"],
        ["_mask_all"],
        value=helper.make_tensor("one", TensorProto.BOOL, [1], [True]),
    )
    used = 0
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name == "tree_mask":
                node.input[k] = "_mask_all"
                used += 1
    assert used, "the graph does not read tree_mask"
    model.graph.node.insert(0, ones)
    model.graph.node.insert(0, shape)
    return model


def test_a_graph_that_ignores_the_tree_mask_fails(bundle_copy, monkeypatch, capsys):
    import onnx

    manifest = load_manifest(bundle_copy)
    entry = manifest.draft
    assert entry.external_data is None
    path = bundle_copy / entry.file
    onnx.save(_ignore_mask(onnx.load(str(path))), str(path))
    models = {**manifest.models, "draft": dataclasses.replace(entry, sha256=sha256_file(path))}
    update_manifest(bundle_copy, models=models)
    code, out, err = _cli(monkeypatch, capsys, ["validate", str(bundle_copy)])
    assert code == 2 and "validation failed" in err[0]
    fails = [ln.split() for ln in out.splitlines() if ln.endswith("FAIL")]
    assert {(r[1], r[3]) for r in fails} >= {("draft", "logits")}


def test_a_bundle_without_reference_is_refused(bundle_copy):
    update_manifest(bundle_copy, reference=None)
    with pytest.raises(StagedxError, match="no reference.npz"):
        validate_bundle(bundle_copy)


def test_rel_error():
    ref = np.array([[1.0, -4.0], [2.0, 0.5]])
    assert rel_error(ref, ref) == 0.0
    assert rel_error(ref + [[0, 0.04], [0, 0]], ref) == pytest.approx(0.01)
    assert rel_error(np.full_like(ref, np.nan), ref) == float("inf")
    assert rel_error(ref[:1], ref) == float("inf")
    assert rel_error(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    assert rel_error(np.zeros(2), np.zeros(2)) == 0.0 and rel_error(np.ones(2), np.zeros(2)) == float("inf")


def test_the_cuda_ep_rows_say_why_they_are_skipped(tiny_bundle, monkeypatch):
    import onnxruntime as ort

    from stagedx.engines.validate import CUDA_BACKEND, validate_bundle

    def cuda_rows():
        return [c for c in validate_bundle(tiny_bundle) if c.backend == CUDA_BACKEND]

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        rows = cuda_rows()
        assert len(rows) == 2 and all(c.skipped and c.note == "onnxruntime-gpu not installed" for c in rows)
    # onnxruntime-gpu present but its CUDA EP cannot load (no GPU / libraries): ORT falls back to
    # the CPU, which must not be reported as a CUDA comparison
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = ort.InferenceSession

    def cpu_only(*args, providers=None, **kw):
        return real(*args, providers=["CPUExecutionProvider"], **kw)

    monkeypatch.setattr(ort, "InferenceSession", cpu_only)
    rows = cuda_rows()
    assert len(rows) == 2 and all(c.skipped and "CUDA EP did not load" in c.note for c in rows)
