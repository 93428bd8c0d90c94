"""`stagedx generate` end to end, and its one-line errors (exit code 2)."""

import io
import json
import shutil

import pytest

from stagedx.cli import main
from stagedx.runtime import Generator


def run(capsys, args, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_streams_the_same_text_as_the_api(tiny_bundle, capsys):
    code, out, _ = run(
        capsys,
        [
            "generate",
            tiny_bundle,
            "def f(x):",
            "--max-new-tokens",
            "16",
            "--ignore-eos",
            "--threads",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert code == 0
    text = (
        Generator(tiny_bundle, device="cpu", threads=1).generate("def f(x):", max_new_tokens=16, ignore_eos=True).text
    )
    assert out == text + "\n"


def test_generate_json_stats_and_stdin_prompt(tiny_bundle, capsys, monkeypatch):
    code, out, _ = run(
        capsys,
        [
            "generate",
            tiny_bundle,
            "-",
            "--max-new-tokens",
            "8",
            "--ignore-eos",
            "--json",
            "--sampling",
            "topk:5",
            "--seed",
            "3",
            "--threads",
            "1",
        ],
        stdin="import os\n",
        monkeypatch=monkeypatch,
    )
    assert code == 0
    res = json.loads(out)
    assert len(res["tokens"]) == 8 and res["stats"]["new_tokens"] == 8 and res["device"] == "cpu"


def test_compare_checks_greedy_equality(self_draft_bundle, capsys):
    code, out, _ = run(
        capsys,
        [
            "generate",
            self_draft_bundle,
            "class A:\n",
            "--compare",
            "--max-new-tokens",
            "24",
            "--ignore-eos",
            "--threads",
            "1",
        ],
    )
    assert code == 0
    assert "greedy outputs identical to baseline: yes" in out
    assert all(name in out for name in ("baseline", "speculative", "staged ", "staged3"))


def one_line_error(capsys, args, needle):
    code, _, err = run(capsys, args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err


def test_bad_input_is_one_line_and_exit_2(tiny_bundle, tmp_path, capsys):
    one_line_error(capsys, ["generate", tiny_bundle, ""], "empty prompt")
    one_line_error(capsys, ["generate", tmp_path / "nope", "x"], "bundle folder not found")
    one_line_error(capsys, ["generate", tiny_bundle, "x", "--device", "tpu"], "unknown device")
    one_line_error(capsys, ["generate", tiny_bundle, "x " * 300], "more than the context")
    one_line_error(capsys, ["generate", tiny_bundle, "x", "--sampling", "topq:3"], "unknown sampling")
    one_line_error(capsys, ["generate", tiny_bundle, "x", "--fanouts", "a,b"], "--fanouts")


def test_modified_bundle_and_newer_schema_are_refused(tiny_bundle, tmp_path, capsys):
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    with open(bundle / "draft.onnx", "ab") as f:
        f.write(b"\0")
    one_line_error(capsys, ["generate", bundle, "x"], "sha256 mismatch")
    shutil.rmtree(bundle)
    shutil.copytree(tiny_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    one_line_error(capsys, ["generate", bundle, "x"], "newer than this stagedx")


def test_context_limit_is_reported(tiny_bundle, capsys):
    code, _, err = run(
        capsys, ["generate", tiny_bundle, "x " * 120, "--max-new-tokens", "200", "--ignore-eos", "--threads", "1"]
    )
    assert code == 0 and "reached the context limit" in err


@pytest.mark.parametrize("flag", ["--debug"])
def test_debug_shows_the_traceback(tiny_bundle, capsys, flag):
    code, _, err = run(capsys, ["generate", tiny_bundle, "", flag])
    assert code == 2 and "Traceback" in err


def _json_run(capsys, bundle, *args):
    code, out, err = run(
        capsys, ["generate", bundle, "def f(x):", "--max-new-tokens", "6", "--json", "--threads", "1", *args]
    )
    assert code == 0, err
    return json.loads(out)


def test_temperature_alone_samples_and_zero_is_greedy(tiny_bundle, capsys):
    sampled = _json_run(capsys, tiny_bundle, "--temperature", "0.7", "--seed", "1")
    assert sampled["stats"]["sampling"] == "sample,T=0.7"
    greedy = _json_run(capsys, tiny_bundle, "--temperature", "0")
    assert greedy["stats"]["sampling"] == "greedy" and greedy["tokens"] == _json_run(capsys, tiny_bundle)["tokens"]
    topk = _json_run(capsys, tiny_bundle, "--temperature", "0.5", "--sampling", "topk:5", "--seed", "2")
    assert topk["stats"]["sampling"] == "topk:5,T=0.5"


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--temperature", "0", "--sampling", "topk:5"], "--temperature 0 means greedy"),
        (["--temperature", "0.7", "--sampling", "greedy"], "--sampling greedy takes no --temperature"),
        (["--temperature", "-1"], "--temperature must be a finite number > 0"),
    ],
)
def test_contradicting_sampling_options_are_one_line_errors(tiny_bundle, capsys, args, needle):
    code, _, err = run(capsys, ["generate", tiny_bundle, "x", *args])
    assert code == 2 and needle in err and err.count("\n") == 1


def test_generate_json_schema_regex_and_bad_constraints(tiny_bundle, tmp_path, capsys):
    n = {"type": "integer", "minimum": 0, "maximum": 999}
    schema = {"type": "object", "properties": {"n": n}, "required": ["n"], "additionalProperties": False}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    base = ["generate", tiny_bundle, "x =", "--max-new-tokens", "40", "--threads", "1", "--device", "cpu", "--json"]
    code, out, _ = run(capsys, [*base, "--json-schema", tmp_path / "s.json"])
    assert code == 0 and isinstance(json.loads(json.loads(out)["text"])["n"], int)
    code, out, _ = run(capsys, [*base, "--regex", "[0-9]{3}"])
    assert code == 0 and json.loads(out)["text"].isdigit() and len(json.loads(out)["text"]) == 3
    (tmp_path / "bad.json").write_text('{"type": "nope"}')
    (tmp_path / "g.lark").write_text("start: missing")
    for args, needle in (
        (["--json-schema", tmp_path / "bad.json"], "invalid json schema"),
        (["--json-schema", tmp_path / "absent.json"], "cannot read --json-schema"),
        (["--grammar", tmp_path / "g.lark"], "invalid grammar"),
        (["--regex", "(x", "--grammar", tmp_path / "g.lark"], "at most one of"),
        (["--regex", "[0-9]+", "--ignore-eos"], "ignore_eos"),
    ):
        code, _, err = run(capsys, [*base, *args])
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
