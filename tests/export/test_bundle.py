"""export_bundle: manifest contents, atomic writes, draft2 kinds, external data, registry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from stagedx.errors import StagedxError
from stagedx.export import arch, bundle, onnx_export
from stagedx.export.bundle import ExportConfig, export_bundle
from stagedx.export.verify import run_onnx
from stagedx.files import sha256_file
from stagedx.manifest import DEFAULT_IO, load_manifest
from stagedx.numerics import rel_error


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_manifest_is_complete(tiny_bundle, tiny_pair):
    m = load_manifest(tiny_bundle)  # also checks every sha256
    cfg = json.loads((tiny_pair.oracle / "config.json").read_text())
    assert m.schema_version == 1 and m.stagedx_version and m.created_utc.endswith("Z")
    assert m.tokenizer.vocab_size == 8192 and m.tokenizer.eos_token_id == cfg["eos_token_id"] == 0
    assert (tiny_bundle / "tokenizer.json").read_bytes() == (tiny_pair.oracle / "tokenizer.json").read_bytes()
    assert m.kv_reserved_slots == {"onnxruntime": 0, "tensorrt": 1}
    assert m.draft2.kind == "prompt-lookup" and m.draft2.ngram is None
    assert m.engines == () and m.tuning == {}
    o = m.oracle
    assert (o.arch.family, o.arch.n_layers, o.arch.n_heads, o.arch.hidden) == ("gpt2", 2, 2, 32)
    assert (o.arch.head_dim, o.arch.n_kv_heads, o.arch.vocab_size, o.arch.max_positions) == (16, 2, 8192, 256)
    # n_params: wte + wpe + 2 blocks + ln_f (tied head counted once)
    e, v, n = 32, 8192, 256
    block = 2 * 2 * e + (e * 3 * e + 3 * e) + (e * e + e) + (e * 4 * e + 4 * e) + (4 * e * e + e)
    assert o.n_params == v * e + n * e + 2 * block + 2 * e
    assert o.weight_bytes == 4 * o.n_params
    assert o.source == {"checkpoint": str(tiny_pair.oracle), "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}
    assert o.io == DEFAULT_IO and o.opset == 18 and o.topk == 32 and o.dtype == "fp32"
    assert o.external_data is None
    assert m.draft.source["checkpoint"] == str(tiny_pair.draft)
    assert sorted(p.name for p in tiny_bundle.iterdir()) == [
        "draft.onnx",
        "manifest.json",
        "oracle.onnx",
        "reference.npz",
        "tokenizer.json",
    ]


def test_self_draft_and_small_vocab_bundles(self_draft_bundle, small_vocab_bundle):
    m = load_manifest(self_draft_bundle)
    assert m.oracle.sha256 == m.draft.sha256  # the draft is an exact copy of the oracle
    s = load_manifest(small_vocab_bundle)
    assert s.tokenizer.vocab_size == 32 and s.oracle.arch.vocab_size == 32 and s.oracle.topk == 32
    ref = np.load(small_vocab_bundle / "reference.npz")
    p = np.exp(ref["oracle.logits"] - ref["oracle.logits"].max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert 0.15 < p.max(1).mean() < 0.9  # sharpened but not one-hot
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(small_vocab_bundle / "tokenizer.json"))
    assert tok.decode(tok.encode("def f(x):\n    return x").ids) == "def f(x):\n    return x"
    assert tok.token_to_id("<|endoftext|>") == 0


@pytest.mark.parametrize("exc", [StagedxError("boom"), KeyboardInterrupt()])
def test_failed_or_interrupted_export_leaves_nothing(tiny_pair, tmp_path, monkeypatch, exc):
    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(bundle, "verify_graph", fail)
    out = tmp_path / "b"
    with pytest.raises(type(exc)):
        export_bundle(ExportConfig(oracle=str(tiny_pair.oracle), draft=str(tiny_pair.draft), output=out))
    assert _leftovers(tmp_path) == []


def test_failed_force_export_keeps_the_old_bundle(tiny_bundle, tiny_pair, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "b"
    shutil.copytree(tiny_bundle, out)
    before = sha256_file(out / "manifest.json")
    monkeypatch.setattr(bundle, "verify_graph", lambda *a, **k: (_ for _ in ()).throw(StagedxError("x")))
    with pytest.raises(StagedxError):
        export_bundle(ExportConfig(oracle=str(tiny_pair.oracle), draft=str(tiny_pair.draft), output=out, force=True))
    assert sha256_file(out / "manifest.json") == before
    assert _leftovers(tmp_path) == ["b"]


def test_verification_failure_is_reported(tiny_pair, tmp_path, monkeypatch):
    """A graph that is wrong (here: a broken mask fill) fails export and leaves nothing."""
    from stagedx.export import attention

    monkeypatch.setattr(attention, "MASK_FILL", dict.fromkeys(attention.MASK_FILL, 0.0))  # mask ignored
    with pytest.raises(StagedxError, match=r"oracle failed verification: max logit error .* exceeds"):
        export_bundle(ExportConfig(oracle=str(tiny_pair.oracle), draft=str(tiny_pair.draft), output=tmp_path / "b"))
    assert _leftovers(tmp_path) == []


def test_external_data_when_weights_pass_the_limit(tiny_pair, tmp_path, monkeypatch):
    import os
    import stat

    monkeypatch.setattr(onnx_export, "EXTERNAL_FROM", 1 << 16)  # pretend 64 KB is big
    old_umask = os.umask(0o022)
    try:
        out = export_bundle(
            ExportConfig(oracle=str(tiny_pair.oracle), draft=str(tiny_pair.draft), output=tmp_path / "b", topk=4)
        )
    finally:
        os.umask(old_umask)
    m = load_manifest(out)
    for role, e in m.models.items():
        assert e.external_data is not None and e.external_data.file == f"{role}.onnx.data"
        size = (out / e.external_data.file).stat().st_size
        assert e.weight_bytes <= size < e.weight_bytes + 64 * 64  # every tensor, 64-byte aligned
        assert (out / e.file).stat().st_size < 100_000
        assert e.verify["max_rel_error"] < 1e-4
    assert _leftovers(tmp_path) == ["b"]
    assert not (out / ".work").exists()
    # every bundle file is readable by others (the external data file was once 0600)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
    assert "oracle.onnx.data" in modes and set(modes.values()) == {0o644}, modes


def test_ngram_draft2(tiny_pair, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 20)
    (tmp_path / "skip.json").write_text(json.dumps(["m2.py"]))
    out = export_bundle(
        ExportConfig(
            oracle=str(tiny_pair.oracle),
            draft=str(tiny_pair.draft),
            output=tmp_path / "b",
            corpus=(corpus,),
            verify=False,
            exclude_from=tmp_path / "skip.json",
            draft2="both",
        )
    )
    m = load_manifest(out)
    assert m.draft2.kind == "both" and m.draft2.ngram is not None
    assert m.draft2.ngram.file == "draft2_ngram.npz" and m.draft2.ngram.order == 3
    assert m.draft2.ngram.n_tokens > 0
    assert "(2 files)" in m.draft2.ngram.corpus[0]  # m2.py left out by --exclude-from
    with np.load(out / "draft2_ngram.npz", allow_pickle=False) as z:
        assert int(z["vocab_size"]) == 8192


def test_corpus_defaults_draft2_to_ngram_and_bad_exclude_is_refused(tiny_pair, tmp_path):
    cfg = ExportConfig(
        oracle=str(tiny_pair.oracle), draft=str(tiny_pair.draft), output=tmp_path / "b", corpus=(tmp_path,)
    )
    assert cfg.draft2_kind() == "ngram"
    (tmp_path / "bad.json").write_text('{"not": "a list"}')
    with pytest.raises(StagedxError, match="JSON list"):
        export_bundle(
            ExportConfig(
                oracle=str(tiny_pair.oracle),
                draft=str(tiny_pair.draft),
                output=tmp_path / "b",
                corpus=(tmp_path,),
                exclude_from=tmp_path / "bad.json",
            )
        )


def test_registry_knows_gpt2_and_a_new_entry_plugs_in(tiny_pair, tmp_path, monkeypatch):
    assert "gpt2" in arch.supported()
    ckpt = arch.open_checkpoint(str(tiny_pair.oracle))
    assert ckpt.spec.family == "gpt2" and ckpt.dims.head_dim == 16
    # a second model_type registered by one ArchSpec is exported by the unchanged pipeline
    import shutil

    other = tmp_path / "distil"
    shutil.copytree(tiny_pair.oracle, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["model_type"] = "my-gpt2-variant"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StagedxError, match="supported model types: .*gpt2"):
        arch.open_checkpoint(str(other))
    monkeypatch.setitem(arch.REGISTRY, "my-gpt2-variant", arch.REGISTRY["gpt2"])
    assert "my-gpt2-variant" in arch.supported()
    c = arch.open_checkpoint(str(other))
    assert c.spec is arch.REGISTRY["gpt2"]


@pytest.mark.slow
def test_exported_bundle_runs_with_the_numbers_from_the_vendored_pair(pair_bundle):
    m = load_manifest(pair_bundle)
    assert (m.oracle.arch.n_layers, m.oracle.arch.hidden) == (6, 384)
    assert (m.draft.arch.n_layers, m.draft.arch.hidden) == (2, 192)
    assert m.oracle.verify["max_rel_error"] < 1e-4 and m.draft.verify["max_rel_error"] < 1e-4
    ref = np.load(pair_bundle / "reference.npz")
    feeds = {k.split(".", 1)[1]: ref[k] for k in ref.files if k.startswith("draft.") and "logits" not in k}
    out = run_onnx(pair_bundle / "draft.onnx", feeds)
    assert rel_error(out["logits"], ref["draft.logits"]) < 1e-4


pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
