"""stagedx runtime: staged tree speculation from a bundle, with no PyTorch dependency.

Imports numpy, onnxruntime, tokenizers and llguidance only (TensorRT / cuda-python lazily, for the
TensorRT backend). ``from stagedx.runtime import Generator`` is the entry point; names are
resolved on first use so that importing a single submodule stays cheap.
"""

from __future__ import annotations

import importlib

# The decoding strategies, named once: the Generator, every --strategy option and bench use it.
# "auto" (the default): the online planner picks each round's proposal (runtime/planner.py).
STRATEGIES = ("baseline", "speculative", "staged", "auto")

_EXPORTS = {
    "Constraint": ".constraint",
    "Generator": ".generator",
    "DecodeOptions": ".request",
    "GenerationResult": ".results",
    "Stats": ".results",
    "Stream": ".results",
    "SamplingConfig": ".sampling",
    "TreeConfig": ".shapes",
}

__all__ = ["STRATEGIES", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stagedx.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
