"""stagedx: staged speculative decoding, exported to ONNX / TensorRT, run without PyTorch.

Importing ``stagedx`` imports nothing heavy; each stage lives in its own subpackage:
``stagedx.export`` (torch, transformers, onnx), ``stagedx.engines`` (TensorRT builder,
Polygraphy), ``stagedx.runtime`` (numpy, onnxruntime, tokenizers) and ``stagedx.bench``.
"""

__version__ = "0.1.0"
