"""stagedx.export: checkpoints -> bundle (own model definitions, ONNX export, parity check
vs transformers, n-gram fit, bundle writer). Import submodules directly; this package
imports nothing heavy so that ``stagedx --help`` stays fast."""
