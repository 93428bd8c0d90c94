"""The Gemma 3 text family: local (sliding-window) and global layers with their own RoPE bases,
q/k norms, (1+w) RMSNorm, scaled embeddings, four norms per layer, tanh-GELU, the query scale
and final logit softcapping. Trees and chains whose past exceeds the local window give
transformers' logits; greedy staged decoding equals the baseline; configs that cannot be
exported exactly are refused."""

from __future__ import annotations

import numpy as np
import pytest

from stagedx.errors import StagedxError
from stagedx.export.gemma3_config import DEFAULTS, gemma3_dims
from stagedx.export.verify import run_onnx
from stagedx.manifest import load_manifest
from stagedx.numerics import rel_error
from tests._models import make_decoder_checkpoint
from tests.export._chain import chain_feeds
from tests.export._family import FP32_TOLERANCE, assert_greedy_exact, export_pair, reference_model, tree_error

WINDOW = 5
# 5 layers: local, local, global, local, local; local RoPE base 10k, global 1M with linear scaling
ORACLE = dict(
    n_layer=5,
    hidden=32,
    n_heads=4,
    n_kv_heads=2,
    head_dim=16,
    query_pre_attn_scalar=12,
    sliding_window=WINDOW,
    sliding_window_pattern=3,
    rope_scaling={"rope_type": "linear", "factor": 4.0},
    final_logit_softcapping=30.0,
)


@pytest.fixture(scope="module")
def gemma3_pair(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("gemma3_pair")
    oracle = make_decoder_checkpoint(root / "oracle", "gemma3", seed=41, **ORACLE)
    # draft: explicit layer_types, one global layer, untied head, no softcapping
    draft = make_decoder_checkpoint(
        root / "draft",
        "gemma3",
        seed=42,
        n_layer=2,
        head_dim=8,
        sliding_window=3,
        layer_types=["sliding_attention", "full_attention"],
        tie_word_embeddings=False,
    )
    return oracle, draft


@pytest.fixture(scope="module")
def gemma3_bundle(gemma3_pair, tmp_path_factory):
    return export_pair(*gemma3_pair, tmp_path_factory.mktemp("gemma3_bundle") / "bundle")


@pytest.fixture(scope="module")
def oracle_ref(gemma3_pair):
    return reference_model(gemma3_pair[0])


def test_manifest(gemma3_bundle):
    m = load_manifest(gemma3_bundle)
    assert {e.arch.family for e in m.models.values()} == {"gemma3"}
    assert all(e.verify["max_rel_error"] < FP32_TOLERANCE for e in m.models.values())


@pytest.mark.parametrize("n_past,n_nodes,seed", [(0, 9, 1), (3, 9, 2), (8, 9, 3), (13, 20, 4)])
def test_tree_parity_past_longer_than_window(gemma3_bundle, oracle_ref, n_past, n_nodes, seed):
    model, dims = oracle_ref
    assert tree_error(model, dims, gemma3_bundle / "oracle.onnx", n_past, n_nodes, seed) < FP32_TOLERANCE


def test_draft_parity(gemma3_pair, gemma3_bundle):
    model, dims = reference_model(gemma3_pair[1])
    assert tree_error(model, dims, gemma3_bundle / "draft.onnx", 9, 12, 5) < FP32_TOLERANCE


def test_window_and_softcap_change_the_logits(gemma3_bundle, oracle_ref):
    """Negative controls: without the local window, or without the final softcapping,
    transformers' logits differ (so the parity above checks both); ours match the real ones."""
    import torch

    model, dims = oracle_ref
    ids = np.random.default_rng(1).integers(0, dims.vocab_size, 14)

    def logits():
        with torch.no_grad():
            return model(torch.from_numpy(ids)[None]).logits[0].numpy()  # [14, V]

    real = logits()
    for field, value in (("sliding_window", 10_000), ("final_logit_softcapping", None)):
        kept = getattr(model.config, field)
        setattr(model.config, field, value)
        try:
            assert rel_error(logits()[WINDOW:], real[WINDOW:]) > 100 * FP32_TOLERANCE, field
        finally:
            setattr(model.config, field, kept)
    assert np.abs(real).max() < ORACLE["final_logit_softcapping"]
    ours = run_onnx(
        gemma3_bundle / "oracle.onnx", chain_feeds(ids, 0, {}, dims.n_layers, (dims.n_kv_heads, dims.head_dim))
    )
    assert rel_error(ours["logits"], real) < FP32_TOLERANCE


def test_chain_split_and_reserved_row(gemma3_bundle, oracle_ref):
    """A chain scored in two calls (the second's past longer than the window) equals one call,
    also with a garbage row reserved in front of the past and masked out."""
    _, dims = oracle_ref
    onnx_file = gemma3_bundle / "oracle.onnx"
    ids = np.random.default_rng(2).integers(0, dims.vocab_size, 13)
    kv = (dims.n_kv_heads, dims.head_dim)
    whole = run_onnx(onnx_file, chain_feeds(ids, 0, {}, dims.n_layers, kv))
    first = run_onnx(onnx_file, chain_feeds(ids[:9], 0, {}, dims.n_layers, kv))
    junk = np.full((1, *kv), 7.0, np.float32)  # [1, H_kv, D]
    past = {
        i: (np.concatenate([junk, first[f"new_key.{i}"]]), np.concatenate([junk, first[f"new_value.{i}"]]))
        for i in range(dims.n_layers)
    }
    feeds = chain_feeds(ids[9:], 9, past, dims.n_layers, kv)
    feeds["tree_mask"] = np.concatenate([np.zeros((4, 1), bool), feeds["tree_mask"]], 1)  # [T, 1+P+T]
    second = run_onnx(onnx_file, feeds)
    assert rel_error(second["logits"], whole["logits"][9:]) < 1e-5


def test_greedy_staged_identical_to_baseline(gemma3_bundle):
    assert_greedy_exact(gemma3_bundle)  # prompts of 10+ tokens: past the window of 5


def test_bos_recorded_at_export_and_led_every_prompt(gemma3_pair, gemma3_bundle, tmp_path):
    """Gemma expects <bos> first: the manifest records it, generate / serve / bench put it in
    front of a text prompt (once), and greedy decoding of the text equals that of the ids."""
    import json
    import shutil

    from stagedx.bench.context import long_prompts
    from stagedx.bench.prompts import Prompt
    from stagedx.export.arch import open_checkpoint
    from stagedx.runtime import Generator
    from stagedx.serve.app import ServeConfig, Server

    m = load_manifest(gemma3_bundle)
    assert m.tokenizer.add_bos_token and m.tokenizer.bos_token_id == 0
    gen = Generator(gemma3_bundle, device="cpu", threads=1, strategy="baseline")
    body = [int(t) for t in gen.tokenizer.encode("def add(a, b):", add_bos=False)]
    assert [int(t) for t in gen.tokenizer.encode("def add(a, b):")] == [0, *body]
    text = gen.generate("def add(a, b):", max_new_tokens=6, ignore_eos=True)
    ids = gen.generate([0, *body], max_new_tokens=6, ignore_eos=True)
    assert text.prompt_tokens == len(body) + 1 and text.tokens == ids.tokens
    assert Server(gen, ServeConfig("g", warm_up=False))._encode("def add(a, b):") == (0, *body)
    (ctx,) = long_prompts(gen.tokenizer, [Prompt("p", "def add(a, b):\n    return a + b\n")], 12)
    assert ctx.ids[0] == 0 and 0 not in ctx.ids[1:] and len(ctx.ids) == 12
    # negative control: a checkpoint whose tokenizer config says false
    plain = tmp_path / "plain"
    shutil.copytree(gemma3_pair[0], plain)
    config = json.loads((plain / "tokenizer_config.json").read_text())
    (plain / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": False}))
    assert open_checkpoint(str(gemma3_pair[0])).add_bos_token() and not open_checkpoint(str(plain)).add_bos_token()


def test_defaults_are_transformers_defaults():
    """config.json omits fields equal to transformers' defaults: ours must be theirs."""
    from transformers import Gemma3TextConfig

    theirs = Gemma3TextConfig()
    for key, value in DEFAULTS.items():
        if key == "sliding_window_pattern":
            assert theirs._sliding_window_pattern == value
        elif key == "rope_theta":
            assert theirs.rope_parameters["full_attention"]["rope_theta"] == value
        elif key == "rope_local_base_freq":
            assert theirs.rope_parameters["sliding_attention"]["rope_theta"] == value
        else:
            assert getattr(theirs, key) == value, key


def test_layer_kinds_and_ropes_from_either_layout():
    legacy = {"model_type": "gemma3_text", "num_hidden_layers": 7, "rope_scaling": {"type": "linear", "factor": 8.0}}
    d = gemma3_dims(legacy)
    assert d.sliding == (True,) * 5 + (False, True)  # every 6th layer global
    assert (d.rope_local.theta, d.rope_local.kind) == (10_000.0, "default")
    assert (d.rope_global.theta, d.rope_global.kind, d.rope_global.factor) == (1_000_000.0, "linear", 8.0)
    new = {
        "model_type": "gemma3_text",
        "num_hidden_layers": 2,
        "layer_types": ["full_attention", "sliding_attention"],
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": 5e5},
            "sliding_attention": {"rope_type": "default", "rope_theta": 1e3},
        },
    }
    d = gemma3_dims(new)
    assert d.sliding == (False, True) and d.rope_global.theta == 5e5 and d.rope_local.theta == 1e3


@pytest.mark.parametrize(
    "change,message",
    [
        ({"attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
        ({"use_bidirectional_attention": True}, "bidirectional"),
        ({"hidden_activation": "silu"}, "hidden_activation"),
        ({"attention_bias": True}, "attention_bias"),
        ({"layer_types": ["sliding_attention", "chunked_attention"]}, "layer_types"),
        ({"sliding_window": None}, "sliding_window"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "yarn"),
    ],
)
def test_refused_configs(change, message):
    with pytest.raises(StagedxError, match=message):
        gemma3_dims({"model_type": "gemma3_text", "num_hidden_layers": 2, **change})


GEMMA_VOCAB = 262_144  # Gemma 3's tokenizer


def test_262k_vocabulary_topk_ngram_and_runtime(tmp_path):
    """A Gemma-sized vocabulary (tokenizer padded to 262,144 tokens, ids beyond 2**16): the
    graphs' top-k, the n-gram tables (int32 ids, trigram keys a * V + b) and staged decoding
    with both draft2 kinds stay exact."""
    import torch

    from stagedx.export.bundle import ExportConfig, export_bundle
    from stagedx.runtime.draft2 import NgramModel

    torch.set_num_threads(1)
    small = dict(hidden=16, n_heads=2, n_kv_heads=1, head_dim=8, vocab=GEMMA_VOCAB, sliding_window=4)
    oracle = make_decoder_checkpoint(
        tmp_path / "oracle", "gemma3", seed=43, n_layer=3, sliding_window_pattern=3, **small
    )
    draft = make_decoder_checkpoint(tmp_path / "draft", "gemma3", seed=44, n_layer=1, **small)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("def add(a, b):\n    return a + b\n\nimport os\nimport sys\n" * 20)
    bundle = export_bundle(
        ExportConfig(oracle=str(oracle), draft=str(draft), output=tmp_path / "bundle", draft2="both", corpus=(corpus,))
    )
    m = load_manifest(bundle)
    assert {e.arch.vocab_size for e in m.models.values()} == {GEMMA_VOCAB}
    assert all(e.verify["max_rel_error"] < FP32_TOLERANCE for e in m.models.values())
    ngram = NgramModel.load(bundle / m.draft2.ngram.file)
    assert ngram.vocab_size == GEMMA_VOCAB and ngram.tri.top_ids.dtype == np.int32
    out = run_onnx(bundle / "oracle.onnx", chain_feeds(np.array([0, 5, GEMMA_VOCAB - 1]), 0, {}, 3, (1, 8)))
    np.testing.assert_array_equal(out["topk_indices"][:, 0], out["logits"].argmax(1))
    assert out["topk_indices"].max() >= 1 << 16  # most of the vocabulary lies above uint16
    assert_greedy_exact(bundle)


def test_multimodal_checkpoint_exports_its_text_model(gemma3_pair, tmp_path):
    """A ``gemma3`` (multimodal) checkpoint: its text model is exported (vision tower left
    out) and scores text as transformers' Gemma3ForConditionalGeneration does."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    from stagedx.export.arch import open_checkpoint
    from stagedx.export.reference import streamed_model

    torch.manual_seed(45)
    text = dict(
        num_hidden_layers=3,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        vocab_size=8192,
        sliding_window=WINDOW,
        sliding_window_pattern=3,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
    )
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28)
    model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape))
    model.eval().save_pretrained(tmp_path / "mm")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "mm" / name).write_bytes((gemma3_pair[0] / name).read_bytes())
    ckpt = open_checkpoint(str(tmp_path / "mm"))
    assert ckpt.dims.family == "gemma3" and ckpt.dims.n_layers == 3
    bundle = export_pair(tmp_path / "mm", gemma3_pair[1], tmp_path / "bundle")
    assert load_manifest(bundle).oracle.verify["max_rel_error"] < FP32_TOLERANCE  # vs the streamed text model
    ids = np.random.default_rng(3).integers(0, 8192, 12)
    with torch.no_grad():
        full = model(input_ids=torch.from_numpy(ids)[None]).logits[0].numpy()  # [12, V]
        streamed = streamed_model(tmp_path / "mm", "Gemma3ForCausalLM")(torch.from_numpy(ids)[None]).logits[0]
    assert rel_error(streamed.numpy(), full) < 1e-6  # the reference the export used is the model's text path
    ours = run_onnx(bundle / "oracle.onnx", chain_feeds(ids, 0, {}, 3, (2, 8)))
    assert rel_error(ours["logits"], full) < FP32_TOLERANCE
