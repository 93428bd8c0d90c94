"""``stagedx distill --targets``: a small-head draft trained from stored targets without the
oracle: the loss falls, the output is a checkpoint with its head vocabulary that ``export``
turns into a graph with full-vocabulary outputs, greedy staged decoding equals the oracle's,
an interrupted run resumes to the same weights, conflicting options are one clear error."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import stagedx.cli as top
from stagedx.errors import StagedxError
from stagedx.export.distill_offline import OfflineConfig, distill_offline
from stagedx.export.distill_vocab import HEAD_VOCAB_FILE, read_head_vocab
from tests.export.test_distill_targets import targets, tiny_oracle  # noqa: F401 (module fixtures)

HEAD = 48


def _config(tiny_oracle, targets, out, **kw) -> OfflineConfig:  # noqa: F811
    base = dict(
        oracle=str(tiny_oracle[0]),
        targets=targets[0],
        output=out,
        layers=1,
        head_vocab=HEAD,
        steps=16,
        seq_len=16,
        batch=4,
        lr=3e-3,
        threads=1,
        eval_every=8,
        command="stagedx distill --targets (test)",
    )
    return OfflineConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tiny_oracle, targets, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("offline") / "draft"
    losses = []
    record = distill_offline(_config(tiny_oracle, targets, out), on_step=lambda s, v: losses.append(v))
    return out, record, losses


def test_loss_falls_and_the_card_records_it(trained):
    out, record, losses = trained
    assert len(losses) == 16 and np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert record["after"]["kl_topk_tail"] < record["before"]["kl_topk_tail"], record
    assert [h["step"] for h in record["run"]["history"]] == [8, 16]
    assert record["after"]["gen_chain_positions"] > 0 and record["after"]["gen_greedy_chain_tokens"] >= 1.0
    saved = json.loads((out / "distill.json").read_text())
    assert "stagedx distill --targets (test)" in (out / "README.md").read_text()
    assert saved["command"] == "stagedx distill --targets (test)" and saved["run"]["steps"] == 16


def test_output_is_a_small_head_checkpoint(trained, tiny_oracle):  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM

    out, record, _ = trained
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert model.config.num_hidden_layers == 1 and model.config.tie_word_embeddings
    ids = read_head_vocab(out, model.config.vocab_size)
    assert HEAD <= len(ids) <= HEAD + 1 and 0 in ids  # the top HEAD plus EOS (id 0 here)
    assert record["head_params"] == len(ids) * model.config.hidden_size
    assert (out / "tokenizer.json").read_bytes() == (tiny_oracle[0] / "tokenizer.json").read_bytes()
    assert not out.with_name(out.name + ".resume").exists()


def test_export_keeps_outputs_in_the_full_vocabulary(trained, tiny_oracle, tmp_path, capsys):  # noqa: F811
    from stagedx.export.bundle import ExportConfig, export_bundle
    from stagedx.export.verify import random_tree, reference_inputs, run_onnx
    from stagedx.manifest import load_manifest
    from stagedx.numerics import OUT_OF_HEAD

    out, _, _ = trained
    bundle = export_bundle(
        ExportConfig(oracle=str(tiny_oracle[0]), draft=str(out), output=tmp_path / "b", draft2="prompt-lookup", topk=8)
    )
    entry = load_manifest(bundle).models["draft"]
    ids = read_head_vocab(out, entry.arch.vocab_size)
    assert entry.verify["max_rel_error"] < 1e-4 and entry.verify["max_abs_logit"] < 1e3
    case = random_tree(entry.arch.vocab_size, n_past=0, n_nodes=4, seed=1)
    empty = {"logits": np.zeros((4, entry.arch.vocab_size), np.float32)}
    res = run_onnx(bundle / entry.file, reference_inputs(case, empty, entry.arch))
    outside = np.setdiff1d(np.arange(entry.arch.vocab_size), ids)
    assert np.all(res["logits"][:, outside] <= OUT_OF_HEAD) and np.all(res["logits"][:, ids] > OUT_OF_HEAD)
    assert np.isin(res["topk_indices"], ids).all()
    top._register()
    top.main(["generate", str(bundle), "def value", "--compare", "--max-new-tokens", "12", "--threads", "1"])
    assert "greedy outputs identical to baseline: yes" in capsys.readouterr().out


def test_interrupted_run_resumes_to_the_same_weights(tiny_oracle, targets, tmp_path):  # noqa: F811
    from safetensors.numpy import load_file

    whole = _config(tiny_oracle, targets, tmp_path / "whole", steps=5, eval_every=0, save_dtype="fp32")
    distill_offline(whole)
    cfg = dataclasses.replace(whole, output=tmp_path / "parts", checkpoint_steps=2)

    def stop_at_3(step, _loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill_offline(cfg, on_step=stop_at_3)
    assert not cfg.output.exists() and (cfg.resume_dir / "state.pt").is_file()
    lines = []
    assert distill_offline(cfg, log=lines.append)["run"]["steps"] == 5
    assert any(line.startswith("resuming from step 2") for line in lines), lines
    a, b = load_file(whole.output / "model.safetensors"), load_file(cfg.output / "model.safetensors")
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-6, err_msg=name)
    with pytest.raises(StagedxError, match="other options"):
        stop = dataclasses.replace(cfg, output=tmp_path / "p2", lr=1e-3)
        with pytest.raises(KeyboardInterrupt):
            distill_offline(dataclasses.replace(stop, lr=3e-3), on_step=stop_at_3)
        distill_offline(stop)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--draft", "x"], "drop --draft"),
        (["--loss", "kl", "--head-vocab", "-1"], "--head-vocab must be 0 or more"),
        (["--minutes", "1"], "exactly one of --minutes"),
    ],
)
def test_cli_errors_are_one_line(tiny_oracle, targets, tmp_path, capsys, args, needle):  # noqa: F811
    base = ["distill", str(tiny_oracle[0]), "--targets", str(targets[0]), "-o", str(tmp_path / "o"), "--steps", "2"]
    top._register()
    with pytest.raises(SystemExit) as exc:
        top.main(base + args)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert exc.value.code == 2 and len(err) == 1 and needle in err[0], err


def test_missing_targets_folder_is_one_clear_error(tiny_oracle, tmp_path):  # noqa: F811
    with pytest.raises(StagedxError, match="no meta.json"):
        distill_offline(_config(tiny_oracle, (tmp_path / "nothing",), tmp_path / "o"))
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / HEAD_VOCAB_FILE).write_text('{"ids": [3, 2]}')
    with pytest.raises(StagedxError, match="ascending"):
        read_head_vocab(tmp_path / "h", 10)
