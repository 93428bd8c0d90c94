"""``stagedx export`` / ``stagedx inspect`` through ``stagedx.cli.main``: bad input gives one
line and exit code 2; success writes a bundle; --force, --no-verify, fp16."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _models import make_gpt2_checkpoint

import stagedx.cli as top
from stagedx.export import cli as export_cli
from stagedx.manifest import load_manifest


def _register_export_only() -> None:
    for command in export_cli.COMMANDS:
        top.cli.add_command(command)


def run_main(monkeypatch, capsys, args):
    """Call stagedx.cli.main; registers the real stages when they import, else export only."""
    try:
        top._register()
    except ImportError:  # another stage's cli module not written yet
        monkeypatch.setattr(top, "_register", _register_export_only)
    with pytest.raises(SystemExit) as exc:
        top.main([str(a) for a in args])
        raise SystemExit(0)
    cap = capsys.readouterr()
    return exc.value.code, cap.out, cap.err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_export_command_is_registered_in_the_top_level_cli():
    assert {c.name for c in export_cli.COMMANDS} == {"export", "inspect", "distill", "distill-targets"}
    src = Path(top.__file__).read_text()
    assert "export import cli as export_cli" in src


def test_missing_oracle_path(tiny_pair, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch, capsys, ["export", tmp_path / "nope", "--draft", tiny_pair.draft, "-o", tmp_path / "b"]
    )
    assert_one_line_error(code, err, "not found", "nope")


def test_hub_id_not_in_local_cache_names_what_was_looked_for(tiny_pair, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch, capsys, ["export", "someorg/no-such-model-xyz", "--draft", tiny_pair.draft, "-o", tmp_path / "b"]
    )
    assert_one_line_error(code, err, "someorg/no-such-model-xyz", "local Hugging Face cache")


def test_not_a_checkpoint(tiny_pair, tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_main(
        monkeypatch, capsys, ["export", tiny_pair.oracle, "--draft", tmp_path / "empty", "-o", tmp_path / "b"]
    )
    assert_one_line_error(code, err, "not a checkpoint", "config.json")


def test_unsupported_architecture_lists_the_supported_ones(tiny_pair, tmp_path, monkeypatch, capsys):
    ck = tmp_path / "mamba"
    shutil.copytree(tiny_pair.oracle, ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (ck / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_main(monkeypatch, capsys, ["export", ck, "--draft", tiny_pair.draft, "-o", tmp_path / "b"])
    assert_one_line_error(code, err, "unsupported architecture 'mamba'", "gpt2", "llama")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_weights(tiny_pair, tmp_path, monkeypatch, capsys, damage):
    ck = tmp_path / "bad"
    shutil.copytree(tiny_pair.oracle, ck)
    w = ck / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    code, _, err = run_main(monkeypatch, capsys, ["export", ck, "--draft", tiny_pair.draft, "-o", tmp_path / "b"])
    assert_one_line_error(code, err, "corrupt", str(ck))
    assert not (tmp_path / "b").exists()


def test_vocab_mismatch_is_refused(tiny_pair, tmp_path, monkeypatch, capsys):
    small = make_gpt2_checkpoint(tmp_path / "small", vocab=32)
    code, _, err = run_main(monkeypatch, capsys, ["export", tiny_pair.oracle, "--draft", small, "-o", tmp_path / "b"])
    assert_one_line_error(code, err, "vocabulary mismatch")


def test_same_vocab_size_different_tokenizer_is_refused(tiny_pair, tmp_path, monkeypatch, capsys):
    ck = tmp_path / "other_tok"
    shutil.copytree(tiny_pair.draft, ck)
    tok = json.loads((ck / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (ck / "tokenizer.json").write_text(json.dumps(tok))
    code, _, err = run_main(monkeypatch, capsys, ["export", tiny_pair.oracle, "--draft", ck, "-o", tmp_path / "b"])
    assert_one_line_error(code, err, "vocabulary mismatch", "tokenizer.json")


def test_unwritable_output(tiny_pair, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, _, err = run_main(
        monkeypatch, capsys, ["export", tiny_pair.oracle, "--draft", tiny_pair.draft, "-o", blocker / "bundle"]
    )
    assert_one_line_error(code, err, str(blocker))


def test_output_parents_are_created(tiny_pair, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch,
        capsys,
        [
            "export",
            tiny_pair.oracle,
            "--draft",
            tiny_pair.draft,
            "-o",
            tmp_path / "no" / "such" / "bundle",
            "--no-verify",
        ],
    )
    assert code == 0, err
    assert (tmp_path / "no" / "such" / "bundle" / "manifest.json").is_file()


def test_output_parent_is_a_file(tiny_pair, tmp_path, monkeypatch, capsys):
    (tmp_path / "file").write_text("x")
    code, _, err = run_main(
        monkeypatch,
        capsys,
        ["export", tiny_pair.oracle, "--draft", tiny_pair.draft, "-o", tmp_path / "file" / "bundle"],
    )
    assert_one_line_error(code, err, "cannot create the output's parent folder")


def test_ngram_without_corpus_is_an_error(tiny_pair, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch,
        capsys,
        ["export", tiny_pair.oracle, "--draft", tiny_pair.draft, "--draft2", "ngram", "-o", tmp_path / "b"],
    )
    assert_one_line_error(code, err, "--corpus")


def test_missing_corpus_path(tiny_pair, tmp_path, monkeypatch, capsys):
    code, _, err = run_main(
        monkeypatch,
        capsys,
        [
            "export",
            tiny_pair.oracle,
            "--draft",
            tiny_pair.draft,
            "--corpus",
            tmp_path / "nocorpus",
            "-o",
            tmp_path / "b",
        ],
    )
    assert_one_line_error(code, err, "corpus path not found")


def test_existing_output_refused_without_force_then_replaced_with_it(tiny_pair, tmp_path, monkeypatch, capsys):
    out = tmp_path / "b"
    out.mkdir()
    (out / "old.txt").write_text("old")
    args = ["export", tiny_pair.oracle, "--draft", tiny_pair.draft, "-o", out]
    code, _, err = run_main(monkeypatch, capsys, args)
    assert_one_line_error(code, err, "output exists", "--force")
    assert (out / "old.txt").read_text() == "old"
    (out / "manifest.json").write_text('{"schema_version": 1, "models": {}}')  # an (old) bundle: replaceable
    code, stdout, err = run_main(monkeypatch, capsys, args + ["--force", "--no-verify", "--topk", "8"])
    assert code == 0, err
    assert not (out / "old.txt").exists()
    m = load_manifest(out)
    assert m.oracle.verify is None and m.oracle.topk == 8
    assert m.draft2.kind == "prompt-lookup" and m.draft2.ngram is None
    assert (out / "reference.npz").is_file()  # still written: `stagedx validate` needs it
    assert "exported" in stdout
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_fp16_export_verifies_and_bakes_the_dtype(tiny_pair, tmp_path, monkeypatch, capsys):
    import onnxruntime as ort

    out = tmp_path / "b16"
    code, _, err = run_main(
        monkeypatch, capsys, ["export", tiny_pair.oracle, "--draft", tiny_pair.draft, "--dtype", "fp16", "-o", out]
    )
    assert code == 0, err
    m = load_manifest(out)
    for e in m.models.values():
        assert e.dtype == "fp16" and 0 < e.verify["max_rel_error"] <= 2e-2
        assert e.weight_bytes == 2 * e.n_params
    sess = ort.InferenceSession(str(out / "oracle.onnx"), providers=["CPUExecutionProvider"])
    types = {i.name: i.type for i in sess.get_inputs()} | {o.name: o.type for o in sess.get_outputs()}
    assert types["past_key.0"] == types["logits"] == types["topk_values"] == "tensor(float16)"
    assert "max logit error" in err


def test_inspect_prints_a_readable_summary(tiny_bundle, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, ["inspect", tiny_bundle])
    assert code == 0, err
    m = load_manifest(tiny_bundle)
    assert "oracle.onnx" in out and "draft.onnx" in out and "prompt-lookup" in out
    assert f"{m.oracle.arch.n_layers} layers" in out and "vocab 8192" in out
    assert "sha256 ok" in out and "verified" in out


def test_inspect_reports_a_modified_file(tiny_bundle, tmp_path, monkeypatch, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bundle, copy)
    with open(copy / "draft.onnx", "ab") as f:
        f.write(b"\0")
    code, out, _ = run_main(monkeypatch, capsys, ["inspect", copy])
    assert code == 2 and "PROBLEM" in out and "draft.onnx" in out  # the summary, then exit 2


def test_inspect_not_a_bundle(tmp_path, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, ["inspect", tmp_path])
    assert_one_line_error(code, err, "not a stagedx bundle")


def test_debug_shows_the_traceback(tmp_path):
    """--debug in a real subprocess of the CLI (whatever stages are registered there)."""
    code = (
        "import sys, stagedx.cli as c\n"
        "from stagedx.export import cli as e\n"
        "try:\n    c._register()\nexcept ImportError:\n"
        "    c._register = lambda: [c.cli.add_command(x) for x in e.COMMANDS]\n"
        "c.main(sys.argv[1:])\n"
    )
    args = [
        sys.executable,
        "-c",
        code,
        "export",
        str(tmp_path / "x"),
        "--draft",
        str(tmp_path / "y"),
        "-o",
        str(tmp_path / "b"),
    ]
    plain = subprocess.run(args, capture_output=True, text=True, timeout=60)
    debug = subprocess.run(args + ["--debug"], capture_output=True, text=True, timeout=60)
    assert plain.returncode == debug.returncode == 2
    assert "Traceback" not in plain.stderr and "Traceback" in debug.stderr
