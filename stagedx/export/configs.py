"""What each family's config.json means for the graph (torch-free: plain dicts in, dataclasses out).

``arch.py`` reads these to describe and refuse checkpoints before anything heavy is imported;
``llama.py`` (and ``qwen2.py`` / ``mistral.py``, which reuse its forward) build from them. One
place decides what is supported, so the early refusal and the graph can never disagree:

- RoPE: plain, ``linear`` and ``llama3`` scaling; ``dynamic``, ``yarn``, ``longrope``, ... and
  partial rotary embeddings are refused, naming the type;
- Qwen2 ``use_sliding_window: true`` is refused (its per-layer window switch is not exported);
- Mistral's and Phi-3's ``sliding_window`` is exported (the graph masks keys further back than
  the window); Phi-3's 128k variants (``longrope``) are refused with the other RoPE types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import StagedxError
from ..manifest import ArchDims

ROPE_TYPES = ("default", "linear", "llama3")


@dataclass(frozen=True)
class Rope:
    """RoPE frequencies: ``theta`` and an optional scaling of the inverse frequencies."""

    theta: float = 10000.0
    kind: str = "default"  # one of ROPE_TYPES
    factor: float = 1.0  # linear and llama3
    low_freq_factor: float = 1.0  # llama3 only
    high_freq_factor: float = 4.0  # llama3 only
    original_max_positions: int = 8192  # llama3 only


def _rope_dict(cfg: dict) -> dict:
    """The RoPE parameters of a config.json dict, old (``rope_scaling`` + ``rope_theta``) or
    transformers 5 (``rope_parameters``) layout, as one flat dict with ``rope_type`` and
    ``rope_theta``. As in transformers, ``rope_scaling`` wins when both are given."""
    given = {}
    for key in ("rope_parameters", "rope_scaling"):
        value = cfg.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise StagedxError(f"unsupported {key}: {value!r} (expected a dict)")
        if any(isinstance(v, dict) for v in value.values()):
            raise StagedxError(f"unsupported {key}: per-layer RoPE parameters {sorted(value)}")
        given[key] = value
    params = dict(given.get("rope_scaling") or given.get("rope_parameters") or {})
    if "type" in params:
        params.setdefault("rope_type", params.pop("type"))
    params.setdefault("rope_type", "default")
    theta = (
        params.get("rope_theta")
        or cfg.get("rope_theta")
        or (given.get("rope_parameters") or {}).get("rope_theta")
        or 10000.0
    )
    params["rope_theta"] = theta
    return params


def rope_of(cfg: dict, family: str) -> Rope:
    """The RoPE of a config.json dict; anything but plain, linear or llama3 is refused."""
    p = _rope_dict(cfg)
    kind = str(p["rope_type"])
    if kind not in ROPE_TYPES:
        raise StagedxError(f"unsupported {family} rope_scaling type {kind!r} (exported: {', '.join(ROPE_TYPES)}): {p}")
    partial = p.get("partial_rotary_factor", cfg.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise StagedxError(f"unsupported {family} partial_rotary_factor {partial} (only 1.0)")
    theta = float(p.get("rope_theta", 10000.0))
    if kind == "default":
        if p.get("factor", 1.0) not in (1, 1.0):
            raise StagedxError(f"unsupported {family} rope_scaling {p} (type default with a factor)")
        return Rope(theta=theta)
    try:
        factor = float(p["factor"])
        if kind == "linear":
            return Rope(theta=theta, kind=kind, factor=factor)
        return Rope(
            theta=theta,
            kind=kind,
            factor=factor,
            low_freq_factor=float(p["low_freq_factor"]),
            high_freq_factor=float(p["high_freq_factor"]),
            original_max_positions=int(
                p.get("original_max_position_embeddings")
                or cfg.get("original_max_position_embeddings")
                or cfg["max_position_embeddings"]
            ),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise StagedxError(f"malformed {family} rope_scaling {p}: missing or bad {exc}") from exc


@dataclass(frozen=True)
class DecoderDims:
    """Everything the Llama-style forward (llama / qwen2 / mistral / phi3) needs from config.json."""

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab_size: int
    max_positions: int
    eps: float
    rope: Rope
    qkv_bias: bool  # q_proj / k_proj / v_proj carry a bias (Qwen2, Llama attention_bias)
    o_bias: bool  # o_proj carries a bias (Llama attention_bias only)
    mlp_bias: bool
    tied: bool  # lm_head is the embedding matrix
    window: int | None = None  # sliding-window attention: keys at distance >= window are masked

    def arch(self) -> ArchDims:
        """The manifest's record of these dimensions."""
        return ArchDims(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ArchDims)})


def _int(cfg: dict, key: str, default=None) -> int:
    value = cfg.get(key, default)
    if value is None:
        raise KeyError(key)
    return int(value)


def _qwen2_window(cfg: dict) -> None:
    if cfg.get("use_sliding_window"):
        raise StagedxError(
            "unsupported qwen2 config: use_sliding_window is true (Qwen2's per-layer sliding "
            "window, max_window_layers, is not exported; released Qwen2/2.5 checkpoints set it false)"
        )
    kinds = set(cfg.get("layer_types") or ())
    if kinds - {"full_attention"}:
        raise StagedxError(f"unsupported qwen2 layer_types {sorted(kinds)} (only full_attention)")


def decoder_dims(cfg: dict, family: str) -> DecoderDims:
    """Read a llama / qwen2 / mistral / phi3 config.json dict; raises StagedxError on what is
    refused."""
    if cfg.get("hidden_act", "silu") != "silu":
        raise StagedxError(f"unsupported {family} hidden_act {cfg['hidden_act']!r} (only silu)")
    heads, hidden = _int(cfg, "num_attention_heads"), _int(cfg, "hidden_size")
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    if heads % kv_heads:
        raise StagedxError(
            f"{family} config has num_attention_heads={heads} not a multiple of num_key_value_heads={kv_heads}"
        )
    head_dim = cfg.get("head_dim")
    if head_dim is None and hidden % heads:
        raise StagedxError(
            f"{family} config has hidden_size={hidden} not divisible by num_attention_heads={heads} and no head_dim"
        )
    window = None
    if family == "llama":
        qkv_bias = o_bias = bool(cfg.get("attention_bias", False))
    elif family == "qwen2":
        _qwen2_window(cfg)
        qkv_bias, o_bias = True, False
    else:  # mistral / phi3: no biases, optional sliding window
        qkv_bias = o_bias = False
        if cfg.get("sliding_window") is not None:
            window = _int(cfg, "sliding_window")
            if window < 1:
                raise StagedxError(f"{family} config has sliding_window={window} (must be >= 1)")
    return DecoderDims(
        family=family,
        n_layers=_int(cfg, "num_hidden_layers"),
        n_heads=heads,
        n_kv_heads=kv_heads,
        head_dim=int(head_dim) if head_dim is not None else hidden // heads,
        hidden=hidden,
        intermediate=_int(cfg, "intermediate_size"),
        vocab_size=_int(cfg, "vocab_size"),
        max_positions=_int(cfg, "max_position_embeddings"),
        eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope=rope_of(cfg, family),
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        tied=bool(cfg.get("tie_word_embeddings", False)),
        window=window,
    )
