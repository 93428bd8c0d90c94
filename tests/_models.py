"""Tiny random-weight GPT-2 checkpoints for tests (saved like real Hugging Face checkpoints).

Default GPT-2 init (std 0.02) gives logits of order 0.01: every tolerance passes and every
distribution is uniform. ``weight_scale`` multiplies the init so that logits are of order
several units, biases and LayerNorm affine terms are randomised so their code paths count.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAIR = ROOT / "models" / "stdlib-code-pair"
STDLIB_TOKENIZER_DIR = PAIR / "oracle"
STDLIB_VOCAB = 8192
EOT = "<|endoftext|>"
# Characters of the small char-level vocabularies, most useful first (id 0 is EOT).
CHARS = " \netaoinsrhldcumfpgwybvkxjqz():=.,_0123456789[]+-*/'\"#<>!{}"
DEFAULT_WEIGHT_SCALE = 16.0  # tiny stdlib-vocab model: max|logit| ~10, top prob ~0.08


def write_char_tokenizer(folder: Path, vocab_size: int) -> None:
    """A char-level WordLevel tokenizer with ``vocab_size`` tokens; id 0 = <|endoftext|>
    (also the unknown token), decoding concatenates characters. Beyond the characters, the
    vocabulary is padded with ``<unused{i}>`` tokens that no text encodes to (a large
    vocabulary at no cost)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    if vocab_size < 2:
        raise ValueError(f"char vocab must have at least 2 tokens, got {vocab_size}")
    vocab = {EOT: 0, **{c: i + 1 for i, c in enumerate(CHARS[: vocab_size - 1])}}
    vocab.update({f"<unused{i}>": i for i in range(len(vocab), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token=EOT))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([EOT])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "tokenizer_class": "TokenizersBackend"})
    )


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


def _randomise(model, weight_scale: float, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                p.copy_(0.02 * weight_scale * noise)
            else:
                p.copy_(0.02 * weight_scale * noise)


def _perturb(model, scale: float, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed + 10_000)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.float().std() * torch.randn(p.shape, generator=gen))


def make_gpt2_checkpoint(
    path,
    *,
    n_layer: int = 2,
    n_embd: int = 32,
    n_head: int = 2,
    vocab="stdlib",
    n_positions: int = 256,
    seed: int = 0,
    weight_scale: float = DEFAULT_WEIGHT_SCALE,
    perturb_from=None,
    perturb_scale: float = 0.0,
) -> Path:
    """Save a random ``GPT2LMHeadModel`` + tokenizer.json at ``path`` and return it.

    ``vocab``: "stdlib" (the vendored pair's 8192-token BPE) or an int (char-level, padded
    with unused tokens above 65).
    ``perturb_from``: copy that checkpoint (its dims and tokenizer; the dims arguments are
    ignored) and add Gaussian noise of ``perturb_scale`` x each tensor's std, so it makes a
    draft that often agrees with the source.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if perturb_from is not None:
        model = GPT2LMHeadModel.from_pretrained(perturb_from, dtype=torch.float32)
        _perturb(model, perturb_scale, seed)
        _copy_tokenizer(Path(perturb_from), path)
    else:
        vocab_size = _vocab_size(vocab)
        config = GPT2Config(
            n_layer=n_layer,
            n_embd=n_embd,
            n_head=n_head,
            vocab_size=vocab_size,
            n_positions=n_positions,
            bos_token_id=0,
            eos_token_id=0,
        )
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        _randomise(model, weight_scale, seed)
        _write_tokenizer(path, vocab)
    model.eval().save_pretrained(path)
    return path


def _vocab_size(vocab) -> int:
    return STDLIB_VOCAB if vocab == "stdlib" else int(vocab)


def _write_tokenizer(path: Path, vocab) -> None:
    """The vendored stdlib tokenizer (``vocab="stdlib"``) or a char-level one of that size."""
    if vocab == "stdlib":
        _copy_tokenizer(STDLIB_TOKENIZER_DIR, path)
    else:
        write_char_tokenizer(path, _vocab_size(vocab))


def _randomise_llama(model, weight_scale: float, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("norm.weight"):  # RMSNorm gains
                p.copy_(1.0 + 0.2 * noise)
            else:  # weights and (attention_bias / mlp_bias) biases
                p.copy_(0.02 * weight_scale * noise)


DECODER_CLASSES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
    "mistral": ("MistralConfig", "MistralForCausalLM"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM"),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM"),
}


def make_decoder_checkpoint(
    path,
    family: str = "llama",
    *,
    n_layer: int = 2,
    hidden: int = 32,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    vocab="stdlib",
    max_positions: int = 256,
    seed: int = 0,
    weight_scale: float = DEFAULT_WEIGHT_SCALE,
    **config,
) -> Path:
    """Save a random llama / qwen2 / mistral / phi3 / gemma3 ``*ForCausalLM`` + tokenizer.json at ``path``.

    ``vocab`` as for :func:`make_gpt2_checkpoint`; ``config``: further config fields
    (``tie_word_embeddings``, ``head_dim``, ``rope_theta``, ``rope_scaling``,
    ``attention_bias``, ``sliding_window``, ...). Tied embeddings by default, SwiGLU width
    2 x hidden.
    """
    import torch
    import transformers

    cfg_name, model_name = DECODER_CLASSES[family]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"tie_word_embeddings": True, "intermediate_size": 2 * hidden, **config}
    cfg = getattr(transformers, cfg_name)(
        num_hidden_layers=n_layer,
        hidden_size=hidden,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        vocab_size=_vocab_size(vocab),
        max_position_embeddings=max_positions,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=None,
        **config,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(cfg)
    _randomise_llama(model, weight_scale, seed)
    _write_tokenizer(path, vocab)
    if family == "gemma3":  # as Gemma's own tokenizer config says: every text starts with <bos>
        tok_config = path / "tokenizer_config.json"
        d = json.loads(tok_config.read_text()) if tok_config.is_file() else {}
        tok_config.write_text(json.dumps({**d, "add_bos_token": True}))
    model.eval().save_pretrained(path)
    return path


def make_llama_checkpoint(path, **kwargs) -> Path:
    """:func:`make_decoder_checkpoint` of the llama family."""
    return make_decoder_checkpoint(path, "llama", **kwargs)
