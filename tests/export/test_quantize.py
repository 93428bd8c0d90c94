"""``export --quantize``: int8 / int4 bundles keep the graph contract, decode with staged greedy
equal to their own baseline, record the quantization, and a failed agreement check refuses
with nothing written."""

from __future__ import annotations

import numpy as np
import pytest

from stagedx.errors import StagedxError
from stagedx.export.bundle import ExportConfig, export_bundle
from stagedx.export.quantize import QuantizeOptions, initializer_bytes, parse_quantize
from stagedx.manifest import load_manifest
from tests.export.test_cli import assert_one_line_error, run_main
from tests.runtime.test_generator import PROMPTS, assert_same_greedy

HELDOUT = "def f(x):\n    return x + 1\n\n\nclass A:\n    def g(self, y):\n        return [y] * 2\n" * 12


@pytest.fixture(scope="module")
def heldout_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("heldout") / "heldout.py"
    path.write_text(HELDOUT)
    return path


def _quant(kinds: str, heldout, **kw) -> QuantizeOptions:
    return QuantizeOptions(kinds=parse_quantize(kinds), heldout=(str(heldout),), heldout_tokens=256, **kw)


@pytest.fixture(scope="module", params=["int8", "int4"])
def quant_bundle(request, tiny_pair, heldout_file, tmp_path_factory):
    from tests.conftest import _export

    out = tmp_path_factory.mktemp(f"quant_{request.param}") / "bundle"
    # random tiny weights give near-uniform logits: agreement is measured, not enforced here
    quant = _quant(request.param, heldout_file, min_agreement=0.0)
    return request.param, _export(tiny_pair.oracle, tiny_pair.draft, out, draft2="prompt-lookup", quantize=quant)


def _io(path):
    import onnx

    g = onnx.load(str(path)).graph

    def sig(vs):
        return [(v.name, v.type.tensor_type.elem_type) for v in vs]

    return sig(g.input), sig(g.output), {n.op_type for n in g.node}


def test_quantized_bundle_keeps_the_contract_and_records_the_quantization(quant_bundle, tiny_bundle):
    import onnx

    kind, bundle = quant_bundle
    bits = int(kind[3:])
    m, fp32 = load_manifest(bundle), load_manifest(tiny_bundle)  # load checks every sha256
    for role, e in m.models.items():
        q = e.quantization
        assert (q.kind, q.bits, q.method, q.block_size, q.accuracy_level) == (kind, bits, "matmul-nbits", 32, 4)
        assert q.ops == (("MatMul", "Gather") if bits == 4 else ("MatMul",))
        assert q.fp32_weight_bytes == fp32.models[role].weight_bytes
        assert 0.0 <= q.agreement <= 1.0 and q.n_tokens == 256 and q.max_rel_error > 0
        assert e.weight_bytes == initializer_bytes(onnx.load(str(bundle / e.file)))
        assert e.dtype == "fp32" and e.verify["max_rel_error"] < 1e-4  # the fp32 graph passed parity
        ins, outs, ops = _io(bundle / e.file)
        ins0, outs0, _ = _io(tiny_bundle / e.file)
        assert (ins, outs) == (ins0, outs0)  # same names and dtypes: tree mask, past KV, topk
        assert "MatMulNBits" in ops and ("GatherBlockQuantized" in ops) == (bits == 4)
    if bits == 4:  # every weight matrix is 4-bit + one fp32 scale and a zero point per 32;
        # the tied embedding is stored twice (Gather rows and the head's [E, V] layout)
        assert m.oracle.weight_bytes < 0.4 * m.oracle.quantization.fp32_weight_bytes
    ref = np.load(bundle / "reference.npz")
    assert ref["oracle.logits"].shape == np.load(tiny_bundle / "reference.npz")["oracle.logits"].shape


def test_quantized_bundle_decodes_and_staged_greedy_equals_its_own_baseline(quant_bundle):
    from stagedx.runtime import Generator

    _, bundle = quant_bundle
    gen = Generator(bundle, device="cpu", threads=1)
    for prompt in PROMPTS[:3]:
        res = assert_same_greedy(gen, prompt, 32)
        assert len(res["staged"].tokens) == 32


def test_quantized_logits_stay_near_fp32(quant_bundle, tiny_bundle):
    from stagedx.export.verify import run_onnx
    from stagedx.numerics import rel_error

    kind, bundle = quant_bundle
    ref = np.load(tiny_bundle / "reference.npz")
    feeds = {k[len("oracle.") :]: ref[k] for k in ref.files if k.startswith("oracle.") and k != "oracle.logits"}
    err = rel_error(run_onnx(bundle / "oracle.onnx", feeds)["logits"], ref["oracle.logits"])
    assert 0 < err < (0.05 if kind == "int8" else 0.5)


def test_impossible_threshold_refuses_and_leaves_nothing(tiny_pair, heldout_file, tmp_path):
    out = tmp_path / "b"
    with pytest.raises(StagedxError, match=r"oracle int4 refused: greedy agreement .* below --min-agreement 100"):
        export_bundle(
            ExportConfig(
                oracle=str(tiny_pair.oracle),
                draft=str(tiny_pair.draft),
                output=out,
                draft2="prompt-lookup",
                quantize=_quant("int4", heldout_file, min_agreement=1.0),
            )
        )
    assert list(tmp_path.iterdir()) == []


def test_cli_refusal_is_one_line(tiny_pair, heldout_file, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch,
        capsys,
        [
            "export",
            tiny_pair.oracle,
            "--draft",
            tiny_pair.draft,
            "--draft2",
            "none",
            "--quantize",
            "oracle=int4,draft=none",
            "--min-agreement",
            "1",
            "--heldout",
            heldout_file,
            "--heldout-tokens",
            "128",
            "-o",
            tmp_path / "b",
        ],
    )
    assert code == 2, err
    lines = err.strip().splitlines()  # progress lines, then one error line, no traceback
    assert lines[-1].startswith("error: oracle int4 refused") and "nothing written" in lines[-1]
    assert not any("Traceback" in ln or ln.startswith("error") for ln in lines[:-1])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--quantize", "int3"], "unknown kind 'int3'"),
        (["--quantize", "target=int4"], "unknown model 'target'"),
        (["--quantize", "oracle=int4,oracle=int8"], "oracle is named twice"),
        (["--quantize", "int4", "--quant-block-size", "24"], "power of two"),
        (["--quantize", "int4", "--min-agreement", "1.5"], "--min-agreement must be in [0, 1]"),
        (["--quantize", "int8", "--dtype", "fp16"], "--quantize needs --dtype fp32"),
        (["--quantize", "int8", "--heldout", "/no/such/file.py"], "not found"),
    ],
)
def test_bad_quantize_options(tiny_pair, tmp_path, monkeypatch, capsys, args, needle):
    code, _, err = run_main(
        monkeypatch, capsys, ["export", tiny_pair.oracle, "--draft", tiny_pair.draft, *args, "-o", tmp_path / "b"]
    )
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "b").exists()


def test_parse_quantize():
    assert parse_quantize(None) == ()
    assert parse_quantize("int8") == (("oracle", "int8"), ("draft", "int8"))
    assert parse_quantize("oracle=int4,draft=int8") == (("oracle", "int4"), ("draft", "int8"))
    assert parse_quantize("oracle=int4, draft=none") == (("oracle", "int4"),)


def test_bench_reports_the_quantization_and_its_roofline(quant_bundle, tmp_path):
    import json

    from tests.bench.test_bench_cli import invoke

    kind, bundle = quant_bundle
    out = tmp_path / "out"
    res = invoke(
        [
            "bench",
            str(bundle),
            "--limit",
            "2",
            "--max-new-tokens",
            "6",
            "--methods",
            "baseline,staged",
            "--sampling",
            "greedy",
            "--threads",
            "1",
            "--out",
            str(out),
        ]
    )
    m = load_manifest(bundle)
    data = json.loads((out / "bench.json").read_text())
    assert data["weights_bytes"]["oracle"] == m.oracle.weight_bytes  # the quantized graph's own bytes
    assert data["roofline"]["oracle_weight_bytes"] == m.oracle.weight_bytes
    assert data["quantization"]["oracle"]["bits"] == int(kind[3:])
    assert f"oracle {kind} matmul-nbits block 32" in res.output and "roofline:" in res.output


def test_quantized_graph_with_external_data(tiny_pair, heldout_file, tmp_path, monkeypatch):
    """Large graphs (here: every graph, the external-data threshold set to 1 byte) are read with their
    external data and written with their own; the fp32 data file does not survive."""
    from stagedx.export import onnx_export
    from stagedx.runtime import Generator

    monkeypatch.setattr(onnx_export, "EXTERNAL_FROM", 1)
    out = export_bundle(
        ExportConfig(
            oracle=str(tiny_pair.oracle),
            draft=str(tiny_pair.draft),
            output=tmp_path / "b",
            draft2="prompt-lookup",
            quantize=_quant("oracle=int8", heldout_file, min_agreement=0.0),
        )
    )
    m = load_manifest(out)
    assert m.oracle.external_data.file == "oracle.onnx.data" and m.oracle.quantization.bits == 8
    assert m.draft.quantization is None and m.draft.external_data.file == "draft.onnx.data"
    assert sorted(p.name for p in out.iterdir()) == [
        "draft.onnx",
        "draft.onnx.data",
        "manifest.json",
        "oracle.onnx",
        "oracle.onnx.data",
        "reference.npz",
        "tokenizer.json",
    ]
    assert (
        len(Generator(out, device="cpu", threads=1).generate("def f(x):", max_new_tokens=8, ignore_eos=True).tokens)
        == 8
    )


def test_validate_compares_onnxruntime_with_the_quantized_reference(quant_bundle):
    from stagedx.engines.validate import validate_bundle

    kind, bundle = quant_bundle
    checks = [c for c in validate_bundle(bundle) if c.backend == "onnxruntime"]
    assert checks and all(c.passed and c.tolerance == 2e-2 for c in checks)
    assert max(c.max_rel_error for c in checks) < 1e-5  # the same graph, the same kernels
