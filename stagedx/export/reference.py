"""transformers' fp32 reference outputs, computed with one weight matrix in memory at a time.

The verification compares our graph with transformers' own model in fp32. Loading that model
whole costs 4 bytes per parameter (12 GB for a 3B model): more than the exported graph itself
when it is fp16. Instead the transformers model is built with its parameters on the ``meta``
device (buffers such as the rotary frequencies are real), and each module that owns
parameters gets them from the checkpoint, in fp32, just before its forward and drops them
right after. The arithmetic is transformers' own, unchanged; the verification tree is scored
in one batched forward (:func:`stagedx.export.verify.reference_outputs`), so the checkpoint is
read once more in all.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import StagedxError
from .weights import Weights, short_name


@contextlib.contextmanager
def _parameters_on_meta():
    """Every parameter registered inside goes to the meta device (buffers stay on the CPU)."""
    register = nn.Module.register_parameter

    def on_meta(module, name, param):
        register(module, name, param)
        if param is not None:
            module._parameters[name] = nn.Parameter(param.to("meta"), requires_grad=False)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


class _Streamer:
    """Forward hooks that give a module its fp32 parameters for the time of its forward."""

    def __init__(self, weights: Weights, names: dict, tied_to: str | None):
        self.weights, self.names, self.tied_to = weights, names, tied_to  # names: id(module) -> prefix

    def _tensor(self, key: str, like) -> torch.Tensor:
        if key not in self.weights and key == "lm_head.weight" and self.tied_to is not None:
            key = self.tied_to
        tensor = self.weights[key]
        if tuple(tensor.shape) != tuple(like.shape):
            raise StagedxError(
                f"corrupt weights in {self.weights.folder}: {key} has shape "
                f"{tuple(tensor.shape)}, the config needs {tuple(like.shape)}"
            )
        return tensor.float()

    def load(self, module, _args):
        prefix = self.names[id(module)]
        module._stagedx_meta = dict(module._parameters)
        for name, param in module._stagedx_meta.items():
            if param is not None:
                key = short_name(f"{prefix}.{name}" if prefix else name)
                module._parameters[name] = nn.Parameter(self._tensor(key, param), requires_grad=False)

    @staticmethod
    def drop(module, _args, _output):
        module._parameters.update(module._stagedx_meta)
        del module._stagedx_meta


def streamed_model(path, hf_class: str):
    """The transformers ``hf_class`` model of checkpoint folder ``path``, eval mode, fp32,
    whose parameters are read from disk while each module runs."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except Exception as exc:  # transformers raises many types
        raise StagedxError(f"cannot read config.json in {path}: {' '.join(str(exc).split())[:300]}") from exc
    cls = getattr(transformers, hf_class)
    if not isinstance(config, cls.config_class):  # a multimodal config: its text model (Gemma 3)
        config = config.get_text_config()
    config.dtype = torch.float32
    with _parameters_on_meta():
        model = cls(config)
    model.eval()
    names = {id(m): n for n, m in model.named_modules()}
    embed = model.get_input_embeddings()
    tied_to = short_name(f"{names[id(embed)]}.weight")
    streamer = _Streamer(Weights(path), names, tied_to)
    for module in model.modules():
        if any(p is not None for p in module._parameters.values()):
            module.register_forward_pre_hook(streamer.load)
            module.register_forward_hook(streamer.drop)
    return model
