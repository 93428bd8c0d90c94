"""Class 4: every file a manifest names must resolve inside the bundle folder, and is refused
before anything opens it (no hashing or parsing of files outside)."""

from __future__ import annotations

import os

import pytest

import stagedx.manifest as manifest_mod
from stagedx.errors import StagedxError
from stagedx.manifest import bundle_file, load_manifest
from stagedx.runtime import Generator
from tests.reliability._util import assert_one_line_error, copy_bundle, edit_manifest, run_cli


def _outside(tmp_path):
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(b"not yours")
    return secret


def _cases(bundle, secret):
    rel = os.path.relpath(secret, bundle)
    return {
        "dotdot": lambda d: d["models"]["oracle"].__setitem__("file", rel),
        "absolute": lambda d: d["tokenizer"].__setitem__("file", str(secret)),
        "etc-passwd": lambda d: d["models"]["draft"].__setitem__("file", "/etc/passwd"),
        "reference": lambda d: d["reference"].__setitem__("file", "../../../../../../etc/passwd"),
        "engine": lambda d: d.__setitem__("engines", [{"role": "oracle", "file": rel, "sha256": "0" * 64}]),
        "external-data": lambda d: d["models"]["oracle"].__setitem__(
            "external_data", {"file": rel, "sha256": "0" * 64}
        ),
    }


@pytest.mark.parametrize("case", ["dotdot", "absolute", "etc-passwd", "reference", "engine", "external-data"])
def test_paths_outside_the_bundle_are_refused_before_reading(tiny_bundle, tmp_path, monkeypatch, case):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    secret = _outside(tmp_path)
    edit_manifest(bundle, _cases(bundle, secret)[case])
    hashed = []
    real = manifest_mod.sha256_file
    monkeypatch.setattr(manifest_mod, "sha256_file", lambda p, *a: hashed.append(str(p)) or real(p, *a))
    for check in (True, False):
        with pytest.raises(StagedxError, match="outside the bundle folder"):
            load_manifest(bundle, check_files=check)
    assert not [p for p in hashed if "secret" in p or "passwd" in p]


def test_a_symlink_to_a_file_outside_is_refused(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    outside = tmp_path / "tok.json"
    outside.write_bytes((bundle / "tokenizer.json").read_bytes())
    (bundle / "tokenizer.json").unlink()
    (bundle / "tokenizer.json").symlink_to(outside)
    with pytest.raises(StagedxError, match="outside the bundle folder"):
        Generator(bundle, device="cpu", threads=1)


def test_symlinks_inside_the_bundle_are_fine(tiny_bundle, tmp_path):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    (bundle / "store").mkdir()
    os.replace(bundle / "tokenizer.json", bundle / "store" / "tokenizer.json")
    (bundle / "tokenizer.json").symlink_to("store/tokenizer.json")
    load_manifest(bundle)
    assert bundle_file(bundle, "store/../tokenizer.json") == bundle / "store/../tokenizer.json"


def test_cli_names_the_file_in_one_line(tiny_bundle, tmp_path, capsys):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    edit_manifest(bundle, lambda d: d["models"]["oracle"].__setitem__("file", "/etc/passwd"))
    for args in (["generate", bundle, "x", "--threads", "1"], ["inspect", bundle]):
        code, _, err = run_cli(capsys, args)
        assert_one_line_error(code, err, "/etc/passwd", "outside the bundle")
