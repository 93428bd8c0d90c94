"""The bundle contract: manifest round trip, integrity checks, schema versions, atomic writes."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from stagedx.errors import StagedxError
from stagedx.files import AtomicFolder
from stagedx.manifest import (
    DEFAULT_IO,
    MANIFEST_NAME,
    ArchDims,
    Draft2Entry,
    EngineEntry,
    GraphIO,
    Manifest,
    ModelEntry,
    NgramEntry,
    ReferenceEntry,
    TokenizerEntry,
    TuningEntry,
    TuningKey,
    find_tuning,
    load_manifest,
    update_manifest,
    write_manifest,
)


def _sample() -> Manifest:
    arch = ArchDims("gpt2", 2, 4, 4, 8, 32, 100, 64)

    def model(role: str) -> ModelEntry:
        return ModelEntry(
            role=role,
            file=f"{role}.onnx",
            sha256="a" * 64,
            dtype="fp16",
            topk=8,
            arch=arch,
            n_params=1234,
            weight_bytes=2468,
            source={"checkpoint": "x", "model_type": "gpt2"},
            verify={"max_rel_error": 1e-3, "tolerance": 2e-2},
        )

    return Manifest(
        tokenizer=TokenizerEntry("tokenizer.json", "b" * 64, 0, None, 100),
        models={"oracle": model("oracle"), "draft": model("draft")},
        draft2=Draft2Entry("both", NgramEntry("draft2_ngram.npz", "c" * 64, 3, 12, 999, ("stdlib",))),
        stagedx_version="0.1.0",
        created_utc="2026-01-01T00:00:00Z",
        reference=ReferenceEntry("reference.npz", "d" * 64, {"fp32": 1e-4}),
        engines=(EngineEntry(file="engines/x.plan", sha256="e" * 64),),
        tuning={"cpu|onnxruntime|2": TuningEntry(other={"n": 1})},
    )


def test_round_trip_through_json(tmp_path):
    m = _sample()
    write_manifest(tmp_path, m)
    back = load_manifest(tmp_path, check_files=False)
    assert back == m
    assert back.oracle.io_name("past_key", 3) == "past_key.3" and back.reserved_slots("tensorrt") == 1
    assert [f.file for f in back.files()] == [
        "tokenizer.json",
        "oracle.onnx",
        "draft.onnx",
        "draft2_ngram.npz",
        "reference.npz",
        "engines/x.plan",
    ]
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
    new = update_manifest(copy, tuning={"cpu|onnxruntime|1": TuningEntry.from_dict({"budget": 16})})
    assert load_manifest(copy).tuning == new.tuning == {"cpu|onnxruntime|1": TuningEntry(other={"budget": 16})}
    assert json.loads((copy / MANIFEST_NAME).read_text())["tuning"] == {"cpu|onnxruntime|1": {"budget": 16}}
    assert load_manifest(copy).oracle == load_manifest(tiny_bundle).oracle


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda d: d.update(schema_version=99), "newer than this stagedx"),
        (lambda d: d.pop("schema_version"), "not a stagedx bundle"),
        (lambda d: d["models"].pop("draft"), "malformed"),
        (lambda d: d["models"]["oracle"]["arch"].pop("n_heads"), "malformed"),
    ],
)
def test_bad_manifests_are_refused(tmp_path, change, match):
    d = _sample().to_dict()
    change(d)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    with pytest.raises(StagedxError, match=match):
        load_manifest(tmp_path, check_files=False)


def test_add_bos_token_is_written_only_when_true_and_older_manifests_read_false(tmp_path):
    d = _sample().to_dict()
    assert "add_bos_token" not in d["tokenizer"]  # a bundle without it reads in older stagedx too
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    assert load_manifest(tmp_path, check_files=False).tokenizer.add_bos_token is False
    m = dataclasses.replace(
        _sample(), tokenizer=TokenizerEntry("tokenizer.json", "b" * 64, 0, 5, 100, add_bos_token=True)
    )
    assert m.to_dict()["tokenizer"]["add_bos_token"] is True
    write_manifest(tmp_path, m)
    assert load_manifest(tmp_path, check_files=False) == m


@pytest.mark.parametrize(
    "tokenizer,match",
    [
        ({"add_bos_token": "yes", "bos_token_id": 5}, "add_bos_token must be true or false"),
        ({"add_bos_token": True, "bos_token_id": None}, r"bos_token_id must be a token id \(add_bos_token"),
    ],
)
def test_bad_add_bos_token_is_refused(tmp_path, tokenizer, match):
    d = _sample().to_dict()
    d["tokenizer"].update(tokenizer)
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
    with pytest.raises(StagedxError, match="output exists"), AtomicFolder(target):
        pass
    with pytest.raises(RuntimeError), AtomicFolder(target, force=True) as tmp:
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

    q = QuantEntry(
        method="matmul-nbits",
        bits=4,
        block_size=32,
        symmetric=False,
        accuracy_level=4,
        ops=("MatMul", "Gather"),
        tool="onnxruntime",
        fp32_weight_bytes=9999,
        agreement=0.95,
        max_rel_error=0.05,
        min_agreement=0.85,
        n_tokens=1024,
        heldout="x",
    )
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


@pytest.mark.parametrize(
    "change,match",
    [
        ({"bits": 3}, "invalid quantization record"),
        ({"block_size": 24}, "invalid quantization record"),
        ({"agreement": 1.5}, "invalid quantization record"),
        ({"surprise": 1}, "malformed"),
    ],
)
def test_bad_quantization_records_are_refused(tmp_path, change, match):
    d = _sample().to_dict()
    d["models"]["oracle"]["quantization"] = _quant_record(**change)
    (tmp_path / MANIFEST_NAME).write_text(json.dumps(d))
    with pytest.raises(StagedxError, match=match):
        load_manifest(tmp_path, check_files=False)


def test_typed_entries_write_back_the_keys_they_were_read_with():
    engine = {
        "role": "oracle",
        "file": "engines/o.plan",
        "sha256": "e" * 64,
        "tensorrt_version": "10.9.0",
        "gpu_name": "G",
        "compute_capability": "9.0",
        "precision": "fp16",
        "max_tree": 8,
        "max_context": 64,
        "reserved_slots": 1,
        "profiles": [{"input_ids": {"min": [1], "opt": [4], "max": [8]}}],
        "built_utc": "2026-01-01T00:00:00Z",
        "future_field": [1],
    }
    e = EngineEntry.from_dict(engine)
    assert (e.role, e.max_tree, e.reserved_slots, e.other) == ("oracle", 8, 1, {"future_field": [1]})
    assert json.dumps(e.to_dict()) == json.dumps(engine)
    assert EngineEntry.from_dict({"file": "a", "sha256": "b"}).to_dict() == {"file": "a", "sha256": "b"}
    ref = {"file": "reference.npz", "sha256": "d" * 64, "tolerance": {"fp32": 1e-4, "fp16": 2e-2}}
    assert json.dumps(ReferenceEntry.from_dict(ref).to_dict()) == json.dumps(ref)
    tuned = {
        "greedy": {"budget": 16, "three_stage": {"budget": 4}},
        "tuned_utc": "t",
        "past_len": 8,
        "oracle_latency_s": {"1": 0.1},
        "in_loop_factors": {"oracle": 1.0, "draft": 1.0},
    }
    t = TuningEntry.from_dict(tuned)
    assert json.dumps(t.to_dict()) == json.dumps(tuned)
    assert t.modes() == {"greedy": tuned["greedy"]} and t.three_stage("greedy") == {"budget": 4}
    assert t.three_stage("sample") is None and t.past_len == 8 and "sample" not in t.modes()


def test_reference_tolerance_per_precision():
    assert ReferenceEntry("r", "s", {"fp32": 1e-3}).tolerance_for("fp32") == 1e-3
    assert ReferenceEntry("r", "s", {"fp32": 1e-3}).tolerance_for("int4") == 2e-2
    assert ReferenceEntry("r", "s", 5e-4).tolerance_for("fp32") == 5e-4
    assert ReferenceEntry("r", "s", 5e-4).tolerance_for("fp16") == 2e-2


def test_tuning_key_builder_parser_and_nearest_thread_lookup():
    from stagedx.manifest import parse_tuning_key, tuning_key

    assert tuning_key("cpu", "onnxruntime", None) == "cpu|onnxruntime|0"
    assert parse_tuning_key("cuda:0|tensorrt|4") == TuningKey("cuda:0", "tensorrt", 4)
    assert str(parse_tuning_key(tuning_key("cpu", "onnxruntime", 8))) == "cpu|onnxruntime|8"
    for bad in ("cpu|onnxruntime", "cpu|onnxruntime|x", "cpu|onnxruntime|\u00b2", "a|b|1|2", 3):
        with pytest.raises(StagedxError, match="tuning key"):
            parse_tuning_key(bad)
    entries = {
        k: TuningEntry(other={"k": k})
        for k in ("cpu|onnxruntime|2", "cpu|onnxruntime|6", "cuda:0|onnxruntime|4", "cpu|tensorrt|4")
    }

    def pick(threads):
        return find_tuning(entries, "cpu", "onnxruntime", threads).other["k"]

    assert pick(2) == "cpu|onnxruntime|2" and pick(6) == "cpu|onnxruntime|6"
    assert pick(4) == "cpu|onnxruntime|6"  # a tie goes to the larger count
    assert pick(3) == "cpu|onnxruntime|2" and pick(None) == "cpu|onnxruntime|2" and pick(64) == "cpu|onnxruntime|6"
    assert find_tuning(entries, "cuda:1", "onnxruntime", 4) is None  # never another device's


def test_graph_io_is_the_one_ordered_list_of_names():
    io = GraphIO.from_io(DEFAULT_IO, 2)
    assert io.inputs == (
        "input_ids",
        "position_ids",
        "tree_mask",
        "past_key.0",
        "past_value.0",
        "past_key.1",
        "past_value.1",
    )
    assert io.outputs == (
        "logits",
        "topk_values",
        "topk_indices",
        "new_key.0",
        "new_value.0",
        "new_key.1",
        "new_value.1",
    )
    entry = _sample().oracle
    assert entry.graph_io.past_key[1] == entry.io_name("past_key", 1) and len(entry.graph_io.new_value) == 2
