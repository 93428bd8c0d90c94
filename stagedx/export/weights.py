"""Checkpoint tensors read one at a time, and placed into a module in the export dtype.

:class:`Weights` maps a tensor name (without the ``model.`` / ``transformer.`` prefix) to a
CPU tensor read on demand from the checkpoint's safetensors file(s) with plain file reads: no
memory map stays open, so what has been read and dropped leaves the resident set. Building a
graph this way holds each weight once, in the export dtype (never an fp32 copy of a
checkpoint exported in fp16). ``pytorch_model.bin`` checkpoints are loaded whole (mmap'd).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch
from torch import nn

from ..errors import StagedxError

# Gemma 3's multimodal checkpoints hold the text model under language_model.model. (as saved)
# or model.language_model. (as loaded): both read as the text-only model's names.
PREFIXES = ("language_model.model.", "model.language_model.", "model.", "transformer.")
_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def short_name(name: str) -> str:
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _safetensors_header(path: Path) -> tuple[dict, int]:
    """(tensor name -> {dtype, shape, data_offsets}, offset of the data) of a safetensors file;
    ValueError when the file is too short for what its header announces."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise ValueError(f"{path.name}: header of {n} bytes in a file of {size}")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    end = max((int(e["data_offsets"][1]) for e in header.values()), default=0)
    if 8 + n + end > size:
        raise ValueError(f"{path.name} is truncated ({size} bytes, header announces {8 + n + end})")
    return header, 8 + n


class Weights:
    """name -> tensor, read lazily from a checkpoint folder (safetensors, single or sharded)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._index: dict[str, tuple[Path, dict, int]] = {}  # short name -> (file, entry, base)
        self._loaded: dict[str, torch.Tensor] | None = None
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (self.folder / "model.safetensors").is_file():
            files = ["model.safetensors"]
        else:
            files = []
        try:
            for name in files:
                header, base = _safetensors_header(self.folder / name)
                for key, entry in header.items():
                    self._index[short_name(key)] = (self.folder / name, entry, base)
        except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
            raise StagedxError(f"corrupt or unreadable weights in {self.folder}: {exc}") from exc
        if not files:
            self._loaded = self._load_bin()

    def _load_bin(self) -> dict:
        files = sorted(self.folder.glob("pytorch_model*.bin"))
        out = {}
        for f in files:
            try:
                sd = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
            except Exception as exc:  # torch.load raises many types
                raise StagedxError(f"corrupt or unreadable weights in {f}: {exc}") from exc
            out.update({short_name(k): v for k, v in sd.items()})
        return out

    def __contains__(self, name: str) -> bool:
        return name in (self._loaded if self._loaded is not None else self._index)

    def __getitem__(self, name: str) -> torch.Tensor:
        if self._loaded is not None:
            if name not in self._loaded:
                raise StagedxError(f"corrupt weights in {self.folder}: tensor {name!r} missing")
            return self._loaded[name]
        if name not in self._index:
            raise StagedxError(f"corrupt weights in {self.folder}: tensor {name!r} missing")
        path, entry, base = self._index[name]
        dtype = _DTYPES.get(entry["dtype"])
        start, end = entry["data_offsets"]
        if dtype is None:
            raise StagedxError(f"unsupported tensor dtype {entry['dtype']} of {name!r} in {path}")
        buf = bytearray(end - start)
        with open(path, "rb") as f:
            f.seek(base + start)
            if f.readinto(buf) != len(buf):
                raise StagedxError(f"corrupt weights in {path}: tensor {name!r} is truncated")
        if not buf:
            return torch.empty(entry["shape"], dtype=dtype)
        return torch.frombuffer(buf, dtype=dtype).reshape(entry["shape"])


def put(module: nn.Module, name: str, tensor: torch.Tensor, dtype: torch.dtype) -> None:
    """Make ``module.<name>`` (a parameter, possibly on the meta device) hold ``tensor`` in
    ``dtype``; checks the shape."""
    old = getattr(module, name)
    if tuple(old.shape) != tuple(tensor.shape):
        raise StagedxError(
            f"mis-shaped weight for {name}: checkpoint {tuple(tensor.shape)}, config says {tuple(old.shape)}"
        )
    setattr(module, name, nn.Parameter(tensor.to(dtype).contiguous(), requires_grad=False))
