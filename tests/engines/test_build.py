"""build-engine without TensorRT here: argument checks, error path, records, mismatch logic."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import stagedx.cli as top
from stagedx.engines import build as b
from stagedx.engines import cli as engines_cli
from stagedx.engines.profiles import ProfileSpec
from stagedx.errors import StagedxError
from stagedx.files import sha256_file
from stagedx.manifest import (
    ArchDims,
    Draft2Entry,
    EngineEntry,
    Manifest,
    ModelEntry,
    TokenizerEntry,
    load_manifest,
    write_manifest,
)
from stagedx.runtime.backends.trt import GpuInfo, engine_mismatch, select_engine

GPU = GpuInfo("NVIDIA L40S", "8.9")


def _entry(role: str, dtype="fp16", positions=512) -> ModelEntry:
    arch = ArchDims("gpt2", 2, 4, 4, 8, 32, 100, positions)
    return ModelEntry(
        role=role,
        file=f"{role}.onnx",
        sha256="0",
        dtype=dtype,
        topk=8,
        arch=arch,
        n_params=1,
        weight_bytes=2,
        source={},
    )


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A manifest-valid bundle (placeholder graph files: build stops before parsing them)."""
    models = {}
    for role in ("oracle", "draft"):
        (tmp_path / f"{role}.onnx").write_bytes(role.encode())
        e = _entry(role)
        models[role] = ModelEntry(**{**e.__dict__, "sha256": sha256_file(tmp_path / e.file)})
    (tmp_path / "tokenizer.json").write_text("{}")
    tok = TokenizerEntry("tokenizer.json", sha256_file(tmp_path / "tokenizer.json"), 0, 0, 100)
    write_manifest(tmp_path, Manifest(tokenizer=tok, models=models, draft2=Draft2Entry("none")))
    return tmp_path


def _cli(monkeypatch, capsys, args):
    """``stagedx.cli.main`` with this stage's commands registered."""

    def register():
        for c in engines_cli.COMMANDS:
            top.cli.add_command(c)

    monkeypatch.setattr(top, "_register", register)
    with pytest.raises(SystemExit) as info:
        top.main(args)
    out = capsys.readouterr()
    return info.value.code, out.err.strip().splitlines()


def test_build_engine_without_tensorrt_exits_2_with_one_clear_line(bundle, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError, anywhere
    code, err = _cli(monkeypatch, capsys, ["build-engine", str(bundle), "--max-tree", "8"])
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith("error: build-engine needs TensorRT")
    assert "pip install 'stagedx[trt]'" in err[0] and "NVIDIA GPU" in err[0]
    assert not (bundle / "engines").exists()
    assert load_manifest(bundle).engines == ()


def test_build_engine_without_cuda_python_names_it(bundle, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorrt", type(sys)("tensorrt"))
    for name in ("cuda", "cuda.bindings", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    code, err = _cli(monkeypatch, capsys, ["build-engine", str(bundle)])
    assert code == 2 and len(err) == 1
    assert "cuda-python" in err[0] and "pip install 'stagedx[trt]'" in err[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["--max-tree", "0"], "--max-tree must be at least 1"),
        (["--max-tree", "64", "--max-context", "32"], "cannot exceed"),
        (["--max-context", "4096"], "exceeds the model's 512 positions"),
        (["--workspace", "0"], "--workspace must be positive"),
    ],
)
def test_bad_arguments_are_reported_before_looking_for_tensorrt(bundle, monkeypatch, capsys, args, words):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, err = _cli(monkeypatch, capsys, ["build-engine", str(bundle), *args])
    assert code == 2 and len(err) == 1 and words in err[0]


def test_not_a_bundle(tmp_path, monkeypatch, capsys):
    code, err = _cli(monkeypatch, capsys, ["build-engine", str(tmp_path)])
    assert code == 2 and "not a stagedx bundle" in err[0]


def test_default_context_is_capped_by_the_model(bundle):
    spec = b.resolve_spec(b.BuildConfig(bundle=bundle, max_tree=16), load_manifest(bundle))
    assert spec == ProfileSpec(16, 512, 1)


def test_network_flags_strongly_typed_where_the_version_needs_it():
    assert b.network_flags("10.9.0.34", 2) == 1 << 2
    assert b.network_flags("11.1.0", 2) == 0  # always strongly typed, no flag needed
    assert b.network_flags("10.0.1", None) == 0


def test_engine_record_carries_what_the_runtime_checks_and_round_trips(bundle):
    entry = load_manifest(bundle).oracle
    spec = ProfileSpec(16, 256, 1)
    rel = b.engine_file_name("oracle", GPU, "10.9.0")
    assert rel == "engines/oracle.nvidia-l40s.sm89.trt10.9.0.plan"
    b.write_atomic(bundle / rel, b"plan-bytes")
    rec = b.engine_record(entry, spec, (rel, sha256_file(bundle / rel)), GPU, "10.9.0")
    assert rec.precision == "fp16"  # from the graph's dtype, not a builder flag
    assert (rec.gpu_name, rec.compute_capability, rec.tensorrt_version) == (GPU.name, "8.9", "10.9.0")
    assert (rec.max_tree, rec.max_context, rec.reserved_slots) == (16, 256, 1)
    prof = rec.profiles[0]
    assert prof["input_ids"] == {"min": [1], "opt": [16], "max": [16]}
    assert prof["past_value.1"]["max"] == [256, 4, 8]
    assert EngineEntry.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec  # manifest-serialisable

    from stagedx.manifest import update_manifest

    update_manifest(bundle, engines=tuple(b.merge_records((), [rec])))
    manifest = load_manifest(bundle)  # sha256 of the engine file is verified too
    assert select_engine(manifest, "oracle", GPU, "10.9.0") == rec
    assert engine_mismatch(rec, GpuInfo("NVIDIA A100-SXM4-80GB", "8.0"), "10.9.0") is not None
    assert "TensorRT 10.9.0" in engine_mismatch(rec, GPU, "10.10.0")
    (bundle / rel).write_bytes(b"tampered")
    with pytest.raises(StagedxError, match="sha256 mismatch"):
        load_manifest(bundle)


def test_merge_records_replaces_only_the_same_role_gpu_and_version():
    def rec(role, gpu, ver, tag):
        return EngineEntry.from_dict(
            {
                "file": "e.plan",
                "sha256": "0" * 64,
                "role": role,
                "gpu_name": gpu,
                "compute_capability": "8.9",
                "tensorrt_version": ver,
                "tag": tag,
            }
        )

    old = [rec("oracle", "L4", "10.9", 1), rec("draft", "L4", "10.9", 1), rec("oracle", "A10", "10.9", 1)]
    merged = b.merge_records(old, [rec("oracle", "L4", "10.9", 2)])
    assert sorted((r.role, r.gpu_name, r.other["tag"]) for r in merged) == [
        ("draft", "L4", 1),
        ("oracle", "A10", 1),
        ("oracle", "L4", 2),
    ]


def test_write_atomic_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "engines" / "x.plan"
    b.write_atomic(target, b"abc")
    b.write_atomic(target, b"def")
    assert target.read_bytes() == b"def"
    assert [p.name for p in target.parent.iterdir()] == ["x.plan"]


def test_quantized_models_are_refused_before_looking_for_tensorrt(bundle, monkeypatch, capsys):
    import dataclasses

    from stagedx.manifest import QuantEntry, update_manifest

    m = load_manifest(bundle)
    q = QuantEntry(
        method="matmul-nbits",
        bits=4,
        block_size=32,
        symmetric=False,
        accuracy_level=4,
        ops=("MatMul",),
        tool="onnxruntime",
        fp32_weight_bytes=8,
        agreement=1.0,
        max_rel_error=0.0,
        min_agreement=0.85,
        n_tokens=128,
    )
    update_manifest(bundle, models={**m.models, "oracle": dataclasses.replace(m.oracle, quantization=q)})
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, err = _cli(monkeypatch, capsys, ["build-engine", str(bundle)])
    assert code == 2 and len(err) == 1 and "oracle holds ONNX Runtime MatMulNBits weights" in err[0]
