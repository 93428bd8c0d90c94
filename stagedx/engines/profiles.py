"""Optimization-profile shapes for one neural model's TensorRT engine (pure functions).

The graph contract has two dynamic dimensions: the number of new tokens ``T`` and the past
length ``P``. TensorRT profiles reject a zero-sized dimension, so the TensorRT runtime keeps
``R = kv_reserved_slots["tensorrt"]`` dummy rows (always masked out) at the front of every KV
cache: the past it binds is ``R + length`` rows, never empty. ``max_context`` counts committed
plus new rows, so ``P + T <= R + max_context`` and the past is at most ``R + max_context - 1``.
Prompts longer than ``max_tree`` are fed in chunks of at most ``max_tree`` tokens by the runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import StagedxError
from ..manifest import ModelEntry

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ProfileSpec:
    """What one engine must accept: up to ``max_tree`` new tokens over up to ``max_context``
    rows, with ``reserved`` dummy KV rows in front."""

    max_tree: int
    max_context: int
    reserved: int = 1

    @property
    def min_past(self) -> int:
        return max(1, self.reserved)

    @property
    def max_past(self) -> int:
        return self.reserved + self.max_context - 1

    @property
    def opt_tree(self) -> int:
        return self.max_tree

    @property
    def opt_past(self) -> int:
        return max(self.min_past, min(self.max_past, self.reserved + self.max_context // 2))

    def as_dict(self) -> dict:
        return {"max_tree": self.max_tree, "max_context": self.max_context, "reserved_slots": self.reserved}


@dataclass(frozen=True)
class DimRange:
    """min / opt / max shapes of one input, as TensorRT's ``IOptimizationProfile.set_shape``
    takes them."""

    min: Shape
    opt: Shape
    max: Shape

    def as_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def check_spec(spec: ProfileSpec, max_positions: int) -> None:
    """Reject ranges no engine can serve, with one clear line."""
    if spec.max_tree < 1:
        raise StagedxError(f"--max-tree must be at least 1 (got {spec.max_tree})")
    if spec.max_context < 2:
        raise StagedxError(f"--max-context must be at least 2 (got {spec.max_context})")
    if spec.max_tree > spec.max_context:
        raise StagedxError(f"--max-tree ({spec.max_tree}) cannot exceed --max-context ({spec.max_context})")
    if spec.max_context > max_positions:
        raise StagedxError(f"--max-context ({spec.max_context}) exceeds the model's {max_positions} positions")
    if spec.reserved < 1:
        raise StagedxError(
            "TensorRT needs at least one reserved KV slot (manifest kv_reserved_slots.tensorrt "
            f"is {spec.reserved}): profiles cannot hold an empty past"
        )


def profile_shapes(entry: ModelEntry, spec: ProfileSpec) -> dict[str, DimRange]:
    """One ``DimRange`` per graph input of ``entry`` (names from its ``io`` map)."""
    a, io = entry.arch, entry.graph_io
    t = (1, spec.opt_tree, spec.max_tree)
    p = (spec.min_past, spec.opt_past, spec.max_past)
    shapes: dict[str, DimRange] = {
        io.input_ids: _ranges(lambda k: (t[k],)),  # [T]
        io.position_ids: _ranges(lambda k: (t[k],)),  # [T]
        io.tree_mask: _ranges(lambda k: (t[k], p[k] + t[k])),  # [T, P+T]
    }
    kv = _ranges(lambda k: (p[k], a.n_kv_heads, a.head_dim))  # [P, H, D]
    shapes.update(dict.fromkeys(io.past, kv))
    return shapes


def _ranges(shape_at) -> DimRange:
    return DimRange(min=shape_at(0), opt=shape_at(1), max=shape_at(2))


def shapes_as_dict(shapes: dict[str, DimRange]) -> dict:
    return {name: r.as_dict() for name, r in shapes.items()}


def fits_profile(shapes: dict, feed_shapes: dict[str, Shape]) -> str | None:
    """``None`` when every shape in ``feed_shapes`` lies inside the recorded profile
    (``shapes_as_dict`` form), else a one-line reason."""
    for name, shape in feed_shapes.items():
        r = shapes.get(name)
        if r is None:
            return f"input {name!r} has no profile"
        lo, hi = r["min"], r["max"]
        if len(shape) != len(lo):
            return f"input {name!r} has rank {len(shape)}, profile rank {len(lo)}"
        for d, (s, a, b) in enumerate(zip(shape, lo, hi)):
            if not a <= s <= b:
                return f"input {name!r} dim {d} is {s}, outside the profile range [{a}, {b}]"
    return None
