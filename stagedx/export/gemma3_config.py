"""What a Gemma 3 text config.json means for the graph (torch-free: a dict in, a dataclass out).

Read by ``arch.py`` (early refusal, manifest dimensions) and ``gemma3.py`` (the graph), so the
two can never disagree. transformers writes only the fields that differ from its
``Gemma3TextConfig`` defaults into config.json; a missing field therefore means that default
(:data:`DEFAULTS`, checked against transformers' own in the tests), not Llama's.

Accepted: ``model_type`` ``gemma3_text`` (Gemma 3 270M / 1B, and what transformers' GGUF
loader produces for a Gemma 3 file), and the text model of a multimodal ``gemma3`` checkpoint
(4B and up: its ``text_config``; the vision tower is left out, so prompts are text only). Layer kinds come from
``layer_types`` or, in older configs, ``sliding_window_pattern`` (every n-th layer global).
Each kind has its own RoPE: ``rope_local_base_freq`` for the sliding layers, ``rope_theta``
plus the optional ``rope_scaling`` (linear on Gemma 3 4B+) for the global ones; transformers
5 writes both as ``rope_parameters = {"sliding_attention": ..., "full_attention": ...}``.
Refused: bidirectional attention (EmbeddingGemma), attention biases, an activation other than
tanh-GELU, and ``attn_logit_softcapping`` (transformers' Gemma 3 forward does not apply it).
``final_logit_softcapping`` is exported.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import StagedxError
from .configs import Rope, rope_of

FAMILY = "gemma3"
SLIDING, FULL = "sliding_attention", "full_attention"
# transformers' Gemma3TextConfig defaults for the fields read here
DEFAULTS = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "sliding_window_pattern": 6,
    "rope_theta": 1_000_000.0,
    "rope_local_base_freq": 10_000.0,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
    "attention_bias": False,
    "use_bidirectional_attention": False,
}


@dataclass(frozen=True)
class Gemma3Dims:
    """Everything the Gemma 3 forward needs from config.json."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab_size: int
    max_positions: int
    eps: float
    query_scale: float  # query_pre_attn_scalar ** -0.5
    window: int  # sliding layers: keys at distance >= window are masked
    sliding: tuple[bool, ...]  # per layer: sliding-window (local) or global attention
    rope_local: Rope
    rope_global: Rope
    final_softcap: float | None  # logits -> c * tanh(logits / c)
    tied: bool
    family: str = FAMILY


def text_config(cfg: dict) -> dict:
    """The text model's config: ``cfg`` itself (``gemma3_text``), or the ``text_config`` of a
    ``gemma3`` (multimodal) config, whose vision tower the export leaves out."""
    if cfg.get("model_type") != "gemma3":
        return cfg
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        raise StagedxError("gemma3 config without a text_config dict")
    if text.get("model_type", "gemma3_text") != "gemma3_text":
        raise StagedxError(f"unsupported gemma3 text_config model_type {text.get('model_type')!r}")
    return {"tie_word_embeddings": cfg.get("tie_word_embeddings", True), **text, "model_type": "gemma3_text"}


def _get(cfg: dict, key: str):
    return cfg[key] if key in cfg else DEFAULTS[key]


def _int(cfg: dict, key: str) -> int:
    value = _get(cfg, key)
    if value is None:
        raise KeyError(key)
    return int(value)


def layer_kinds(cfg: dict, n_layers: int) -> tuple[bool, ...]:
    """Per layer, True for a sliding-window layer (``layer_types``, else every
    ``sliding_window_pattern``-th layer is global, as in transformers)."""
    types = cfg.get("layer_types")
    if types is None:
        pattern = _int(cfg, "sliding_window_pattern")
        if pattern < 1:
            raise StagedxError(f"gemma3 config has sliding_window_pattern={pattern} (must be >= 1)")
        return tuple(bool((i + 1) % pattern) for i in range(n_layers))
    if not isinstance(types, list) or len(types) != n_layers or set(types) - {SLIDING, FULL}:
        raise StagedxError(
            f"unsupported gemma3 layer_types {types!r} (one of {SLIDING!r} / {FULL!r} per layer, {n_layers} layers)"
        )
    return tuple(t == SLIDING for t in types)


def _ropes(cfg: dict) -> tuple[Rope, Rope]:
    """(sliding, global) RoPE: per-layer-type ``rope_parameters`` (transformers 5) or the
    legacy ``rope_local_base_freq`` / ``rope_theta`` + ``rope_scaling`` (global layers only)."""
    params = cfg.get("rope_parameters")
    max_pos = {"max_position_embeddings": _int(cfg, "max_position_embeddings")}
    if params is not None:
        if not isinstance(params, dict) or not all(isinstance(params.get(k), dict) for k in (SLIDING, FULL)):
            raise StagedxError(f"unsupported gemma3 rope_parameters {params!r} (expected {SLIDING!r} and {FULL!r})")
        local = {**params[SLIDING]}
        full = {**params[FULL]}
        local.setdefault("rope_theta", _get(cfg, "rope_local_base_freq"))
        full.setdefault("rope_theta", _get(cfg, "rope_theta"))
    else:
        local = {"rope_type": "default", "rope_theta": _get(cfg, "rope_local_base_freq")}
        full = {**(cfg.get("rope_scaling") or {}), "rope_theta": _get(cfg, "rope_theta")}
    return (
        rope_of({**max_pos, "rope_parameters": local}, FAMILY),
        rope_of({**max_pos, "rope_parameters": full}, FAMILY),
    )


def _refusals(cfg: dict) -> None:
    act = cfg.get("hidden_activation", cfg.get("hidden_act")) or DEFAULTS["hidden_activation"]
    if act != "gelu_pytorch_tanh":
        raise StagedxError(f"unsupported gemma3 hidden_activation {act!r} (only gelu_pytorch_tanh)")
    if _get(cfg, "use_bidirectional_attention"):
        raise StagedxError("unsupported gemma3 config: use_bidirectional_attention is true (an embedding model)")
    if _get(cfg, "attention_bias"):
        raise StagedxError("unsupported gemma3 config: attention_bias is true")
    if _get(cfg, "attn_logit_softcapping") is not None:
        raise StagedxError(
            "unsupported gemma3 attn_logit_softcapping (transformers' Gemma 3 attention does not apply it, "
            "so there is no reference to export against; Gemma 3 checkpoints set it null)"
        )


def gemma3_dims(cfg: dict) -> Gemma3Dims:
    """Read a ``gemma3_text`` (or text-only ``gemma3``) config.json dict; raises StagedxError on
    what is refused, KeyError / TypeError / ValueError on a malformed field."""
    cfg = text_config(cfg)
    _refusals(cfg)
    heads, kv_heads, n_layers = (
        _int(cfg, "num_attention_heads"),
        _int(cfg, "num_key_value_heads"),
        _int(cfg, "num_hidden_layers"),
    )
    if heads % kv_heads:
        raise StagedxError(
            f"gemma3 config has num_attention_heads={heads} not a multiple of num_key_value_heads={kv_heads}"
        )
    sliding = layer_kinds(cfg, n_layers)
    window = _get(cfg, "sliding_window")
    if window is None or int(window) < 1:
        if any(sliding):
            raise StagedxError(f"gemma3 config has sliding layers but sliding_window={window!r}")
        window = 1
    scalar = float(_get(cfg, "query_pre_attn_scalar"))
    if scalar <= 0:
        raise StagedxError(f"gemma3 config has query_pre_attn_scalar={scalar} (must be > 0)")
    softcap = _get(cfg, "final_logit_softcapping")
    rope_local, rope_global = _ropes(cfg)
    return Gemma3Dims(
        n_layers=n_layers,
        n_heads=heads,
        n_kv_heads=kv_heads,
        head_dim=_int(cfg, "head_dim"),
        hidden=_int(cfg, "hidden_size"),
        intermediate=_int(cfg, "intermediate_size"),
        vocab_size=_int(cfg, "vocab_size"),
        max_positions=_int(cfg, "max_position_embeddings"),
        eps=float(_get(cfg, "rms_norm_eps")),
        query_scale=scalar**-0.5,
        window=int(window),
        sliding=sliding,
        rope_local=rope_local,
        rope_global=rope_global,
        final_softcap=None if softcap is None else float(softcap),
        tied=bool(_get(cfg, "tie_word_embeddings")),
    )
