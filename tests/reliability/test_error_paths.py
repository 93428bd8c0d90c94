"""Class 7: every error path is one line and exit 2, and nothing half-written is left."""

from __future__ import annotations

import os

import pytest

from stagedx.errors import StagedxError
from stagedx.runtime import Generator
from tests.reliability._util import (
    assert_one_line_error,
    copy_bundle,
    edit_manifest,
    read_manifest,
    replace_file,
    run_cli,
    write_manifest_dict,
)


@pytest.mark.parametrize(
    "content, needle",
    [(b"", "EOFError"), (b"PK\x03\x04truncated", "BadZipFile"), (b"not a zip at all", "draft2_ngram.npz")],
)
def test_empty_or_truncated_npz_is_one_line(ngram_bundle, tmp_path, capsys, content, needle):
    bundle = copy_bundle(ngram_bundle, tmp_path / "b")
    if content.startswith(b"PK"):
        content = (bundle / "draft2_ngram.npz").read_bytes()[:300]  # a real npz cut short
    edit_manifest(bundle, lambda d: replace_file(bundle, "draft2_ngram.npz", content, d["draft2"]["ngram"]))
    code, out, err = run_cli(capsys, ["generate", bundle, "def f(x):", "--threads", "1", "--max-new-tokens", "2"])
    assert_one_line_error(code, err, "draft2_ngram.npz")
    assert out == ""


@pytest.mark.parametrize(
    "data, needle",
    [([1, 2, 3], "JSON object"), ({"schema_version": 0}, "schema version 0"), ("just a string", "JSON object")],
)
def test_manifest_that_is_not_an_object_or_too_old(tiny_bundle, tmp_path, capsys, data, needle):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    write_manifest_dict(bundle, data)
    for args in (["generate", bundle, "x", "--threads", "1"], ["inspect", bundle]):
        code, _, err = run_cli(capsys, args)
        assert_one_line_error(code, err, needle)


def test_manifest_that_is_not_utf8(tiny_bundle, tmp_path, capsys):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    (bundle / "manifest.json").write_bytes(b'{"schema_version": 1, "x": "\xff"}')
    code, _, err = run_cli(capsys, ["inspect", bundle])
    assert_one_line_error(code, err, "manifest.json")


def test_negative_seed(tiny_bundle, capsys):
    code, _, err = run_cli(
        capsys, ["generate", tiny_bundle, "x", "--seed", "-1", "--sampling", "topk:5", "--threads", "1"]
    )
    assert_one_line_error(code, err, "--seed")
    with pytest.raises(StagedxError, match="seed must be an integer >= 0"):
        Generator(tiny_bundle, device="cpu", threads=1).generate("x", max_new_tokens=2, seed=-1)


def test_prompt_on_stdin_that_is_not_utf8(tiny_bundle, capsys, monkeypatch):
    code, out, err = run_cli(
        capsys, ["generate", tiny_bundle, "-", "--threads", "1"], stdin=b"def \xff\xfe(x):", monkeypatch=monkeypatch
    )
    assert_one_line_error(code, err, "not UTF-8")
    assert out == ""


def test_bench_prompts_file_that_is_not_utf8_leaves_no_out_folder(tiny_bundle, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_bytes(b"def f(x):\n\xff\xfe\n")
    out = tmp_path / "results"
    code, _, err = run_cli(capsys, ["bench", tiny_bundle, "--prompts", prompts, "--threads", "1", "--out", out])
    assert_one_line_error(code, err, "not UTF-8", str(prompts))
    assert not out.exists()


def test_bench_out_that_is_a_file(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "results"
    out.write_text("mine")
    code, _, err = run_cli(capsys, ["bench", tiny_bundle, "--limit", "1", "--threads", "1", "--out", out])
    assert_one_line_error(code, err, "--out", "not a folder")
    assert out.read_text() == "mine"


def test_tune_checks_the_bundle_is_writable_before_measuring(tiny_bundle, tmp_path, capsys, monkeypatch):
    import stagedx.bench.tune as tune_mod

    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    real_access = os.access

    def access(p, mode, **kw):  # what os.access says of a read-only bundle (even to root)
        return False if str(p).startswith(str(bundle)) and mode & os.W_OK else real_access(p, mode, **kw)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(tune_mod, "tune_bundle", lambda *a, **k: pytest.fail("measured a read-only bundle"))
    code, _, err = run_cli(capsys, ["tune", bundle, "--threads", "1", "--limit", "1"])
    assert_one_line_error(code, err, "read-only", "tune")


def test_inspect_of_a_modified_bundle_exits_nonzero(tiny_bundle, tmp_path, capsys):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    with open(bundle / "oracle.onnx", "ab") as f:
        f.write(b"\0")
    code, out, err = run_cli(capsys, ["inspect", bundle])
    assert "PROBLEM" in out
    assert_one_line_error(code, err, "sha256 mismatch", "oracle.onnx")


def test_unexpected_eof_is_not_reported_as_an_abort(tiny_bundle, capsys, monkeypatch):
    """click turns any EOFError into Abort ('aborted', exit 130): an EOFError from a file is an error."""
    from stagedx.runtime import generator

    def eof(*_a, **_k):
        raise EOFError("unexpected end of file")

    monkeypatch.setattr(generator, "open_bundle", eof)
    code, _, err = run_cli(capsys, ["generate", tiny_bundle, "x", "--threads", "1"])
    assert code == 1 and "aborted" not in err and "EOFError" in err
    assert "Traceback" not in err


def test_export_into_an_out_that_is_a_file(tiny_pair, tmp_path, capsys):
    out = tmp_path / "out"
    out.write_text("mine")
    code, _, err = run_cli(capsys, ["export", tiny_pair.oracle, "--draft", tiny_pair.draft, "-o", out])
    assert_one_line_error(code, err, "output exists")
    assert out.read_text() == "mine"


def test_unchanged_bundle_still_loads(tiny_bundle):
    assert read_manifest(tiny_bundle)["schema_version"] == 1
    Generator(tiny_bundle, device="cpu", threads=1)


def test_export_without_the_export_extra_says_how_to_install_it(tiny_pair, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    code, _, err = run_cli(capsys, ["export", tiny_pair.oracle, "--draft", tiny_pair.draft, "-o", tmp_path / "b"])
    assert_one_line_error(code, err, "torch", "pip install", ".[export")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--ngram-max-contexts", "-1", "--draft2", "ngram", "--corpus", "stdlib"], "--ngram-max-contexts"),
        (["--topk", "0"], "--topk"),
    ],
)
def test_export_options_out_of_range(tiny_pair, tmp_path, capsys, args, needle):
    code, _, err = run_cli(
        capsys, ["export", tiny_pair.oracle, "--draft", tiny_pair.draft, "-o", tmp_path / "b", *args]
    )
    assert_one_line_error(code, err, needle)
    assert list(tmp_path.iterdir()) == []


def test_validate_with_an_empty_reference_npz(tiny_bundle, tmp_path, capsys):
    pytest.importorskip("polygraphy")
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    edit_manifest(bundle, lambda d: replace_file(bundle, "reference.npz", b"", d["reference"]))
    code, _, err = run_cli(capsys, ["validate", bundle])
    assert_one_line_error(code, err, "reference.npz")
