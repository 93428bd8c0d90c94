"""``stagedx distill`` on tiny random char-level models: the KL falls, the output is a checkpoint
that transformers loads and ``export`` accepts, an interrupted run resumes to the same weights,
and bad input (no usable text, conflicting options) is one clear error."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
from _models import make_gpt2_checkpoint

import stagedx.cli as top
from stagedx.errors import StagedxError
from stagedx.export.distill import DistillConfig, distill, parse_shape
from stagedx.export.distill_data import CorpusSpec

VOCAB = 32
WORDS = ["def", "return", "self", "for", "in", "if", "else", "import", "print", "value", "item"]


@pytest.fixture(scope="module")
def char_pair(tmp_path_factory):
    """Oracle and an unrelated random draft (large KL to start with), char vocab of 32."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("distill_pair")
    oracle = make_gpt2_checkpoint(root / "oracle", vocab=VOCAB, seed=5, n_positions=64)
    draft = make_gpt2_checkpoint(root / "draft", vocab=VOCAB, seed=6, n_positions=64, n_embd=16)
    return oracle, draft


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(6):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 8))) for _ in range(60)]
        (folder / f"m{i}.py").write_text("\n".join(lines) + "\n")
    return folder


def _config(pair, corpus, out: Path, **kw) -> DistillConfig:
    oracle, draft = pair
    base = dict(
        oracle=str(oracle),
        output=out,
        init=str(draft),
        corpus=CorpusSpec((str(corpus),)),
        steps=12,
        seq_len=24,
        batch=4,
        lr=1e-2,
        eval_contexts=6,
        eval_len=16,
        threads=1,
        command="stagedx distill (test)",
    )
    return DistillConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def distilled(char_pair, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("distilled") / "draft"
    losses = []
    record = distill(_config(char_pair, corpus, out), on_step=lambda step, kl: losses.append(kl))
    return out, record, losses


def test_kl_decreases_over_a_few_steps(distilled):
    _, record, losses = distilled
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert record["after"]["kl"] < 0.8 * record["before"]["kl"], record


def test_output_loads_in_transformers_and_exports(distilled, char_pair, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from stagedx.export.bundle import ExportConfig, export_bundle
    from stagedx.manifest import load_manifest

    out, record, _ = distilled
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.vocab_size == VOCAB and model.config.n_embd == 16
    assert (out / "tokenizer.json").read_bytes() == (char_pair[0] / "tokenizer.json").read_bytes()
    card = (out / "README.md").read_text()
    assert "stagedx distill (test)" in card and "top-1 agreement" in card
    assert f"{record['after']['kl']:.4f}" in card
    assert json.loads((out / "distill.json").read_text())["run"]["steps"] == 12
    assert not out.with_name(out.name + ".resume").exists()
    bundle = export_bundle(
        ExportConfig(oracle=str(char_pair[0]), draft=str(out), output=tmp_path / "b", draft2="prompt-lookup", topk=8)
    )
    assert load_manifest(bundle).models["draft"].arch.hidden == 16


def test_interrupted_run_resumes_to_the_same_weights(char_pair, corpus, tmp_path):
    from safetensors.numpy import load_file

    whole = _config(char_pair, corpus, tmp_path / "whole", steps=5)
    distill(whole)

    cfg = _config(char_pair, corpus, tmp_path / "parts", steps=5, checkpoint_steps=2)

    def stop_at_3(step, _kl):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(cfg, on_step=stop_at_3)
    assert not cfg.output.exists() and (cfg.resume_dir / "state.pt").is_file()

    lines = []
    record = distill(cfg, log=lines.append)
    assert any(line.startswith("resuming from step 2") for line in lines), lines
    assert record["run"]["steps"] == 5
    a, b = load_file(whole.output / "model.safetensors"), load_file(cfg.output / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6, err_msg=name)


def test_resume_state_from_other_options_is_refused(char_pair, corpus, tmp_path):
    cfg = _config(char_pair, corpus, tmp_path / "d", steps=4, checkpoint_steps=1)

    def stop(step, _kl):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(cfg, on_step=stop)
    with pytest.raises(StagedxError, match=r"other options \(lr\)"):
        distill(dataclasses.replace(cfg, lr=1e-3))


def test_draft_shape_starts_from_fresh_weights(char_pair, corpus, tmp_path):
    record = distill(_config(char_pair, corpus, tmp_path / "fresh", init=None, shape=(1, 8, 2), steps=2))
    cfg = json.loads((tmp_path / "fresh" / "config.json").read_text())
    assert (cfg["n_layer"], cfg["n_embd"], cfg["n_head"]) == (1, 8, 2)
    assert record["shape"] == [1, 8, 2] and cfg["vocab_size"] == VOCAB


def test_corpus_without_usable_text_is_a_clear_error(char_pair, tmp_path):
    blank = tmp_path / "blank"
    blank.mkdir()
    for i in range(3):
        (blank / f"e{i}.py").write_text("  \n\n" if i else "")
    with pytest.raises(StagedxError, match="corpus has no usable text"):
        distill(_config(char_pair, blank, tmp_path / "o"))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(StagedxError, match="corpus is empty"):
        distill(_config(char_pair, tmp_path / "nothing", tmp_path / "o"))
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.resume").exists()


def test_metrics_of_a_draft_identical_to_its_oracle(char_pair, corpus):
    from stagedx.export.arch import load_reference, open_checkpoint
    from stagedx.export.distill_metrics import CHAIN_DEPTH, evaluate

    model = load_reference(open_checkpoint(str(char_pair[0])))
    contexts = np.random.default_rng(0).integers(0, VOCAB, (5, 12))
    m = evaluate(model, model, contexts)
    assert m.kl == pytest.approx(0.0, abs=1e-6) and m.top1 == 1.0
    assert m.greedy_tokens == CHAIN_DEPTH + 1
    assert m.topk_tokens == pytest.approx(CHAIN_DEPTH + 1, abs=1e-5)


def test_forward_kl_at_temperature_and_top_k_matches_the_definition():
    import torch

    from stagedx.export.distill_metrics import forward_kl

    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(1, 1, 10, generator=g) * 3, torch.randn(1, 1, 10, generator=g)
    z = t[0, 0] / 0.7
    keep = z >= torch.topk(z, 3).values[-1]
    p = torch.where(keep, torch.softmax(z.masked_fill(~keep, -1e9), -1), torch.zeros(10))
    lq = torch.log_softmax(s[0, 0] / 0.7, -1)
    want = sum(p[i] * (p[i].log() - lq[i]) for i in range(10) if keep[i])
    assert forward_kl(t, s, 0.7, 3).item() == pytest.approx(want.item(), rel=1e-5)


@pytest.mark.parametrize(
    "args, needle",
    [
        ([], "exactly one of --minutes M and --steps N"),
        (["--steps", "1", "--draft-shape", "2x10x3"], "WIDTH a multiple of HEADS"),
    ],
)
def test_cli_errors_are_one_line(char_pair, corpus, tmp_path, capsys, args, needle):
    oracle, draft = char_pair
    base = ["distill", str(oracle), "--corpus", str(corpus), "-o", str(tmp_path / "o")]
    if "--draft-shape" not in args:
        base += ["--draft", str(draft)]
    top._register()
    with pytest.raises(SystemExit) as exc:
        top.main(base + args)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(err) == 1 and needle in err[0], err


def test_parse_shape():
    assert parse_shape("2x192x3") == (2, 192, 3)
    with pytest.raises(StagedxError):
        parse_shape("2x192")
