"""The bundle contract: manifest round trip, integrity checks, schema versions, atomic writes."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from stagedx.errors import StagedxError
from stagedx.files import AtomicFolder
from stagedx.manifest import (
    MANIFEST_NAME,
    ArchDims,
    Draft2Entry,
    Manifest,
    ModelEntry,
    NgramEntry,
    TokenizerEntry,
    load_manifest,
    update_manifest,
    write_manifest,
)


def _sample() -> Manifest:
    arch = ArchDims("gpt2", 2, 4, 4, 8, 32, 100, 64)
    model = lambda role: ModelEntry(  # noqa: E731
        role=role, file=f"{role}.onnx", sha256="a" * 64, dtype="fp16", topk=8, arch=arch,
        n_params=1234, weight_bytes=2468, source={"checkpoint": "x", "model_type": "gpt2"},
        verify={"max_rel_error": 1e-3, "tolerance": 2e-2},
    )
    return Manifest(
        tokenizer=TokenizerEntry("tokenizer.json", "b" * 64, 0, None, 100),
        models={"oracle": model("oracle"), "draft": model("draft")},
        draft2=Draft2Entry("both", NgramEntry("draft2_ngram.npz", "c" * 64, 3, 12, 999, ("stdlib",))),
        stagedx_version="0.1.0", created_utc="2026-01-01T00:00:00Z",
        reference={"file": "reference.npz", "sha256": "d" * 64, "tolerance": {"fp32": 1e-4}},
        engines=({"file": "engines/x.plan", "sha256": "e" * 64},), tuning={"cpu|onnxruntime|2": {"n": 1}},
    )


def test_round_trip_through_json(tmp_path):
    m = _sample()
    write_manifest(tmp_path, m)
    back = load_manifest(tmp_path, check_files=False)
    assert back == m
    assert back.oracle.io_name("past_key", 3) == "past_key.3" and back.reserved_slots("tensorrt") == 1
    assert [f.file for f in back.files()] == ["tokenizer.json", "oracle.onnx", "draft.onnx",
                                              "draft2_ngram.npz", "reference.npz", "engines/x.plan"]
    assert not list(tmp_path.glob(".manifest.*"))  # no temp file left behind


def test_exported_bundle_round_trips_and_detects_changes(tiny_bundle, tmp_path):
    m = load_manifest(tiny_bundle)
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    (copy / "reference.npz").write_bytes(b"changed")
    with pytest.raises(StagedxError, match="sha256 mismatch"):
        load_manifest(copy)
    (copy / "reference.npz").unlink()
    with pytest.raises(StagedxError, match="missing"):
        load_manifest(copy)


def test_update_manifest_replaces_top_level_fields(tiny_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    new = update_manifest(copy, tuning={"cpu|onnxruntime|1": {"budget": 16}})
    assert load_manifest(copy).tuning == new.tuning == {"cpu|onnxruntime|1": {"budget": 16}}
    assert load_manifest(copy).oracle == load_manifest(tiny_bundle).oracle


@pytest.mark.parametrize("change,match", [
    (lambda d: d.update(schema_version=99), "newer than this stagedx"),
    (lambda d: d.pop("schema_version"), "not a stagedx bundle"),
    (lambda d: d["models"].pop("draft"), "malformed"),
    (lambda d: d["models"]["oracle"]["arch"].pop("n_heads"), "malformed"),
])
def test_bad_manifests_are_refused(tmp_path, change, match):
    d = _sample().to_dict()
    change(d)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    with pytest.raises(StagedxError, match=match):
        load_manifest(tmp_path, check_files=False)


def test_not_a_bundle(tmp_path):
    with pytest.raises(StagedxError, match="not found"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(StagedxError, match="no manifest.json"):
        load_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(StagedxError, match="cannot read"):
        load_manifest(tmp_path)


def test_atomic_folder(tmp_path):
    target = tmp_path / "out"
    with AtomicFolder(target) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "manifest.json").write_text('{"schema_version": 1, "models": {}}')  # a bundle: --force may replace it
        assert not target.exists()
    assert (target / "a").read_text() == "1"
    with pytest.raises(StagedxError, match="output exists"):
        with AtomicFolder(target):
            pass
    with pytest.raises(RuntimeError):
        with AtomicFolder(target, force=True) as tmp:
            (tmp / "b").write_text("2")
            raise RuntimeError
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in target.iterdir()) == ["a", "manifest.json"]
    with AtomicFolder(target, force=True) as tmp:
        (tmp / "b").write_text("2")
    assert [p.name for p in target.iterdir()] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_frozen():
    m = _sample()
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.oracle.topk = 3  # type: ignore[misc]


def test_written_files_follow_the_umask_not_mkstemp(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        with AtomicFolder(tmp_path / "out") as tmp:
            write_manifest(tmp, _sample())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / MANIFEST_NAME).stat().st_mode) == 0o644


def _quant_record(**changes) -> dict:
    from stagedx.manifest import QuantEntry

    q = QuantEntry(method="matmul-nbits", bits=4, block_size=32, symmetric=False, accuracy_level=4,
                   ops=("MatMul", "Gather"), tool="onnxruntime", fp32_weight_bytes=9999,
                   agreement=0.95, max_rel_error=0.05, min_agreement=0.85, n_tokens=1024, heldout="x")
    return {**dataclasses.asdict(q), **changes}


def test_quantization_round_trips_and_older_manifests_read_as_unquantized(tmp_path):
    from stagedx.manifest import QuantEntry

    d = _sample().to_dict()
    assert d["models"]["oracle"]["quantization"] is None
    del d["models"]["draft"]["quantization"]  # a manifest written before the field existed
    d["models"]["oracle"]["quantization"] = _quant_record()
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    m = load_manifest(tmp_path, check_files=False)
    assert m.draft.quantization is None
    q = m.oracle.quantization
    assert isinstance(q, QuantEntry) and q.kind == "int4" and q.ops == ("MatMul", "Gather")
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m


@pytest.mark.parametrize("change,match", [
    ({"bits": 3}, "invalid quantization record"),
    ({"block_size": 24}, "invalid quantization record"),
    ({"agreement": 1.5}, "invalid quantization record"),
    ({"surprise": 1}, "malformed"),
])
def test_bad_quantization_records_are_refused(tmp_path, change, match):
    d = _sample().to_dict()
    d["models"]["oracle"]["quantization"] = _quant_record(**change)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    with pytest.raises(StagedxError, match=match):
        load_manifest(tmp_path, check_files=False)
