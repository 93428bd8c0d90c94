"""Stored oracle targets (``stagedx distill-targets``) on a tiny random Llama with a chat
template: the shards hold the oracle's own top-k, generated text is the oracle's greedy
continuation, a rerun resumes (and refuses other options), bad input is one clear error."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
from _models import make_llama_checkpoint

from stagedx.errors import StagedxError
from stagedx.export.distill_data import CorpusSpec
from stagedx.export.distill_targets import TargetsConfig, compute_targets, read_prompts

WORDS = ["def", "return", "self", "for", "in", "if", "else", "import", "print", "value"]
TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture(scope="module")
def tiny_oracle(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("targets_oracle")
    oracle = make_llama_checkpoint(root / "oracle", seed=3, n_layer=3)
    (oracle / "chat_template.jinja").write_text(TEMPLATE)
    corpus = root / "corpus"
    corpus.mkdir()
    rng = random.Random(0)
    for i in range(8):
        lines = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(30)]
        (corpus / f"m{i}.py").write_text("\n".join(lines) + "\n")
    prompts = root / "prompts.txt"
    prompts.write_text("# a comment line\n" + "\n".join(f"write {w}" for w in WORDS) + "\n")
    return oracle, corpus, prompts


def targets_config(tiny_oracle, out, **kw) -> TargetsConfig:
    oracle, corpus, prompts = tiny_oracle
    base = dict(
        oracle=str(oracle),
        output=out,
        corpus=CorpusSpec(paths=(str(corpus),)),
        prompts=prompts,
        seq_len=24,
        k=8,
        shard_seqs=4,
        batch=2,
        gen_tokens=10,
        threads=1,
    )
    return TargetsConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def targets(tiny_oracle, tmp_path_factory):
    out = tmp_path_factory.mktemp("targets") / "t"
    summary = compute_targets(targets_config(tiny_oracle, out))
    return out, summary


def _shards(folder):
    return sorted(folder.glob("shard-*.npz"))


def test_shards_hold_the_oracles_top_k(targets, tiny_oracle):
    import torch

    from stagedx.export.arch import load_reference, open_checkpoint

    out, summary = targets
    assert summary["shards_written"] == summary["planned"] == len(_shards(out)) >= 4
    meta = json.loads((out / "meta.json").read_text())
    assert meta["prompts"] == len(WORDS) and meta["fingerprint"]["k"] == 8
    assert np.load(out / "unigram.npy").sum() == meta["corpus_train_tokens"]
    kinds = [str(np.load(f)["kind"]) for f in _shards(out)]
    assert kinds[:2] == ["corpus", "gen"]
    z = np.load(_shards(out)[0])
    assert z["ids"].dtype == np.uint16 and z["logp"].dtype == np.float16 and z["ids"].shape == (4 * 24, 8)
    model = load_reference(open_checkpoint(str(tiny_oracle[0])))
    tokens = torch.from_numpy(z["tokens"][:24].astype(np.int64))[None]  # [1, 24]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=tokens).logits[0], -1)  # [24, V]
    top = torch.topk(logp, 8, -1)
    np.testing.assert_array_equal(z["ids"][:24, 0], top.indices[:, 0].numpy())
    np.testing.assert_allclose(z["logp"][:24].astype(np.float32), top.values.numpy(), atol=2e-2)


def test_generated_text_is_the_oracles_greedy_continuation(targets):
    from stagedx.export.distill_stored import _greedy_suffix

    out, _ = targets
    z = np.load(next(f for f in _shards(out) if str(np.load(f)["kind"]) == "gen"))
    starts = z["starts"]
    assert len(starts) == 5 and starts[-1] == len(z["tokens"]) == len(z["ids"])
    for a, b in zip(starts[:-1], starts[1:]):
        tok, top1 = z["tokens"][a:b], z["ids"][a:b, 0]
        start = _greedy_suffix(tok, top1)
        assert start < b - a - 1  # some generated tokens
        np.testing.assert_array_equal(tok[start + 1 :], top1[start:-1])


def test_rerun_resumes_and_other_options_are_refused(tiny_oracle, tmp_path):
    cfg = targets_config(tiny_oracle, tmp_path / "t", max_shards=2)
    assert compute_targets(cfg)["shards_written"] == 2
    first = _shards(cfg.output)[0].stat().st_mtime_ns
    again = compute_targets(dataclasses.replace(cfg, max_shards=3))
    assert again["shards_written"] == 1 and _shards(cfg.output)[0].stat().st_mtime_ns == first
    with pytest.raises(StagedxError, match=r"other options \(k\)"):
        compute_targets(dataclasses.replace(cfg, k=4))


def test_bad_input_is_one_clear_error(tiny_oracle, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(StagedxError, match="holds no prompt"):
        read_prompts(empty)
    with pytest.raises(StagedxError, match="cannot read --prompts"):
        read_prompts(tmp_path / "missing.txt")
    no_template = make_llama_checkpoint(tmp_path / "plain", seed=4, n_layer=1)
    with pytest.raises(StagedxError, match="needs a chat template"):
        compute_targets(targets_config(tiny_oracle, tmp_path / "t", oracle=str(no_template)))
    with pytest.raises(StagedxError, match="at least 1"):
        compute_targets(targets_config(tiny_oracle, tmp_path / "t2", k=0))
