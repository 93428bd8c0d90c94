"""Class 6: what the manifest says must agree with the files at load: vocabularies, the
tokenizer, each graph's real input/output shapes and dtype, and the n-gram's token ids. A
mismatch is one line at load, never an ONNX Runtime error or garbage later."""

from __future__ import annotations

import numpy as np
import pytest

from stagedx.errors import StagedxError
from stagedx.runtime import Generator
from tests.reliability._util import assert_one_line_error, copy_bundle, edit_manifest, replace_file, run_cli


def _arch(role, **kv):
    return lambda d: d["models"][role]["arch"].update(kv)


CASES = {
    "draft vocab": (_arch("draft", vocab_size=4096), "vocab_size"),
    "both vocabs below the tokenizer": (
        lambda d: (_arch("oracle", vocab_size=4096)(d), _arch("draft", vocab_size=4096)(d)),
        "4096",
    ),
    "tokenizer vocab": (lambda d: d["tokenizer"].__setitem__("vocab_size", 100), "tokenizer.json has"),
    "eos outside vocab": (lambda d: d["tokenizer"].__setitem__("eos_token_id", 9000), "eos_token_id"),
    "kv heads": (_arch("oracle", n_kv_heads=1), "past_key.0"),
    "head dim": (_arch("draft", head_dim=64, hidden=128), "past_key.0"),
    "fewer layers": (_arch("oracle", n_layers=1), "beyond the manifest's 1 layers"),
    "more layers": (_arch("draft", n_layers=3), "missing inputs"),
    "topk": (lambda d: d["models"]["oracle"].__setitem__("topk", 8), "topk_values"),
    "dtype": (lambda d: d["models"]["draft"].__setitem__("dtype", "fp16"), "dtype fp16"),
    "positions beyond the graph's table": (
        lambda d: [_arch(r, max_positions=2 * d["models"][r]["arch"]["max_positions"])(d) for r in ("oracle", "draft")],
        "cannot run at position",
    ),
    "KV cache larger than memory": (
        lambda d: [_arch(r, max_positions=10**12)(d) for r in ("oracle", "draft")],
        "more than this machine's",
    ),
    "logits width": (lambda d: (_arch("oracle", vocab_size=9000)(d), _arch("draft", vocab_size=9000)(d)), "logits"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_manifest_disagreeing_with_the_files_is_refused_at_load(tiny_bundle, tmp_path, case):
    change, needle = CASES[case]
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    edit_manifest(bundle, change)
    with pytest.raises(StagedxError, match=needle.replace("(", r"\(")):
        Generator(bundle, device="cpu", threads=1)


def test_cli_reports_a_shape_mismatch_in_one_line(tiny_bundle, tmp_path, capsys):
    bundle = copy_bundle(tiny_bundle, tmp_path / "b")
    edit_manifest(bundle, _arch("oracle", n_kv_heads=1))
    code, out, err = run_cli(capsys, ["generate", bundle, "def f(x):", "--threads", "1"])
    assert_one_line_error(code, err, "oracle.onnx", "past_key.0")
    assert out == ""


def _tamper_ngram(bundle, change):
    path = bundle / "draft2_ngram.npz"
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    np.savez(path, **arrays)
    edit_manifest(bundle, lambda d: replace_file(bundle, "draft2_ngram.npz", path.read_bytes(), d["draft2"]["ngram"]))


def test_ngram_fitted_for_another_vocabulary_is_refused(ngram_bundle, tmp_path):
    Generator(ngram_bundle, device="cpu", threads=1)  # the untampered copy loads
    bundle = copy_bundle(ngram_bundle, tmp_path / "b")
    _tamper_ngram(bundle, lambda a: a.__setitem__("vocab_size", np.asarray(50000)))
    with pytest.raises(StagedxError, match="fitted for vocab_size 50000"):
        Generator(bundle, device="cpu", threads=1)


def test_ngram_token_ids_outside_the_vocabulary_are_refused(ngram_bundle, tmp_path):
    bundle = copy_bundle(ngram_bundle, tmp_path / "b")

    def change(a):
        a["bi_top_ids"] = a["bi_top_ids"].copy()
        a["bi_top_ids"][0, 0] = 8192 + 5

    _tamper_ngram(bundle, change)
    with pytest.raises(StagedxError, match="token ids outside the vocabulary"):
        Generator(bundle, device="cpu", threads=1)
