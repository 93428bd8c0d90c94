"""GGUF files as an export input: weights, config, tokenizer and chat template from one file.

``stagedx export model.gguf --draft draft.gguf|folder`` opens a GGUF file by turning it into an
ordinary Hugging Face checkpoint folder in a temporary directory (removed when the export
ends), through transformers' GGUF support (the ``gguf`` package reads the file; transformers
maps llama.cpp's tensor names, undoes llama.cpp's Q/K row permutation and dequantizes the
blocks to fp32, builds the config from the metadata and the fast tokenizer from the
``tokenizer.ggml.*`` arrays). The rest of export then runs unchanged: the family is chosen by
the config's ``model_type`` (:mod:`stagedx.export.arch`), so a family registered there (llama,
qwen2, mistral, phi3, gemma3, ...) is a GGUF input as soon as transformers reads its GGUF.

What the file was is recorded in the manifest (``source.gguf``: file name, sha256, tensor
types); :mod:`stagedx.export.gguf_blocks` can carry its block-quantized weights into the
quantized graph as they are (``--quantize gguf``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import StagedxError
from ..files import sha256_file

SUFFIX = ".gguf"
MAGIC = b"GGUF"


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file as export read it."""

    path: Path
    sha256: str
    architecture: str  # general.architecture, e.g. "llama"
    tensor_types: tuple[tuple[str, int], ...]  # (("Q4_1", 210), ("F32", 61), ...)

    def record(self) -> dict:
        """The manifest's ``source.gguf`` object."""
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "architecture": self.architecture,
            "tensor_types": dict(self.tensor_types),
        }


def is_gguf(name: str) -> bool:
    """Does ``name`` name a GGUF file (by suffix, or by magic bytes for an existing file)?"""
    path = Path(name).expanduser()
    if name.lower().endswith(SUFFIX):
        return True
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def read_source(path: Path):
    """(GGUFSource, gguf.GGUFReader) of ``path``; a clear error for anything but a GGUF file."""
    if not path.is_file():
        raise StagedxError(f"GGUF file not found: {path}")
    with open(path, "rb") as f:
        if f.read(4) != MAGIC:
            raise StagedxError(f"not a GGUF file: {path} (no GGUF magic)")
    try:
        import gguf
    except ImportError as exc:
        raise StagedxError("reading GGUF files needs the gguf package: pip install '.[export]'") from exc
    try:
        reader = gguf.GGUFReader(str(path))
        arch_field = reader.fields["general.architecture"]
        architecture = bytes(arch_field.parts[arch_field.data[0]]).decode()
    except Exception as exc:  # gguf raises ValueError, KeyError, struct errors, ...
        raise StagedxError(f"corrupt or unreadable GGUF file {path}: {' '.join(str(exc).split())[:200]}") from exc
    types = Counter(t.tensor_type.name for t in reader.tensors)
    source = GGUFSource(
        path=path,
        sha256=sha256_file(path),
        architecture=architecture,
        tensor_types=tuple(sorted(types.items(), key=lambda kv: (-kv[1], kv[0]))),
    )
    return source, reader


def _quiet_transformers():
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _config(path: Path):
    """transformers' config of the GGUF file, without the GGUF quantization record
    (``save_pretrained`` refuses a model that carries it; the weights are dequantized)."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    d = {k: v for k, v in cfg.to_dict().items() if k != "quantization_config"}
    return type(cfg).from_dict(d)


def _state_dict(path: Path, config) -> dict:
    """name -> fp32 tensor (transformers' names, llama.cpp's permutations undone)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    module = sys.modules[load_gguf_checkpoint.__module__]
    bar = getattr(module, "tqdm", None)
    if bar is not None:  # its progress bar over the tensors would interleave with export's log
        module.tqdm = functools.partial(bar, disable=True)
    try:
        parsed = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=skeleton)
    finally:
        if bar is not None:
            module.tqdm = bar
    tensors = {k: v.to(torch.float32).contiguous() for k, v in parsed["tensors"].items()}
    expected = {k for k, _ in skeleton.named_parameters()}
    if getattr(config, "tie_word_embeddings", False):
        expected = {k for k in expected if not k.endswith("lm_head.weight")}
    missing = sorted(expected - set(tensors))
    if missing:
        raise StagedxError(
            f"GGUF file {path.name}: {len(missing)} weights could not be mapped to a "
            f"{config.model_type} checkpoint (first: {missing[0]})"
        )
    return {k: v for k, v in tensors.items() if k in expected}


def materialize(path: Path, folder: Path) -> GGUFSource:
    """Write the Hugging Face checkpoint of GGUF file ``path`` into ``folder``: config.json,
    model.safetensors (fp32), tokenizer.json + tokenizer_config.json (+ chat template),
    generation_config.json, and ``gguf_source.json`` (what the file was)."""
    source, reader = read_source(path)
    add_bos = _bool_field(reader, "tokenizer.ggml.add_bos_token")
    del reader
    _quiet_transformers()
    try:
        from safetensors.torch import save_file
        from transformers import AutoTokenizer, GenerationConfig

        config = _config(path)
        from .arch import REGISTRY, supported

        if config.model_type not in REGISTRY:
            raise StagedxError(
                f"unsupported architecture {config.model_type!r} in GGUF file {path.name} "
                f"(supported model types: {supported()})"
            )
        tensors = _state_dict(path, config)
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except StagedxError:
        raise
    except Exception as exc:  # transformers / gguf raise many types for files they cannot map
        msg = " ".join(str(exc).split())[:300]
        raise StagedxError(f"cannot read GGUF file {path.name} ({source.architecture}): {msg}") from exc
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    GenerationConfig.from_model_config(config).save_pretrained(folder)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    tokenizer.save_pretrained(folder)
    if add_bos is not None:  # the file's own word on a leading <bos> (Gemma: true), whatever transformers kept
        tok_config = folder / "tokenizer_config.json"
        d = json.loads(tok_config.read_text()) if tok_config.is_file() else {}
        tok_config.write_text(json.dumps({**d, "add_bos_token": add_bos}, indent=2))
    (folder / "gguf_source.json").write_text(json.dumps(source.record(), indent=1))
    return source


def _bool_field(reader, key: str) -> bool | None:
    """A boolean metadata field of the GGUF file, or None when it is absent."""
    f = reader.fields.get(key)
    if f is None or not f.data:
        return None
    return bool(f.parts[f.data[0]][0])


def gguf_record(folder: Path) -> dict | None:
    """The ``gguf_source.json`` of a checkpoint folder made by :func:`materialize`, or None."""
    p = Path(folder) / "gguf_source.json"
    return json.loads(p.read_text()) if p.is_file() else None


@contextlib.contextmanager
def opened(name: str, log=None):
    """Yield a checkpoint folder for ``name``: the folder itself, or for a GGUF file a
    temporary checkpoint folder materialized from it (removed on exit)."""
    if not is_gguf(name):
        yield name
        return
    path = Path(name).expanduser()
    with tempfile.TemporaryDirectory(prefix="stagedx-gguf-") as tmp:
        folder = Path(tmp) / path.stem
        source = materialize(path, folder)
        if log is not None:
            types = ", ".join(f"{k} x{v}" for k, v in source.tensor_types)
            log(f"read {path.name} ({source.architecture}; tensors {types})")
        yield str(folder)
