"""The two backends behind the ``Runner`` protocol: ONNX Runtime (``ort``, with the host KV
cache in ``kv`` and the CUDA one in ``ort_device``) and TensorRT (``trt``, optional)."""
