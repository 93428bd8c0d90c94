"""The typed entries of a manifest (models, quantization, draft2, tokenizer, reference logits,
engines); ``Manifest`` itself, loading and writing live in ``stagedx.manifest``. Standard
library only."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import StagedxError
from .check import check_object
from .graph import DEFAULT_IO, TOLERANCE, GraphIO
from .jsonobj import plain, split_known

QUANT_BITS = (4, 8)


@dataclass(frozen=True)
class FileRef:
    file: str
    sha256: str


@dataclass(frozen=True)
class ArchDims:
    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden: int
    vocab_size: int
    max_positions: int


@dataclass(frozen=True)
class QuantEntry:
    """How a model's weights were quantized and how close it stayed to its fp32 graph."""

    method: str  # "matmul-nbits": onnxruntime.quantization.MatMulNBitsQuantizer
    bits: int  # 4 | 8
    block_size: int  # weights per scale along K
    symmetric: bool
    accuracy_level: int  # MatMulNBits accuracy_level (4: int8 activations on CPU)
    ops: tuple[str, ...]  # op types quantized
    tool: str
    fp32_weight_bytes: int
    agreement: float  # greedy next-token agreement with the fp32 graph on held-out text
    max_rel_error: float  # max|q - fp32| / max|fp32| over the held-out logits
    min_agreement: float  # the threshold export enforced
    n_tokens: int  # held-out positions compared
    heldout: str = ""

    @property
    def kind(self) -> str:
        return f"int{self.bits}"

    @staticmethod
    def from_dict(d: dict) -> QuantEntry:
        q = QuantEntry(**{**d, "ops": tuple(d.get("ops", ()))})
        b = q.block_size
        if (
            q.bits not in QUANT_BITS
            or not isinstance(b, int)
            or b < 16
            or b & (b - 1)
            or not 0.0 <= q.agreement <= 1.0
            or not 0.0 <= q.min_agreement <= 1.0
        ):
            raise StagedxError(
                f"manifest.json has an invalid quantization record: bits {q.bits}, "
                f"block size {b}, agreement {q.agreement}"
            )
        return q


@dataclass(frozen=True)
class ModelEntry:
    role: str
    file: str
    sha256: str
    dtype: str
    topk: int
    arch: ArchDims
    n_params: int
    weight_bytes: int
    source: dict
    opset: int = 18
    external_data: FileRef | None = None
    io: dict = field(default_factory=lambda: dict(DEFAULT_IO))
    verify: dict | None = None
    quantization: QuantEntry | None = None

    def io_name(self, key: str, layer: int | None = None) -> str:
        name = self.io[key]
        return name.format(i=layer) if layer is not None else name

    @property
    def graph_io(self) -> GraphIO:
        return GraphIO.from_io(self.io, self.arch.n_layers)


@dataclass(frozen=True)
class NgramEntry:
    file: str
    sha256: str
    order: int
    topk: int
    n_tokens: int
    corpus: tuple[str, ...] = ()


@dataclass(frozen=True)
class Draft2Entry:
    kind: str
    ngram: NgramEntry | None = None


@dataclass(frozen=True)
class TokenizerEntry:
    file: str
    sha256: str
    eos_token_id: int | None
    bos_token_id: int | None
    vocab_size: int
    chat_template: str | None = None  # Jinja2 source from the checkpoint's tokenizer config
    # the model expects bos_token_id before every prompt (Gemma); absent in the JSON when false
    add_bos_token: bool = False


@dataclass(frozen=True)
class ReferenceEntry:
    file: str
    sha256: str
    tolerance: dict | float | None = None  # per precision; a bare number is the fp32 one
    other: dict = field(default_factory=dict)

    def tolerance_for(self, precision: str) -> float:
        """The relative logit tolerance for ``precision`` (a dtype, int8 or int4)."""
        tol = self.tolerance
        if isinstance(tol, dict):
            return float(tol.get(precision, TOLERANCE[precision]))
        if isinstance(tol, (int, float)) and precision == "fp32":
            return float(tol)
        return TOLERANCE[precision]

    @staticmethod
    def from_dict(d: dict) -> ReferenceEntry:
        check_object("reference", d, "an object or null")
        known, other = split_known(ReferenceEntry, d)
        return ReferenceEntry(**{"file": None, "sha256": None, **known}, other=other)

    def to_dict(self) -> dict:
        return plain(self)


@dataclass(frozen=True, kw_only=True)
class EngineEntry:
    role: str | None = None
    file: str
    sha256: str
    onnx_sha256: str | None = None
    tensorrt_version: str | None = None
    gpu_name: str | None = None
    compute_capability: str | None = None
    precision: str | None = None
    max_tree: int | None = None
    max_context: int | None = None
    reserved_slots: int | None = None
    profiles: tuple = ()  # of {input name: {"min": [...], "opt": [...], "max": [...]}}
    built_utc: str | None = None
    other: dict = field(default_factory=dict)

    @staticmethod
    def from_dict(d: dict, where: str = "engines[]") -> EngineEntry:
        check_object(where, d)
        known, other = split_known(EngineEntry, d)
        if "profiles" in known:
            known["profiles"] = tuple(known["profiles"])
        return EngineEntry(**{"file": None, "sha256": None, **known}, other=other)

    def to_dict(self) -> dict:
        d = plain(self)
        if not self.profiles and "profiles" not in self.other:
            d.pop("profiles")
        return d
