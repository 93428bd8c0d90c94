"""Architecture registry: which checkpoints export knows, and how to build each one's graph.

An entry (:class:`ArchSpec`) says which ``model_type`` values it covers, which transformers
class loads the fp32 reference, how to read the graph dimensions off the config and how to
build our own export module from the checkpoint's weights. Registered: GPT-2 (``gpt2.py``),
Llama (``llama.py``: RoPE with optional linear / llama3 scaling, RMSNorm, GQA, SwiGLU), Qwen2
(``qwen2.py``: the Llama forward with q/k/v bias) and Mistral (``mistral.py``: the Llama forward
with a sliding window), Phi-3 (``phi3.py``: Mistral's graph, fused tensors) and Gemma 3 text
(``gemma3.py``: its own forward, local and global layers). What each
config.json may say is decided in ``configs.py``. Adding a family means writing
``<family>.py`` with a ``build_<family>_graph`` and registering one more :class:`ArchSpec`;
nothing else changes.

Only :func:`load_reference` imports torch / transformers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import StagedxError
from ..manifest import ArchDims
from .configs import decoder_dims
from .gemma3_config import gemma3_dims

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass(frozen=True)
class ArchSpec:
    family: str
    model_types: tuple[str, ...]
    hf_class: str  # transformers class holding the reference implementation
    dims: Callable[[dict], ArchDims]  # config.json dict -> graph dimensions
    # (config.json dict, Weights, topk, torch dtype) -> torch.nn.Module (graph contract)
    build_graph: Callable


def _gpt2_dims(cfg: dict) -> ArchDims:
    heads, hidden = int(cfg["n_head"]), int(cfg["n_embd"])
    if hidden % heads:
        raise StagedxError(f"GPT-2 config has n_embd={hidden} not divisible by n_head={heads}")
    return ArchDims(
        family="gpt2",
        n_layers=int(cfg["n_layer"]),
        n_heads=heads,
        n_kv_heads=heads,
        head_dim=hidden // heads,
        hidden=hidden,
        vocab_size=int(cfg["vocab_size"]),
        max_positions=int(cfg["n_positions"]),
    )


def _build_gpt2(cfg: dict, weights, topk: int, dtype):
    from .gpt2 import build_gpt2_graph

    return build_gpt2_graph(cfg, weights, topk, dtype)


REGISTRY: dict[str, ArchSpec] = {}


def register(spec: ArchSpec) -> None:
    for model_type in spec.model_types:
        REGISTRY[model_type] = spec


# gpt2, gpt2-medium/-large/-xl, distilgpt2 and the stdlib pair all have model_type "gpt2".
register(ArchSpec("gpt2", ("gpt2",), "GPT2LMHeadModel", _gpt2_dims, _build_gpt2))


def _decoder_dims(family: str) -> Callable[[dict], ArchDims]:
    def dims(cfg: dict) -> ArchDims:
        return decoder_dims(cfg, family).arch()

    return dims


def _build_llama(cfg: dict, weights, topk: int, dtype):
    from .llama import build_llama_graph

    return build_llama_graph(cfg, weights, topk, dtype)


def _build_qwen2(cfg: dict, weights, topk: int, dtype):
    from .qwen2 import build_qwen2_graph

    return build_qwen2_graph(cfg, weights, topk, dtype)


def _build_mistral(cfg: dict, weights, topk: int, dtype):
    from .mistral import build_mistral_graph

    return build_mistral_graph(cfg, weights, topk, dtype)


def _build_phi3(cfg: dict, weights, topk: int, dtype):
    from .phi3 import build_phi3_graph

    return build_phi3_graph(cfg, weights, topk, dtype)


# Llama 1/2/3.x and look-alikes with model_type "llama" (plain, linear or llama3 RoPE).
register(ArchSpec("llama", ("llama",), "LlamaForCausalLM", _decoder_dims("llama"), _build_llama))
# Qwen2 and Qwen2.5 (model_type "qwen2"), without use_sliding_window.
register(ArchSpec("qwen2", ("qwen2",), "Qwen2ForCausalLM", _decoder_dims("qwen2"), _build_qwen2))
# Mistral 7B v0.1 (sliding window 4096), v0.2+ (no window), Nemo-style head_dim.
register(ArchSpec("mistral", ("mistral",), "MistralForCausalLM", _decoder_dims("mistral"), _build_mistral))
# Phi-3 mini / medium 4k (fused qkv and gate_up; sliding window); longrope (128k) is refused.
register(ArchSpec("phi3", ("phi3",), "Phi3ForCausalLM", _decoder_dims("phi3"), _build_phi3))


def _gemma3_dims(cfg: dict) -> ArchDims:
    d = gemma3_dims(cfg)
    return ArchDims(
        family=d.family,
        n_layers=d.n_layers,
        n_heads=d.n_heads,
        n_kv_heads=d.n_kv_heads,
        head_dim=d.head_dim,
        hidden=d.hidden,
        vocab_size=d.vocab_size,
        max_positions=d.max_positions,
    )


def _build_gemma3(cfg: dict, weights, topk: int, dtype):
    from .gemma3 import build_gemma3_graph

    return build_gemma3_graph(cfg, weights, topk, dtype)


# Gemma 3 text (270M, 1B; what transformers' GGUF loader makes of a Gemma 3 file) and the text
# model of multimodal gemma3 checkpoints (4B+): local and global layers, q/k norms, (1+w)
# RMSNorm, tanh-GELU; configs decided in gemma3_config.py.
register(ArchSpec("gemma3", ("gemma3_text", "gemma3"), "Gemma3ForCausalLM", _gemma3_dims, _build_gemma3))


def supported() -> str:
    return ", ".join(sorted(REGISTRY))


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint folder plus what its config.json says."""

    name: str  # as the user gave it
    path: Path
    config: dict
    spec: ArchSpec

    @property
    def dims(self) -> ArchDims:
        return self.spec.dims(self.config)

    @property
    def tokenizer_file(self) -> Path | None:
        p = self.path / "tokenizer.json"
        return p if p.is_file() else None

    def chat_template(self) -> str | None:
        """The tokenizer's chat template: ``chat_template.jinja``, else ``chat_template`` in
        tokenizer_config.json (a string, or a list of named templates: the "default" one)."""
        jinja = self.path / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text()
        config = self.path / "tokenizer_config.json"
        value = _read_json(config).get("chat_template") if config.is_file() else None
        if isinstance(value, list):
            named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
            value = named.get("default")
        return value if isinstance(value, str) and value.strip() else None

    def special_token(self, key: str) -> int | None:
        value = self.config.get(key)
        if value is None:
            gen = self.path / "generation_config.json"
            if gen.is_file():
                value = _read_json(gen).get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        return None if value is None else int(value)

    def add_bos_token(self) -> bool:
        """Does the model expect ``bos_token_id`` before every text (Gemma does, SmolLM2 does
        not)? tokenizer_config.json's ``add_bos_token`` when it says (a GGUF file's
        ``tokenizer.ggml.add_bos_token`` lands there), else what tokenizer.json's
        post-processor does to a text encoded with special tokens."""
        bos = self.special_token("bos_token_id")
        if bos is None or self.tokenizer_file is None:
            return False
        config = self.path / "tokenizer_config.json"
        value = _read_json(config).get("add_bos_token") if config.is_file() else None
        if isinstance(value, bool):
            return value
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.tokenizer_file))
        with_special = tok.encode("a", add_special_tokens=True).ids
        return with_special[:1] == [bos] and with_special != tok.encode("a", add_special_tokens=False).ids

    def source(self) -> dict:
        out = {
            "checkpoint": self.name,
            "model_type": self.config.get("model_type"),
            "architectures": list(self.config.get("architectures") or []),
        }
        gguf = self.path / "gguf_source.json"  # written when export read a GGUF file (gguf.py)
        if gguf.is_file():
            out["gguf"] = _read_json(gguf)
        return out


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StagedxError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise StagedxError(f"{path} is not a JSON object")
    return data


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_checkpoint(name: str) -> Path:
    """A local folder, or a hub id looked up in the local Hugging Face cache (never online)."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise StagedxError(f"not a checkpoint folder: {path} is a file")
        return path
    if _looks_like_path(name):
        raise StagedxError(f"checkpoint folder not found: {path}")
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError as exc:
        raise StagedxError(f"checkpoint folder not found: {path} (huggingface_hub missing)") from exc
    try:
        return Path(snapshot_download(repo_id=name, local_files_only=True))
    except Exception as exc:  # any failure means "not in the local cache"
        raise StagedxError(
            f"checkpoint not found: {name!r} is neither a local folder nor a model in the local "
            f"Hugging Face cache ({constants.HF_HUB_CACHE}); stagedx works offline, download it "
            f"first or pass a folder"
        ) from exc


def open_checkpoint(name: str) -> Checkpoint:
    """Resolve ``name`` and check that it is a checkpoint of a supported architecture."""
    path = resolve_checkpoint(name)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise StagedxError(f"not a checkpoint: {path} has no config.json")
    config = _read_json(cfg_file)
    model_type = config.get("model_type")
    spec = REGISTRY.get(model_type)
    if spec is None:
        raise StagedxError(f"unsupported architecture {model_type!r} in {path} (supported model types: {supported()})")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise StagedxError(f"not a checkpoint: {path} has no weights ({' / '.join(WEIGHT_FILES)})")
    try:
        spec.dims(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise StagedxError(f"malformed config.json in {path}: missing or bad {exc}") from exc
    return Checkpoint(name=name, path=path, config=config, spec=spec)


def load_reference(ckpt: Checkpoint):
    """The transformers model in fp32, eval mode; corrupt or incomplete weights are refused."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    cls = getattr(transformers, ckpt.spec.hf_class)
    try:
        model, info = cls.from_pretrained(ckpt.path, dtype=torch.float32, output_loading_info=True)
    except Exception as exc:  # safetensors / torch raise many types
        msg = " ".join(str(exc).split())[:300]
        raise StagedxError(f"corrupt or unreadable weights in {ckpt.path}: {msg}") from exc
    missing = [k for k in info.get("missing_keys", ()) if "attn.bias" not in k]
    if missing or info.get("mismatched_keys"):
        bad = missing or [m[0] if isinstance(m, tuple) else m for m in info["mismatched_keys"]]
        raise StagedxError(
            f"corrupt weights in {ckpt.path}: {len(bad)} tensors missing or mis-shaped (first: {bad[0]})"
        )
    return model.eval()
