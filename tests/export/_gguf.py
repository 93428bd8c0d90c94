"""Tiny GGUF files written by the tests themselves (gguf.GGUFWriter): a 2-layer llama with a
byte-level BPE tokenizer of 288 tokens and a ChatML template, its matrices in a chosen GGUF
block type, Q/K rows permuted as llama.cpp's converter stores them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MERGES = (
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("Ġ", "a"),
    ("i", "n"),
    ("Ġ", "s"),
    ("e", "r"),
    ("o", "n"),
    ("r", "e"),
    ("Ġ", "c"),
    ("d", "e"),
    ("Ġ", "f"),
    ("Ġ", "i"),
    ("a", "t"),
    ("o", "r"),
    ("e", "n"),
    ("Ġ", "p"),
    ("Ġ", "r"),
    ("Ġ", "d"),
    ("Ġd", "e"),
    ("Ġde", "f"),
    ("r", "n"),
    ("re", "t"),
    ("u", "rn"),
    ("ret", "urn"),
    ("Ġ", "re"),
    ("Ġre", "t"),
    ("Ġret", "urn"),
    ("Ġ", "Ġ"),
)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _bytes_to_unicode() -> list[str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    order = sorted(range(256), key=lambda i: bs[i])
    return [chr(cs[i]) for i in order]


def tokens() -> list[str]:
    return [*SPECIALS, *_bytes_to_unicode(), *("".join(m) for m in MERGES)]


@dataclass(frozen=True)
class TinyLlama:
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    ffn: int = 128
    vocab: int = len(SPECIALS) + 256 + len(MERGES)  # 288


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf Q/K row permutation (HF rotate-half -> interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_weights(shape: TinyLlama, seed: int, qkv_bias: bool = False) -> dict[str, np.ndarray]:
    """HF-named fp32 weights of the tiny llama (random, scaled so logits stay moderate);
    ``qkv_bias``: with Qwen2's q/k/v biases."""
    rng = np.random.default_rng(seed)
    e, d = shape.hidden, shape.hidden // shape.heads
    w = lambda *s: (rng.standard_normal(s) * 0.15).astype(np.float32)  # noqa: E731
    out = {
        "embed_tokens.weight": w(shape.vocab, e),
        "norm.weight": (1 + 0.1 * rng.standard_normal(e)).astype(np.float32),
    }
    for i in range(shape.layers):
        p = f"layers.{i}."
        out[p + "self_attn.q_proj.weight"] = w(shape.heads * d, e)
        out[p + "self_attn.k_proj.weight"] = w(shape.kv_heads * d, e)
        out[p + "self_attn.v_proj.weight"] = w(shape.kv_heads * d, e)
        if qkv_bias:
            out[p + "self_attn.q_proj.bias"] = w(shape.heads * d)
            out[p + "self_attn.k_proj.bias"] = w(shape.kv_heads * d)
            out[p + "self_attn.v_proj.bias"] = w(shape.kv_heads * d)
        out[p + "self_attn.o_proj.weight"] = w(e, shape.heads * d)
        out[p + "mlp.gate_proj.weight"] = w(shape.ffn, e)
        out[p + "mlp.up_proj.weight"] = w(shape.ffn, e)
        out[p + "mlp.down_proj.weight"] = w(e, shape.ffn)
        out[p + "input_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(e)).astype(np.float32)
        out[p + "post_attention_layernorm.weight"] = (1 + 0.1 * rng.standard_normal(e)).astype(np.float32)
    return out


_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


def _gguf_name(hf: str) -> str:
    if hf == "embed_tokens.weight":
        return "token_embd.weight"
    if hf == "norm.weight":
        return "output_norm.weight"
    _, i, rest = hf.split(".", 2)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{i}.{_NAMES[module]}.{kind}"


def write_tiny_llama(
    path: Path,
    qtype: str = "Q8_0",
    embed_type: str | None = None,
    seed: int = 0,
    arch: str = "llama",
    add_bos: bool | None = None,
) -> Path:
    """Write the tiny model to ``path``: matrices in ``qtype`` (F32, Q4_0, Q4_1, Q8_0), the
    tied embedding in ``embed_type`` (default: ``qtype``), norms and biases in F32. ``arch``
    "llama" (Q/K rows permuted as llama.cpp stores them) or "qwen2" (q/k/v biases, no
    permutation). ``add_bos``: the file's ``tokenizer.ggml.add_bos_token`` (None: absent)."""
    import gguf
    from gguf.quants import quantize

    shape = TinyLlama()
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny-llama")
    w.add_block_count(shape.layers)
    w.add_context_length(256)
    w.add_embedding_length(shape.hidden)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(shape.hidden // shape.heads)
    w.add_vocab_size(shape.vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    toks = tokens()
    w.add_token_list(toks)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(toks) - len(SPECIALS)))
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    if add_bos is not None:
        w.add_add_bos_token(add_bos)
    w.add_chat_template(CHATML)
    for hf, value in hf_weights(shape, seed, qkv_bias=arch == "qwen2").items():
        name = _gguf_name(hf)
        if arch == "llama" and name.endswith("attn_q.weight"):
            value = _permute(value, shape.heads)
        elif arch == "llama" and name.endswith("attn_k.weight"):
            value = _permute(value, shape.kv_heads)
        kind = (embed_type or qtype) if name == "token_embd.weight" else qtype
        if value.ndim == 1 or kind == "F32":
            w.add_tensor(name, value)
        else:
            t = gguf.GGMLQuantizationType[kind]
            w.add_tensor(name, quantize(value, t), raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
