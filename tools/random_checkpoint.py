"""Write a random-weight Hugging Face checkpoint of a real model shape, one tensor at a time.

For measuring export (time, peak memory, logit error) at realistic sizes without downloading
anything: the model is described on the ``meta`` device, and model.safetensors is written
tensor by tensor, so a 3B fp16 checkpoint needs ~0.1 GB of memory, not 6.4 GB. The tokenizer
is the vendored stdlib-code tokenizer (8192 tokens; any larger vocab_size is accepted).

    python tools/random_checkpoint.py gpt2-large /tmp/ck/gpt2l --dtype fp32
    python tools/random_checkpoint.py llama-3.2-3b /tmp/ck/llama3b --dtype fp16
    python tools/random_checkpoint.py gemma3-draft /tmp/ck/g3draft --tokenizer /work/cache/gemma3-270m
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = ROOT / "models" / "stdlib-code-pair" / "oracle"

# Llama 3.2's RoPE scaling (1B and 3B alike)
LLAMA32_ROPE = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
# config class, model class, config fields (published configurations of these models)
SHAPES = {
    "gpt2-large": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(n_layer=36, n_embd=1280, n_head=20, vocab_size=50257, n_positions=1024),
    ),
    "llama-3.2-3b": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            num_hidden_layers=28,
            hidden_size=3072,
            num_attention_heads=24,
            num_key_value_heads=8,
            intermediate_size=8192,
            vocab_size=128256,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            rope_theta=500000.0,
            head_dim=128,
            rope_scaling=LLAMA32_ROPE,
        ),
    ),
    "llama-3.2-1b": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            num_hidden_layers=16,
            hidden_size=2048,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=8192,
            vocab_size=128256,
            max_position_embeddings=131072,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            rope_theta=500000.0,
            head_dim=64,
            rope_scaling=LLAMA32_ROPE,
        ),
    ),
    "qwen2.5-0.5b": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(
            num_hidden_layers=24,
            hidden_size=896,
            num_attention_heads=14,
            num_key_value_heads=2,
            intermediate_size=4864,
            vocab_size=151936,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            rope_theta=1000000.0,
            use_sliding_window=False,
            sliding_window=None,
        ),
    ),
    # TinyMistral-248M's shape with Mistral 7B v0.1's window (4096)
    "mistral-248m": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(
            num_hidden_layers=12,
            hidden_size=1024,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=4096,
            vocab_size=32005,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            tie_word_embeddings=False,
            rope_theta=10000.0,
            sliding_window=4096,
        ),
    ),
    # Gemma 3 270M: 18 layers (every 6th global), window 512, 262k vocabulary, tied head
    "gemma3-270m": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            num_hidden_layers=18,
            hidden_size=640,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            intermediate_size=2048,
            vocab_size=262144,
            max_position_embeddings=32768,
            query_pre_attn_scalar=256,
            sliding_window=512,
            sliding_window_pattern=6,
            rope_theta=1_000_000.0,
            rope_local_base_freq=10_000.0,
            tie_word_embeddings=True,
        ),
    ),
    # tiny drafts sharing those vocabularies
    "gpt2-draft": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(n_layer=2, n_embd=64, n_head=2, vocab_size=50257, n_positions=1024),
    ),
    "llama-draft": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=128256,
            max_position_embeddings=131072,
            tie_word_embeddings=True,
        ),
    ),
    "qwen2-draft": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=151936,
            tie_word_embeddings=True,
        ),
    ),
    "mistral-draft": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=128,
            vocab_size=32005,
            sliding_window=4096,
        ),
    ),
    # a window of 6 so that verification trees and short prompts cross it
    "gemma3-draft": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            num_hidden_layers=2,
            hidden_size=64,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=128,
            vocab_size=262144,
            max_position_embeddings=32768,
            query_pre_attn_scalar=16,
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention"],
            tie_word_embeddings=True,
        ),
    ),
}
ST_DTYPES = {"fp32": "F32", "fp16": "F16", "bf16": "BF16"}


def _tensors(model, tied: bool) -> list[tuple[str, tuple]]:
    out = []
    for name, p in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue
        out.append((name, tuple(p.shape)))
    return out


def _value(name: str, shape: tuple, gen, std: float):
    import torch

    noise = torch.randn(shape, generator=gen)
    if name.endswith(("norm.weight", "ln_1.weight", "ln_2.weight", "ln_f.weight", "layernorm.weight")):
        return 1.0 + 0.1 * noise
    if name.endswith("bias"):
        return 0.1 * std * noise
    return std * noise


def write_checkpoint(
    shape: str, out: Path, dtype: str, seed: int = 0, std: float = 0.05, tokenizer_dir: Path = TOKENIZER_DIR
) -> Path:
    import torch
    import transformers

    cfg_cls, model_cls, fields = SHAPES[shape]
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    config = getattr(transformers, cfg_cls)(bos_token_id=0, eos_token_id=0, **fields)
    with torch.device("meta"):
        model = getattr(transformers, model_cls)(config)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    tensors = _tensors(model, tied)
    itemsize = torch.empty(0, dtype=torch_dtype).element_size()
    header, offset = {}, 0
    for name, shp in tensors:
        n = itemsize
        for d in shp:
            n *= d
        header[name] = {"dtype": ST_DTYPES[dtype], "shape": list(shp), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    with open(out / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        for name, shp in tensors:
            value = _value(name, shp, gen, std).to(torch_dtype).contiguous()
            f.write(memoryview(value.view(torch.uint8).numpy()))
            del value
    config.dtype = torch_dtype
    config.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer_dir / name, out / name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("output", type=Path)
    ap.add_argument("--dtype", choices=sorted(ST_DTYPES), default="fp32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--std", type=float, default=0.05, help="std of the random matrices")
    ap.add_argument(
        "--tokenizer",
        type=Path,
        default=TOKENIZER_DIR,
        help="folder whose tokenizer.json + tokenizer_config.json are copied (default: the vendored 8192-token one)",
    )
    args = ap.parse_args()
    path = write_checkpoint(args.shape, args.output, args.dtype, args.seed, args.std, args.tokenizer)
    size = (path / "model.safetensors").stat().st_size
    print(f"wrote {path} ({size / 1e9:.2f} GB)")


if __name__ == "__main__":
    main()
