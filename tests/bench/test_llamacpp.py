"""llama.cpp peers: where the GGUF file comes from, why they are skipped, the sampler settings,
and (where llama-cpp-python and the SmolLM2 GGUF file are present) a real run."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import pytest

from stagedx.bench.llamacpp import gguf_source, sampler_kwargs, unavailable_reason
from stagedx.errors import StagedxError
from stagedx.manifest import load_manifest

SMOL = Path(os.environ.get("STAGEDX_CACHE", Path.home() / ".cache" / "stagedx")) / "smollm2"
SMOL_GGUF_CANDIDATES = [SMOL / "SmolLM2-135M-Instruct.Q4_1.gguf", Path("/work/cache/SmolLM2-135M-Instruct.Q4_1.gguf")]


def _with_source(manifest, source: dict):
    oracle = dataclasses.replace(manifest.models["oracle"], source=source)
    return dataclasses.replace(manifest, models={**manifest.models, "oracle": oracle})


def test_gguf_source(tiny_bundle, tmp_path, monkeypatch):
    manifest = load_manifest(tiny_bundle)
    assert gguf_source(manifest, tiny_bundle, None) is None  # exported from a checkpoint folder
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert gguf_source(manifest, tiny_bundle, str(f)) == f
    with pytest.raises(StagedxError, match="no such file"):
        gguf_source(manifest, tiny_bundle, str(tmp_path / "missing.gguf"))
    assert gguf_source(_with_source(manifest, {"checkpoint": str(f)}), tiny_bundle, None) == f
    monkeypatch.chdir(tmp_path)  # a recorded file name is looked for from the working directory
    gguf = {"file": "m.gguf", "sha256": "0" * 64}
    assert gguf_source(_with_source(manifest, {"checkpoint": "elsewhere", "gguf": gguf}), tiny_bundle, None).samefile(f)
    assert gguf_source(_with_source(manifest, {"gguf": {"file": "nope.gguf"}}), tiny_bundle, None) is None


def test_skipped_without_the_package_or_a_gguf(tiny_bundle, monkeypatch):
    manifest = load_manifest(tiny_bundle)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp raises ImportError
    assert "llama-cpp-python package is not installed" in unavailable_reason(manifest, tiny_bundle, None)
    monkeypatch.delitem(sys.modules, "llama_cpp")
    pytest.importorskip("llama_cpp")
    assert "no GGUF source" in unavailable_reason(manifest, tiny_bundle, None)


def test_sampler_settings():
    assert sampler_kwargs("greedy") == dict(min_p=0.0, typical_p=1.0, repeat_penalty=1.0, top_k=1, top_p=1.0, temp=0.0)
    k = sampler_kwargs("topk:50")
    assert (k["top_k"], k["top_p"], k["temp"], k["min_p"], k["repeat_penalty"]) == (50, 1.0, 1.0, 0.0, 1.0)
    assert sampler_kwargs("topp:0.9")["top_k"] == 0 and sampler_kwargs("topp:0.9")["top_p"] == 0.9


def test_bench_notes_a_skipped_llamacpp_peer(tiny_bundle, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from stagedx.cli import _register, cli

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    _register()
    out = tmp_path / "out"
    args = ["bench", str(tiny_bundle), "--limit", "1", "--max-new-tokens", "2", "--warmup", "0"]
    args += ["--sampling", "greedy", "--threads", "1", "--methods", "baseline,staged", "--peers", "llama.cpp"]
    res = CliRunner().invoke(cli, [*args, "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "llama.cpp peers skipped: the llama-cpp-python package is not installed" in res.output
    data = json.loads((out / "bench.json").read_text())
    assert data["config"]["peers"] == ["llama.cpp"] and not data["peer_records"]
    assert "not installed" in data["peers"]["families"]["llama.cpp"]["skipped"]


@pytest.mark.parametrize(
    "extra, message",
    [(["--gguf", "x.gguf"], "--gguf is for the llama.cpp peers"), (["--peers", "onnx"], "unknown --peers onnx")],
)
def test_bench_refuses_bad_peer_options(tiny_bundle, tmp_path, capsys, extra, message):
    from stagedx.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", str(tiny_bundle), *extra, "--out", str(tmp_path)])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def _smol():
    pytest.importorskip("llama_cpp")
    gguf = next((p for p in SMOL_GGUF_CANDIDATES if p.is_file()), None)
    tok = next((p for p in (Path("/work/cache/smollm2-135m-instruct/tokenizer.json"),) if p.is_file()), None)
    if gguf is None or tok is None:
        pytest.skip("needs the SmolLM2 GGUF file (tools/fetch_smollm2.sh) and its tokenizer.json")
    return gguf, tok


@pytest.mark.slow
def test_real_llamacpp_run():
    """Plain and prompt-lookup decode of the real file: exactly N tokens, the same greedy
    tokens, one decode call per token for plain decode, fewer with lookup on a repetitive
    prompt, prefill apart from decode."""
    from stagedx.bench.llamacpp import LlamaCppMethod, LlamaCppModel
    from stagedx.bench.prompts import Prompt
    from stagedx.runtime.tokenizer import Tokenizer

    gguf, tok_file = _smol()
    tok = Tokenizer(tok_file)
    model = LlamaCppModel(gguf, threads=2, n_ctx=256, vocab_size=tok.vocab_size)
    with_lookup = LlamaCppModel(gguf, threads=2, n_ctx=256, vocab_size=tok.vocab_size, lookup=True)
    info = model.info()
    assert info["gguf"] == str(gguf) and len(info["gguf_sha256"]) == 64
    prompt = Prompt("p", "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n    return a + b\n\n\ndef add(")
    n = 24
    assert LlamaCppMethod(model, tok, n).name == "llama.cpp"
    assert LlamaCppMethod(with_lookup, tok, n).name == "llama.cpp-lookup"
    plain = LlamaCppMethod(model, tok, n).run(prompt, "greedy", 0)
    lookup = LlamaCppMethod(with_lookup, tok, n).run(prompt, "greedy", 0)
    assert plain["new_tokens"] == lookup["new_tokens"] == n and plain["oracle_calls"] == n
    assert plain["tokens"] == lookup["tokens"]
    assert lookup["oracle_calls"] < n
    assert 0 < plain["time_s"]["prefill"] < plain["wall_s"]
    again = LlamaCppMethod(model, tok, n).run(prompt, "topk:50", 7)
    same = LlamaCppMethod(with_lookup, tok, n).run(prompt, "topk:50", 7)
    # seeded, and lookup keeps the sampled distribution: the same draws, the same tokens
    assert again["tokens"] == same["tokens"] and again["new_tokens"] == n
    with pytest.raises(StagedxError, match="does not fit"):
        LlamaCppMethod(model, tok, 300).run(prompt, "greedy", 0)
    with pytest.raises(StagedxError, match="not the same model"):
        LlamaCppModel(gguf, threads=1, n_ctx=64, vocab_size=tok.vocab_size + 1)
