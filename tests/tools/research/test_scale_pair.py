"""tools/research/scale_pair.py: a tiny random GPT-2 scaled R=2 with extra identity layers computes the
same function (logits and greedy output), and its export keeps every weight."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
FACTOR, LAYERS = 2, 4  # the tiny pair has 2 layers: 2 exact identity layers are added


def _load_tool():
    spec = importlib.util.spec_from_file_location("scale_pair", ROOT / "tools" / "research" / "scale_pair.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


sp = _load_tool()


@pytest.fixture(scope="module")
def scaled_pair(tiny_pair, tmp_path_factory):
    root = tmp_path_factory.mktemp("scaled_pair")
    sp.write_scaled(tiny_pair.oracle, root / "oracle", FACTOR, LAYERS, seed=0)
    sp.write_scaled(tiny_pair.draft, root / "draft", FACTOR, LAYERS, seed=1)
    return root


def test_scaled_config_widens_and_deepens(tiny_pair, scaled_pair):
    src = json.loads((tiny_pair.oracle / "config.json").read_text())
    cfg = json.loads((scaled_pair / "oracle" / "config.json").read_text())
    assert (cfg["n_embd"], cfg["n_head"], cfg["n_layer"]) == (FACTOR * src["n_embd"], FACTOR * src["n_head"], LAYERS)
    assert (scaled_pair / "oracle" / "tokenizer.json").is_file()


def test_logits_and_greedy_output_unchanged(tiny_pair, scaled_pair):
    small, big = sp.load_gpt2(tiny_pair.oracle), sp.load_gpt2(scaled_pair / "oracle")
    rel = sp.logits_rel_error(small, big, sp.check_sequences(small.config.vocab_size, small.config.n_positions))
    assert rel < sp.REL_TOL
    prompt = [5, 17, 300, 2]
    assert sp.greedy_tokens(big, prompt, 12) == sp.greedy_tokens(small, prompt, 12)


def test_every_weight_is_distinct_and_nonzero(tiny_pair):
    import torch

    small = sp.load_gpt2(tiny_pair.oracle)
    cfg = small.config
    sd = sp.scale_state_dict(small.state_dict(), cfg.n_layer, cfg.n_embd, FACTOR, LAYERS)
    tensors = list(sd.values())
    assert all(bool(t.ne(0).any()) for t in tensors)
    for i, a in enumerate(tensors):
        assert not any(a.shape == b.shape and torch.equal(a, b) for b in tensors[i + 1 :])


def test_negative_control_a_live_extra_head_changes_the_logits(tiny_pair, scaled_pair, tmp_path):
    """The check can fail: give one extra head a non-zero output row and the logits move."""
    import torch

    small, big = sp.load_gpt2(tiny_pair.oracle), sp.load_gpt2(scaled_pair / "oracle")
    e = small.config.n_embd
    rows = big.transformer.h[0].attn.c_proj.weight[e:]  # [extra heads x D, E]: zero
    with torch.no_grad():
        rows.copy_(0.5 * torch.randn(rows.shape, generator=torch.Generator().manual_seed(0)))
    rel = sp.logits_rel_error(small, big, sp.check_sequences(small.config.vocab_size, small.config.n_positions))
    assert rel > 1e-3


def _export(oracle: Path, draft: Path, out: Path) -> Path:
    from stagedx.export.bundle import ExportConfig, export_bundle

    return export_bundle(ExportConfig(oracle=str(oracle), draft=str(draft), output=out, draft2="prompt-lookup"))


def test_exported_bundle_keeps_every_weight_and_greedy_output(tiny_bundle, scaled_pair, tmp_path):
    big = _export(scaled_pair / "oracle", scaled_pair / "draft", tmp_path / "big")
    assert len(sp.check_weight_bytes(big)) == 2
    worst = sp.compare_bundles(tiny_bundle, big, [[5, 17, 300, 2], [9, 9, 40]], 10)
    assert max(worst.values()) < 1e-4


def test_negative_control_all_zero_biases_are_merged_by_the_exporter(tiny_pair, tmp_path, monkeypatch):
    """Why the identity layers' output biases are +c / -c: with c = 0 the exporter merges the
    equal zero tensors; the export refuses the graph (every parameter must stay an input of its
    own), and were it written, the weight check would report it."""
    monkeypatch.setattr(sp, "TINY", 0.0)
    sp.write_scaled(tiny_pair.oracle, tmp_path / "oracle", FACTOR, LAYERS + 1)
    sp.write_scaled(tiny_pair.draft, tmp_path / "draft", FACTOR, LAYERS + 1)
    with pytest.raises(sp.StagedxError, match="merged or dropped"):
        big = _export(tmp_path / "oracle", tmp_path / "draft", tmp_path / "big")
        sp.check_weight_bytes(big)
    assert not (tmp_path / "big").exists()


def test_bad_input_is_one_line_exit_2(tiny_pair, tmp_path, capsys):
    assert sp.main(["scale", str(tiny_pair.oracle), str(tmp_path / "x"), "--factor", "3", "--layers", "4"]) == 2
    assert sp.main(["scale", str(tiny_pair.oracle), str(tmp_path / "y"), "--factor", "2", "--layers", "1"]) == 2
    assert sp.main(["scale", str(tmp_path / "missing"), str(tmp_path / "z"), "--factor", "2", "--layers", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
